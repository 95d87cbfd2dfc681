"""Experiment `editors`: knowledge-neuron edits beside ROME and constrained fine-tuning, on the same facts.

Per studied fact, the same seeded edited queries q_i (``--sweep-queries`` of them) and the same new object o' as
`update-sweep`; each editor of ``--editors`` makes q_i answer o' (docs/editing.md, "Editors"):

* ``kn``: the study's update rule (``--update-rule``, ``--lambda1`` / ``--lambda2``) on q_i's filtered KN set N_i;
* ``kn-ft``: fine-tuning of N_i's value vectors (``--ft-steps``, ``--ft-lr``, L-infinity bound ``--ft-bound``);
* ``ft``: FT+L, the same fine-tuning of the whole MLP output projection of ``--edit-layer``;
* ``rome``: ROME's rank-one update of that projection (``--rome-steps``, ``--rome-lr``, ``--rome-prefixes``; its
  key statistics C over ``--rome-samples`` samples of the model's own text, computed once per model and layer
  before the facts' units and stored).

``--edit-layer`` lists the layers of ``ft`` and ``rome`` (a layer list, :mod:`knowloc.study.layers`: ``mid`` =
n_layers // 2, the default; several sweep);
``kn`` and ``kn-ft`` edit N_i's own layers (``layer`` empty in the tables). Every edit is measured as an update
trial of the modification experiment: Rel (P(o') > P(o) on q_i), Gen (on q_i's other neighbor queries), Loc,
Avg, dlogPPL and dprob_self; summaries per model x method x editor x layer x group (K_C, K_I, all) with bootstrap
CIs over facts, the K_C - K_I Gen gap per editor, and kn minus rome / ft paired over facts.
"""

from __future__ import annotations

from knowloc.analysis import GROUPS, Estimate
from knowloc.analysis.fact_stats import metric_stats, paired_contrast
from knowloc.editing.editors import shared_store
from knowloc.editing.trials import measure_edit
from knowloc.study.calibration import study_editor
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.editor_registry import EDITORS, make_editor
from knowloc.study.experiments.common import (ALL, SAMPLE_LENGTH, edited_queries, gap_columns, group_contrast,
                                              rate_figure, sample)
from knowloc.study.experiments.skips import NO_TARGET, facts, skip_counts
from knowloc.study.findings import CONTRADICTS, SUPPORTS, UNDECIDED, interval, judge_rows, num, verdict
from knowloc.study.groups import grouped_trials
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table, edit_columns

METRICS = ("rel", "gen", "loc", "avg", "dprob_self", "seconds")
KN_EDITORS = ("kn", "kn-ft")
BASELINES = ("rome", "ft")  # what kn is compared with


def layers_of(cfg: StudyConfig, n_layers: int) -> list[int]:
    """The layers of ``--edit-layer`` for a model of ``n_layers`` layers, in the order it names them (the order
    of a fact's stored rows; :meth:`knowloc.study.layers.LayerSpec.resolve`)."""
    return cfg.layers("edit_layer").resolve(n_layers)


def check_model(cfg: StudyConfig, lm) -> None:
    """--edit-layer within the model's layers (one line otherwise)."""
    layers_of(cfg, lm.n_layers)


