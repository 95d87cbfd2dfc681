"""Experiment `mass-editing`: many edits, one after another and as one batch (docs/editing.md, "Many facts at
once").

Per model, the first ``--mass-edits`` studied facts in the study's seeded order that have a new object (drawn as
`update-sweep` and `editors` draw it), each edited on its first query. Each editor of ``--editors`` applies them

* ``sequential``: edit after edit, the model not restored between them (:meth:`Editor.sequential`), measured after
  1, 10, 100, ... and all of them;
* ``batch``: all at once, for the editors that write a batch at once (``memit``, ``alphaedit``), at the same
  numbers of edits;

and at each checkpoint **every edit so far** is measured on its own fact, as the editors experiment measures one
edit (:meth:`~knowloc.editing.evaluate.Baseline.score`): Rel (the new object beats the old on the edited query),
Gen (on its paraphrases), Loc (the fact's locality prompts keep their answers) and dlogPPL. ``kn`` and ``kn-ft``
edit the query's KN set of each attribution method; the other editors do not depend on the method and run once.
The work runs in the driver once per model after the facts' units (it edits one model many times) and is stored
per (model, method, editor, mode), so a resumed study does not redo it.

Summary ``mass_editing``: rows per model x method x editor x mode x number of edits x group (K_C, K_I, all) of
the mean Rel, Gen, Loc over the edited facts with 95% bootstrap intervals, the median dlogPPL and n; a figure per
model x method: Rel and Loc against the number of edits, one line per editor and mode.
"""

from __future__ import annotations

import numpy as np

from knowloc.analysis import GROUPS, K_C, K_I, Estimate
from knowloc.editing import AppliedEdit
from knowloc.editing.editors import shared_store
from knowloc.plots import layer_curves
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.editor_registry import make_editor
from knowloc.study.experiments.common import ALL, first_studied
from knowloc.study.findings import CONTRADICTS, SUPPORTS, UNDECIDED, interval, num, verdict
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table

NAME = "mass-editing"
BATCH_EDITORS = ("memit", "alphaedit")  # the editors that write a batch at once
NEURON_EDITORS = ("kn", "kn-ft")  # edit the query's KN set: once per attribution method
METRICS = ("rel", "gen", "loc")
FLOOR = 0.8  # edits-at-scale: Rel and Loc kept at or above this after every edit


def _key(model: str, method: str, editor: str, mode: str) -> str:
    return f"{model}|{method}|{editor}|{mode}"


def finalize(ctx: StudyContext, model: str) -> None:
    """Once per model, after every fact: each editor's sequence (and batch) of edits, measured at the
    checkpoints, unless stored."""
    cfg = ctx.config
    done = ctx.store.done_trials(NAME)
    lm = ctx.model(model)
    facts = {f.fact_id: f for f in ctx.facts.get(model, [])}
    sessions = {}
    for fid in first_studied(ctx, model, len(facts)):
        session = ctx.edit_session(model, facts[fid])  # baselines of the unedited model, before any edit
        if session.target is not None:
            sessions[fid] = session
        if len(sessions) == cfg.mass_editing.edits:
            break
    if not sessions:
        return
    layer = cfg.layers("edit_layer").resolve(lm.n_layers)[0]
    for name in cfg.editors:
        editor = make_editor(name, cfg, shared_store())
        for method in cfg.methods if name in NEURON_EDITORS else cfg.methods[:1]:
            for mode in ("sequential", "batch") if name in BATCH_EDITORS else ("sequential",):
                key = _key(model, method, name, mode)
                if key in done:
                    continue
                ctx.echo(f"{model}: {NAME} {name} ({mode}, {method}) of {len(sessions)} facts")
                requests = []
                for fid, session in sessions.items():
                    neurons = ctx.neurons.kn_lists(model, method, fid).get(0, []) if editor.uses_neurons else ()
                    requests.append((fid, session, session.request(0, neurons, (layer,) if editor.uses_layer else ())))
                ctx.store.save_trials(NAME, key, _edits(lm, editor, mode, requests, cfg))