def prepare(ctx: StudyContext, model: str) -> None:
    """Compute (or read) the key statistics C of every layer an editor reads (rome: the edit layers; memit and
    alphaedit: their range) once, stored for the facts' units (in the driver, before they run)."""
    cfg = ctx.config
    lm = ctx.model(model)
    layers = set(layers_of(cfg, lm.n_layers)) if "rome" in cfg.editors else set()
    for name in ("memit", "alphaedit"):
        if name in cfg.editors:
            layers |= set(make_editor(name, cfg).range_of(lm))
    if layers:
        ctx.echo(f"{model}: key statistics C of layer {', '.join(map(str, sorted(layers)))} "
                 f"({cfg.rome.samples} x {SAMPLE_LENGTH} tokens of the model's own text; stored once)")
        shared_store().ensure(lm, sorted(layers), sample(cfg))


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (editor, layer, edited query) edit of one fact."""
    cfg = ctx.config
    session = ctx.edit_session(model, fact)
    lm = session.lm
    kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
    layers = layers_of(cfg, lm.n_layers)
    covariance = shared_store()  # C read from disk once per process, not once per fact
    rows = []
    for q in edited_queries(ctx, model, method, fact.fact_id, list(kn)):
        neurons = tuple(kn[q])
        for name in cfg.editors:
            editor = study_editor(ctx, name, model, covariance)
            for layer in (layers if editor.uses_layer else [None]):
                row = {"editor": name, "layer": layer, "edited": q, "n_neurons": len(neurons) if name in KN_EDITORS
                       else 0, "operation": "update"}
                if session.target is None or (editor.uses_neurons and not neurons):
                    rows.append({**row, "skipped": True})
                    continue
                request = session.request(q, neurons, () if layer is None else (layer,))
                result, applied, seconds = measure_edit(session.baseline, editor, q, request, session.loc_gold)
                rows.append({**row, "skipped": False, **result.as_row(), "seconds": seconds,
                             "n_weights": applied.n_weights})
    return rows


def combos(cfg: StudyConfig, trials) -> list[tuple[str, int | None]]:
    """The (editor, layer) pairs the stored trials hold, in --editors order and then by layer."""
    seen = {(r["editor"], r["layer"]) for rows in trials for r in rows}
    order = {name: i for i, name in enumerate(cfg.editors)}
    return sorted(seen, key=lambda c: (order.get(c[0], len(order)), -1 if c[1] is None else c[1]))


def label(editor: str, layer: int | None) -> str:
    return editor if layer is None else f"{editor} L{layer}"


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows, gaps, contrasts = [], [], []
    by_mm: dict[tuple[str, str], dict[str, list]] = {}
    for model, method, group, fact_trials in grouped_trials(ctx, "editors", every=ALL):
        by_mm.setdefault((model, method), {})[group] = fact_trials
    for (model, method), groups in by_mm.items():
        every = groups.get(ALL, [])
        for editor, layer in combos(cfg, every):
            match = {"editor": editor, "layer": layer}
            for group in (*GROUPS, ALL):
                row = {"model": model, "method": method, "editor": editor, "layer": layer, "group": group,
                       "update_rule": cfg.update.rule if editor == "kn" else None}
                row.update(metric_stats(groups.get(group, []), METRICS, "rel", cfg.n_boot, cfg.seed, **match))
                row.update(skip_counts(groups.get(group, []), **match))
                rows.append(row)
            gaps.append(group_contrast({g: groups.get(g, []) for g in GROUPS}, "gen", cfg, model=model,
                                       method=method, editor=editor, layer=layer))
        kn_combo = {"editor": "kn", "layer": None}
        for editor, layer in combos(cfg, every):
            if editor not in BASELINES:
                continue
            for metric in ("avg", "loc"):
                e = paired_contrast(every, metric, kn_combo, {"editor": editor, "layer": layer}, cfg.n_boot, cfg.seed)
                contrasts.append({"model": model, "method": method, "baseline": label(editor, layer),
                                  "editor": editor, "layer": layer, "metric": metric, **e.contrast("diff")})
    section = Section(summary={"editors": rows, "editors_gap": gaps, "editors_contrasts": contrasts})
    for model in cfg.models:
        for method in cfg.methods:
            mine = [r for r in rows if (r["model"], r["method"]) == (model, method) and r["group"] in GROUPS and r["n"]]
            figure = rate_figure(mine, ("rel", "gen", "loc"), "editor", lambda r: label(r["editor"], r["layer"]),
                                 ctx.figures_dir / f"editors_{slug(model)}_{method}.png",
                                 f"editors: Rel / Gen / Loc, K_C beside K_I — {model}, {method}")
            if figure is not None:
                section.figures.append(figure)
    return section


# --------------------------------------------------------------------------------------------------------
# findings


def judge_kn_vs_editors(summary: dict) -> list[Part]:
    rows = [r for r in summary.get("editors_contrasts", []) if r["metric"] == "avg"]
    loc = {(r["model"], r["method"], r["baseline"]): r for r in summary.get("editors_contrasts", [])
           if r["metric"] == "loc"}

    def describe(r, e):
        lr = loc.get((r["model"], r["method"], r["baseline"]), {})
        return (f"{r['method']}: Avg of kn minus {r['baseline']} is {num(e.value)} {interval(e)}, Loc "
                f"{num(lr.get('diff'))} ({r['n']} facts, paired).")
    return judge_rows(rows, {}, describe, support_below=0.0, contradict_above=0.0,
                      label=lambda r: f"{r['method']} vs {r['baseline']}")


def judge_gap_source(summary: dict) -> list[Part] | None:
    """Per model x method x edit layer: the K_C - K_I Gen gap of kn beside those of rome and ft at that layer."""
    gaps = summary.get("editors_gap", [])
    parts: list[Part] = []
    keys = list(dict.fromkeys((g["model"], g["method"]) for g in gaps))
    for model, method in keys:
        mine = [g for g in gaps if (g["model"], g["method"]) == (model, method)]
        kn = next((g for g in mine if g["editor"] == "kn"), None)
        layers = sorted({g["layer"] for g in mine if g["editor"] in BASELINES})
        if kn is None or not layers:
            continue
        kn_e = _estimate(kn)
        for layer in layers:
            others = [g for g in mine if g["editor"] in BASELINES and g["layer"] == layer]
            parts.append(_gap_part(method, layer, kn_e, [(g["editor"], _estimate(g)) for g in others]))
    return parts


def _estimate(row: dict) -> Estimate:
    return Estimate.from_row(row, "diff", n=min(row["n_k_c"], row["n_k_i"]))


def _gap_part(method: str, layer: int, kn, others) -> Part:
    """The verdict of one layer, when the KN gap's interval lies above 0 (else there is no gap to explain): "the
    facts" (contradicts the claim that the gap belongs to KN editing) when every other editor's gap interval lies
    above 0 too; "the method" (supports) when every other editor's interval includes 0 and lies below the KN
    gap's estimate; else cannot decide, saying why."""
    text = (f"{method}, layer {layer}: K_C - K_I Gen gap kn {num(kn.value)} {interval(kn)}; "
            + "; ".join(f"{name} {num(e.value)} {interval(e)}" for name, e in others) + ".")
    lbl = f"{method} L{layer}"
    undecided = [(name, verdict(e, support_above=0.0)) for name, e in others]
    short = [name for name, (v, reason) in undecided if reason.startswith("fewer") or reason == "no interval"]
    if kn.withheld or not kn.has_interval or short:
        who = ", ".join(short) or "kn"
        return Part(text, (UNDECIDED, f"too few facts in a group for {who}"), kn, lbl)
    if not kn.above(0.0):
        return Part(text, (UNDECIDED, "the KN gap's interval is not above 0, so there is no gap to explain"), kn, lbl)
    if all(e.above(0.0) for _, e in others):
        return Part(text + " The facts: editors that do not use KNs show the gap too.", (CONTRADICTS, ""), kn, lbl)
    if all(e.low <= 0.0 <= e.high and e.high < kn.value for _, e in others):
        return Part(text + " The method: only the KN edit shows the gap.", (SUPPORTS, ""), kn, lbl)
    return Part(text, (UNDECIDED, "the other editors' gaps are neither all above 0 nor all around 0 and below the "
                       "KN gap"), kn, lbl)