def _edits(lm, editor, mode: str, requests: list, cfg) -> list[dict]:
    """The rows of every fact edited so far at each checkpoint (module docstring)."""
    usable = [(fid, s, r) for fid, s, r in requests if not editor.uses_neurons or r.neurons]  # kn: a KN set
    checkpoints = cfg.mass_editing.checkpoints(len(usable))
    if not usable:
        return []
    rows: list[dict] = []

    def measured(k: int, applied: AppliedEdit) -> None:
        if k + 1 not in checkpoints:
            return
        for fid, session, request in usable[:k + 1]:
            base = session.baseline
            result = base.score(base.measure(applied.start), 0, "update", lm.first_target_token(request.gold),
                                lm.first_target_token(request.new_object), len(request.neurons), session.loc_gold)
            rows.append({"n_edits": k + 1, "fact_id": fid, **result.as_row()})
    if mode == "sequential":
        editor.sequential(lm, [r for _, _, r in usable], measured)
    else:
        for k in checkpoints:
            if k <= len(usable):
                with editor.apply(lm, [r for _, _, r in usable[:k]]) as applied:
                    measured(k - 1, applied)
    return rows


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    stored = ctx.store.trials(NAME)
    rows = []
    section = Section()
    for model in cfg.models:
        for method in cfg.methods:
            split = ctx.neurons.groups(model, method)
            curves: dict[str, dict] = {"Rel": {}, "Loc": {}}
            for name in cfg.editors:
                for mode in ("sequential", "batch"):
                    key = _key(model, method if name in NEURON_EDITORS else cfg.methods[0], name, mode)
                    if key not in stored:
                        continue
                    trials = stored[key]
                    for n_edits in sorted({t["n_edits"] for t in trials}):
                        at = [t for t in trials if t["n_edits"] == n_edits]
                        for group in (*GROUPS, ALL):
                            mine = [t for t in at if group == ALL or split.get(t["fact_id"]) == group]
                            rows.append(_row(model, method, name, mode, n_edits, group, mine, cfg))
                    every = [r for r in rows if (r["model"], r["method"], r["editor"], r["mode"], r["group"])
                             == (model, method, name, mode, ALL)]
                    for panel, metric in (("Rel", "rel"), ("Loc", "loc")):
                        curves[panel][f"{name} ({mode})"] = ([r[metric] for r in every],
                                                             [r[f"{metric}_ci_low"] for r in every],
                                                             [r[f"{metric}_ci_high"] for r in every],
                                                             [r["n_edits"] for r in every])
            if any(curves.values()):
                section.figures.append(layer_curves(
                    curves, ctx.figures_dir / f"mass_editing_{slug(model)}_{method}.png",
                    f"many edits: Rel and Loc of every edit so far — {model} ({method})", "rate (95% CI over facts)",
                    zero_line=False, xlabel="number of edits", log_x=True))
    section.summary = {"mass_editing": rows}
    return section


def _row(model, method, editor, mode, n_edits, group, trials: list[dict], cfg) -> dict:
    row = {"model": model, "method": method, "editor": editor, "mode": mode, "n_edits": n_edits, "group": group}
    for metric in METRICS:
        e = Estimate.bootstrap([t[metric] for t in trials if t[metric] == t[metric]], n_boot=cfg.n_boot,
                               seed=cfg.seed)
        row.update({"n": e.n, **e.fields(metric)})
    logppl = [t["dlogppl"] for t in trials if t["dlogppl"] == t["dlogppl"]]
    row["dlogppl_median"] = float(np.median(logppl)) if logppl else float("nan")
    return row


# --------------------------------------------------------------------------------------------------------
# findings


def _last(summary: dict, mode: str = "sequential") -> list[dict]:
    """Each (model, method, editor)'s rows of the largest number of edits."""
    rows = [r for r in summary.get("mass_editing", []) if r["mode"] == mode]
    top = {}
    for r in rows:
        k = (r["model"], r["method"], r["editor"])
        top[k] = max(top.get(k, 0), r["n_edits"])
    return [r for r in rows if r["n_edits"] == top[(r["model"], r["method"], r["editor"])]]