FINDINGS = (
    Finding("kn-vs-editors", "How do KN edits compare with ROME and fine-tuning?",
            "KN edits fall short of ROME and fine-tuning (EasyEdit on LLaMA-2-7B: KN 28.95 vs ROME 92.45 "
            "reliability)",
            "Avg of kn minus rome / ft, paired over facts: supports when the interval lies below 0; contradicts "
            "when it lies above 0", judge_kn_vs_editors),
    Finding("ki-gap-source", "Is the K_I generalization gap a property of the facts or of KN editing?",
            "the gap belongs to KN editing (KN sets are query-specific for K_I facts), not to the facts",
            "K_C - K_I Gen per editor: supports (the method) when the KN gap lies above 0 and rome's and ft's "
            "intervals include 0 and lie below the KN gap; contradicts (the facts) when rome's and ft's intervals "
            "lie above 0; else cannot decide", judge_gap_source),
)


def _notes(summary: dict) -> list[str]:
    notes = []
    rows = [r for r in summary.get("editors", []) if r["group"] == ALL]
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["method"]) == (model, method)]
        for r in mine:
            if r.get("n_no_target_facts"):
                notes.append(f"{label(r['editor'], r['layer'])} ({model}, {method}): no edit for "
                             f"{facts(r['n_no_target_facts'])}: {NO_TARGET}.")
                break
        empty = max((r.get("n_skipped_facts", 0) - r.get("n_no_target_facts", 0) for r in mine
                     if r["editor"] in KN_EDITORS), default=0)
        if empty:
            notes.append(f"kn / kn-ft ({model}, {method}): every edited query's N_i is empty for {facts(empty)}; "
                         "their n counts only the other facts, and kn's paired contrasts only facts with both.")
    return notes


EXPERIMENT = Experiment(
    name="editors", question="how do KN edits compare with ROME and fine-tuning, K_C vs K_I?",
    heading="Editors", summarize=summarize, fact_work=fact_work, check_model=check_model, prepare=prepare,
    summary_keys=("editors", "editors_gap", "editors_contrasts"),
    intro="The same edited queries and new objects as the update frontier, edited by kn (the study's update rule "
          "on N_i), kn-ft (fine-tuning of N_i's value vectors, L-infinity bounded), ft (FT+L: the same fine-tuning "
          "of one layer's MLP output projection) and rome (ROME's rank-one update of it; Meng et al. 2022); "
          "docs/editing.md, 'Editors'. Rel: the new object beats the old on the edited query; Gen: on its "
          "paraphrases; Loc: unrelated answers kept. Means over facts with 95% CIs; seconds: time to compute and "
          "apply one edit.",
    tables=(
        Table("editors", columns=(
            Column("model", "model"), Column("method", "method"), Column("editor", "editor"),
            Column("layer", "layer"), Column("group", "group", "group"), Column("n", "n", "int"), *edit_columns(),
            Column("dprob self", "dprob_self", "num", 2, signed=True), Column("s / edit", "seconds", "num", 2))),
        Table("editors_gap", title="Is the K_I gap the facts' or KN editing's? Gen, K_C minus K_I, per editor",
              columns=(
                  Column("model", "model"), Column("method", "method"), Column("editor", "editor"),
                  Column("layer", "layer"), *gap_columns())),
        Table("editors_contrasts", title="kn minus rome / ft, paired over facts", columns=(
            Column("model", "model"), Column("method", "method"), Column("vs", "baseline"),
            Column("metric", "metric"), Column("n", "n", "int"),
            Column("kn - editor [95% CI]", "diff", "ci", 2, True), Column("", "beyond_ci", "star")))),
    notes=_notes, findings=FINDINGS)

__all__ = ["EDITORS", "EXPERIMENT", "layers_of", "make_editor"]