def judge_edits_at_scale(summary: dict) -> list[Part] | None:
    """Per model x method x editor, all facts after the last sequential edit: supports when the intervals of Rel
    and Loc both lie above FLOOR; contradicts when either lies below it."""
    parts = []
    for r in _last(summary):
        if r["group"] != ALL:
            continue
        rel, loc = Estimate.from_row(r, "rel", "rel_ci_low", "rel_ci_high"), Estimate.from_row(r, "loc", "loc_ci_low", "loc_ci_high")
        (v_rel, why_rel), (v_loc, why_loc) = (verdict(e, support_above=FLOOR, contradict_below=FLOOR)
                                               for e in (rel, loc))
        if CONTRADICTS in (v_rel, v_loc):
            judged = (CONTRADICTS, "")
        elif v_rel == v_loc == SUPPORTS:
            judged = (SUPPORTS, "")
        else:
            judged = (UNDECIDED, why_rel or why_loc)
        text = (f"{r['model']}, {r['method']}, {r['editor']}: after {r['n_edits']} sequential edits Rel "
                f"{num(rel.value)} {interval(rel)}, Loc {num(loc.value)} {interval(loc)} ({r['n']} facts).")
        parts.append(Part(text, judged, rel, f"{r['method']} {r['editor']}"))
    return parts or None


def judge_kc_ki_at_scale(summary: dict) -> list[Part] | None:
    """Per model x method, kn after the last sequential edit: Gen of K_C minus K_I (unpaired over facts)."""
    parts = []
    last = _last(summary)
    for r in last:
        if r["editor"] != "kn" or r["group"] != K_C:
            continue
        ki = next((x for x in last if (x["model"], x["method"], x["editor"], x["group"])
                   == (r["model"], r["method"], "kn", K_I)), None)
        if ki is None:
            continue
        kc_e, ki_e = (Estimate.from_row(x, "gen", "gen_ci_low", "gen_ci_high") for x in (r, ki))
        gap = Estimate(min(r["n"], ki["n"]), kc_e.value - ki_e.value, kc_e.low - ki_e.high, kc_e.high - ki_e.low)
        text = (f"{r['model']}, {r['method']}: after {r['n_edits']} sequential kn edits, Gen K_C {num(kc_e.value)} vs "
                f"K_I {num(ki_e.value)}: difference {num(gap.value)} {interval(gap)} (conservative interval).")
        parts.append(Part(text, verdict(gap, support_above=0.0, contradict_below=0.0), gap, r["method"]))
    return parts or None


FINDINGS = (
    Finding("edits-at-scale", "Which editors still hold after many sequential edits?",
            f"edits hold at scale: Rel and Loc stay at or above {FLOOR} after N sequential edits (ROME is known to "
            "collapse after some hundreds; AlphaEdit keeps them)",
            f"per editor, all edited facts after the last sequential edit: supports when the intervals of Rel and "
            f"Loc lie above {FLOOR}; contradicts when either lies below it", judge_edits_at_scale),
    Finding("k-c-k-i-at-scale", "Does the K_C - K_I generalization gap persist when edits accumulate?",
            "the gap persists (K_C facts generalize better under KN editing, also after many edits)",
            "kn after the last sequential edit: Gen K_C minus K_I (each group's interval combined conservatively) "
            "supports when its interval lies above 0; contradicts when below 0", judge_kc_ki_at_scale),
)


EXPERIMENT = Experiment(
    name=NAME, question="do the editors, and the K_C / K_I gap, hold up when edits accumulate?",
    heading="Many edits", summarize=summarize, finalize=finalize, summary_keys=("mass_editing",),
    intro="The first --mass-edits studied facts (seeded order), each edited on its first query to a new object of "
          "its relation by each editor: one after another without restoring the model (sequential), and all at once "
          "by the editors that write a batch (memit, alphaedit). After 1, 10, ... and all edits, every edit so far "
          "is measured on its own fact: Rel, Gen, Loc and dlogPPL, as the editors experiment measures one edit. "
          "docs/editing.md, 'Many facts at once'.",
    tables=(Table("mass_editing", title="Every edit so far, all facts", rows=lambda rows: [
        r for r in rows if r["group"] == ALL], columns=(
        Column("model", "model"), Column("method", "method"), Column("editor", "editor"), Column("mode", "mode"),
        Column("edits", "n_edits", "int"), Column("n", "n", "int"), Column("Rel [95% CI]", "rel", "ci", 2),
        Column("Gen [95% CI]", "gen", "ci", 2), Column("Loc [95% CI]", "loc", "ci", 2),
        Column("dlogPPL median", "dlogppl_median", "num", 3, signed=True))),),
    findings=FINDINGS)
