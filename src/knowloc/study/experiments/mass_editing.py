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
Gen (on its paraphrases), Loc (the fact's locality prompts keep their answers), dlogPPL, CounterFact's scores
(efficacy score and magnitude, paraphrase score and magnitude, neighborhood score on the locality prompts) and what
the model generates: the greedy continuation of ``--mass-generate`` tokens after the edited query, whether it names
the new object (generation hit) and its n-gram entropy (Meng et al.'s fluency; docs/editing.md).

``kn`` edits three selections of each attribution method (`cas`'s, free budget): the query's KN set N_i, CAS and the
union N_g, so that `cas-at-scale` compares them on the same facts; ``kn-ft`` edits N_i; the other editors do not
depend on the method and run once. The work runs in the driver once per model after the facts' units (it edits one
model many times) and is stored per (model, method, editor, mode, selection), so a resumed study does not redo it.

Summaries: ``mass_editing``: rows per model x method x editor x selection x mode x number of edits x group (K_C,
K_I, all) of each metric's mean over the edited facts with its 95% bootstrap interval, the median dlogPPL and n;
``mass_editing_cas``: per model x method x number of edits, kn's Avg of CAS minus N_i and minus N_g, paired over
facts. A figure per model x method: Rel and Loc against the number of edits, K_C beside K_I, one line per
editor (and selection) and mode.
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from knowloc.analysis import GROUPS, K_C, K_I, Estimate
from knowloc.editing import AppliedEdit
from knowloc.editing.editors import shared_store
from knowloc.editing.evaluate import generation_scores
from knowloc.plots import layer_curves
from knowloc.study.calibration import study_editor
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.experiments.common import ALL, first_studied, selections
from knowloc.study.findings import (CONTRADICTS, SUPPORTS, UNDECIDED, Decision, interval, judge_rows, num,
                                    verdict)
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table

NAME = "mass-editing"
BATCH_EDITORS = ("memit", "alphaedit")  # the editors that write a batch at once
NEURON_EDITORS = ("kn", "kn-ft")  # edit a KN selection: once per attribution method
SELECTIONS = {"kn": ("N_i", "CAS", "N_g"), "kn-ft": ("N_i",)}  # the selections each neuron editor edits
METRICS = ("rel", "gen", "loc", "avg", "efficacy_score", "efficacy_magnitude", "paraphrase_score",
           "paraphrase_magnitude", "neighborhood_score", "generation_hit", "generation_entropy")
FLOOR = 0.8  # edits-at-scale: Rel and Loc kept at or above this after every edit


def _key(model: str, method: str, editor: str, mode: str, selection: str) -> str:
    return f"{model}|{method}|{editor}|{mode}|{selection}"


def _label(editor: str, selection: str) -> str:
    """An editor's name in the figures and findings: ``kn``'s selections beside it (``kn CAS``)."""
    return f"{editor} {selection}" if editor == "kn" else editor


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
        editor = study_editor(ctx, name, model, shared_store())
        for method in cfg.methods if name in NEURON_EDITORS else cfg.methods[:1]:
            chosen = {fid: _neurons(ctx, model, method, fid) for fid in sessions} if editor.uses_neurons else {}
            # a neuron editor edits the facts where each of its selections is non-empty: its sequences edit the
            # same facts in the same order, so that they compare after the same edits
            facts = [fid for fid in sessions if not chosen or all(chosen[fid][sel] for sel in SELECTIONS[name])]
            for selection in SELECTIONS.get(name, ("",)):
                for mode in ("sequential", "batch") if name in BATCH_EDITORS else ("sequential",):
                    key = _key(model, method, name, mode, selection)
                    if key in done:
                        continue
                    ctx.echo(f"{model}: {NAME} {_label(name, selection)} ({mode}, {method}) of {len(facts)} facts")
                    requests = [(fid, sessions[fid], sessions[fid].request(
                        0, chosen[fid][selection] if chosen else (), (layer,) if editor.uses_layer else ()))
                        for fid in facts]
                    ctx.store.save_trials(NAME, key, _edits(lm, editor, mode, requests, cfg))


def _neurons(ctx: StudyContext, model: str, method: str, fact_id: str) -> dict[str, list]:
    """The fact's selections for editing its query 0 (N_i, CAS and N_g, as `cas` selects them, free budget;
    empty when query 0 has no attribution)."""
    queries, stack = ctx.neurons.score_stack(model, method, fact_id)
    if 0 not in queries:
        return {"N_i": [], "CAS": [], "N_g": []}
    keep = partial(ctx.neurons.remove_nonspecific, model, method, fact_id)
    return selections(ctx, stack, queries.index(0), list(range(len(queries))), keep)["free"]


def _edits(lm, editor, mode: str, requests: list, cfg) -> list[dict]:
    """The rows of every fact edited so far at each checkpoint (module docstring)."""
    checkpoints = cfg.mass_editing.checkpoints(len(requests))
    rows: list[dict] = []

    def measured(k: int, applied: AppliedEdit) -> None:
        if k + 1 not in checkpoints:
            return
        edited = requests[:k + 1]
        generated = generation_scores(lm, [r.prompt for _, _, r in edited], [r.new_object for _, _, r in edited],
                                      cfg.mass_editing.generate)
        for (fid, session, request), text in zip(edited, generated):
            base = session.baseline
            result = base.score(base.measure(applied.start), 0, "update", lm.first_target_token(request.gold),
                                lm.first_target_token(request.new_object), len(request.neurons), session.loc_gold)
            rows.append({"n_edits": k + 1, "fact_id": fid, **result.as_row(), **result.counterfact_row(), **text})
    if mode == "sequential":
        editor.sequential(lm, [r for _, _, r in requests], measured)
    else:
        for k in checkpoints:
            with editor.apply(lm, [r for _, _, r in requests[:k]]) as applied:
                measured(k - 1, applied)
    return rows


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    stored = ctx.store.trials(NAME)
    rows, cas_rows = [], []
    section = Section()
    for model in cfg.models:
        for method in cfg.methods:
            split = ctx.neurons.groups(model, method)
            curves: dict[str, dict] = {f"{m} — {g}": {} for m in ("Rel", "Loc") for g in GROUPS}
            for name in cfg.editors:
                for selection in SELECTIONS.get(name, ("",)):
                    for mode in ("sequential", "batch"):
                        key = _key(model, method if name in NEURON_EDITORS else cfg.methods[0], name, mode, selection)
                        if key not in stored:
                            continue
                        where = {"model": model, "method": method, "editor": name, "selection": selection,
                                 "mode": mode}
                        every = _rows(stored[key], where, split, cfg)
                        rows += every
                        for (panel, metric), group in itertools.product((("Rel", "rel"), ("Loc", "loc")), GROUPS):
                            mine = [r for r in every if r["group"] == group]
                            curves[f"{panel} — {group}"][f"{_label(name, selection)} ({mode})"] = (
                                [r[metric] for r in mine], [r[f"{metric}_ci_low"] for r in mine],
                                [r[f"{metric}_ci_high"] for r in mine], [r["n_edits"] for r in mine])
            cas_rows += _cas_contrasts(stored, model, method, cfg)
            if any(np.isfinite(np.asarray(mean, dtype=float)).any()
                   for series in curves.values() for mean, *_ in series.values()):  # a K_C or K_I point
                section.figures.append(layer_curves(
                    curves, ctx.figures_dir / f"mass_editing_{slug(model)}_{method}.png",
                    f"many edits: Rel and Loc of every edit so far, K_C beside K_I — {model} ({method})",
                    "rate (95% CI over facts)",
                    zero_line=False, xlabel="number of edits", log_x=True))
    section.summary = {"mass_editing": rows, "mass_editing_cas": cas_rows}
    return section


def _rows(trials: list[dict], where: dict, split: dict, cfg) -> list[dict]:
    """One stored sequence's summary rows: per number of edits x group (K_C, K_I, all), each metric's mean over
    the edited facts with a bootstrap interval, n and the median dlogPPL."""
    rows = []
    for n_edits in sorted({t["n_edits"] for t in trials}):
        at = [t for t in trials if t["n_edits"] == n_edits]
        for group in (*GROUPS, ALL):
            mine = [t for t in at if group == ALL or split.get(t["fact_id"]) == group]
            row = {**where, "n_edits": n_edits, "group": group, "n": len(mine)}
            for metric in METRICS:
                values = [t[metric] for t in mine if metric in t and t[metric] == t[metric]]
                row.update(Estimate.bootstrap(values, n_boot=cfg.n_boot, seed=cfg.seed).fields(metric))
            logppl = [t["dlogppl"] for t in mine if t["dlogppl"] == t["dlogppl"]]
            row["dlogppl_median"] = float(np.median(logppl)) if logppl else float("nan")
            rows.append(row)
    return rows


def _cas_contrasts(stored: dict, model: str, method: str, cfg) -> list[dict]:
    """kn's sequential Avg of CAS minus N_i and minus N_g at each number of edits, paired over the facts edited
    so far (each fact's row after that many edits)."""
    by_selection = {sel: stored.get(_key(model, method, "kn", "sequential", sel), []) for sel in SELECTIONS["kn"]}
    out = []
    for n_edits in sorted({t["n_edits"] for t in by_selection["CAS"]}):
        cas = {t["fact_id"]: t["avg"] for t in by_selection["CAS"] if t["n_edits"] == n_edits}
        for baseline in ("N_i", "N_g"):
            other = {t["fact_id"]: t["avg"] for t in by_selection[baseline] if t["n_edits"] == n_edits}
            both = [f for f in cas if f in other and cas[f] == cas[f] and other[f] == other[f]]
            if both:
                diff = Estimate.paired(np.array([cas[f] for f in both]), np.array([other[f] for f in both]),
                                       n_boot=cfg.n_boot, seed=cfg.seed)
                out.append({"model": model, "method": method, "n_edits": n_edits, "baseline": baseline,
                            **diff.contrast("avg_diff")})
    return out


# --------------------------------------------------------------------------------------------------------
# findings


def _last(summary: dict, mode: str = "sequential") -> list[dict]:
    """Each (model, method, editor)'s rows of the largest number of edits."""
    rows = [r for r in summary.get("mass_editing", []) if r["mode"] == mode]
    top = {}
    for r in rows:
        k = (r["model"], r["method"], r["editor"], r["selection"])
        top[k] = max(top.get(k, 0), r["n_edits"])
    return [r for r in rows if r["n_edits"] == top[(r["model"], r["method"], r["editor"], r["selection"])]]


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
        label = _label(r["editor"], r["selection"])
        text = (f"{r['model']}, {r['method']}, {label}: after {r['n_edits']} sequential edits Rel "
                f"{num(rel.value)} {interval(rel)}, Loc {num(loc.value)} {interval(loc)} ({r['n']} facts).")
        parts.append(Part(text, Decision(*judged, FLOOR, FLOOR), rel, f"{r['method']} {label}"))
    return parts or None


def judge_kc_ki_at_scale(summary: dict) -> list[Part] | None:
    """Per model x method, kn after the last sequential edit: Gen of K_C minus K_I (unpaired over facts)."""
    parts = []
    last = _last(summary)
    for r in last:
        if (r["editor"], r["selection"], r["group"]) != ("kn", "N_i", K_C):
            continue
        ki = next((x for x in last if (x["model"], x["method"], x["editor"], x["selection"], x["group"])
                   == (r["model"], r["method"], "kn", "N_i", K_I)), None)
        if ki is None:
            continue
        kc_e, ki_e = (Estimate.from_row(x, "gen", "gen_ci_low", "gen_ci_high") for x in (r, ki))
        gap = Estimate(min(r["n"], ki["n"]), kc_e.value - ki_e.value, kc_e.low - ki_e.high, kc_e.high - ki_e.low)
        text = (f"{r['model']}, {r['method']}: after {r['n_edits']} sequential kn edits, Gen K_C {num(kc_e.value)} vs "
                f"K_I {num(ki_e.value)}: difference {num(gap.value)} {interval(gap)} (conservative interval).")
        parts.append(Part(text, verdict(gap, support_above=0.0, contradict_below=0.0), gap, r["method"]))
    return parts or None


def judge_cas_at_scale(summary: dict) -> list[Part] | None:
    """Per model x method x baseline, kn after the last sequential edit: Avg of CAS minus the baseline (N_i, N_g),
    paired over the edited facts; the text gives the contrast after the first 10 edits beside it."""
    rows = summary.get("mass_editing_cas", [])
    last = {}
    for r in rows:
        k = (r["model"], r["method"], r["baseline"])
        last[k] = max(last.get(k, 0), r["n_edits"])

    def early(r: dict) -> str:
        first = [x for x in rows if (x["model"], x["method"], x["baseline"]) == (r["model"], r["method"], r["baseline"])
                 and 1 < x["n_edits"] < r["n_edits"]]
        if not first:
            return ""
        e = Estimate.from_row(first[0], "avg_diff")
        return f" (after {first[0]['n_edits']} edits: {num(e.value, 3)} {interval(e, 3)})"
    parts = judge_rows([r for r in rows if r["n_edits"] == last[(r["model"], r["method"], r["baseline"])]], {},
                       lambda r, diff: (f"{r['model']}, {r['method']}: after {r['n_edits']} sequential kn edits, Avg "
                                        f"of CAS minus {r['baseline']} is {num(diff.value, 3)} {interval(diff, 3)} "
                                        f"(n {diff.n}){early(r)}."),
                       key="avg_diff", label=lambda r: f"{r['method']} vs {r['baseline']}", support_above=0.0,
                       contradict_below=0.0)
    return parts or None


FINDINGS = (
    Finding("edits-at-scale", "Which editors still hold after many sequential edits?",
            f"edits hold at scale: Rel and Loc stay at or above {FLOOR} after N sequential edits (ROME is known to "
            "collapse after some hundreds; AlphaEdit keeps them)",
            f"per editor, all edited facts after the last sequential edit: supports when the intervals of Rel and "
            f"Loc lie above {FLOOR}; contradicts when either lies below it", judge_edits_at_scale),
    Finding("cas-at-scale", "Does CAS keep its edge over N_i and N_g when edits accumulate?",
            "CAS keeps its edge: after N sequential KN updates, CAS's Avg stays above N_i's and N_g's",
            "kn after the last sequential edit: Avg (of Rel, Gen, Loc) of CAS minus each baseline, paired over the "
            "edited facts: supports when the interval lies above 0; contradicts when it lies below 0",
            judge_cas_at_scale),
    Finding("k-c-k-i-at-scale", "Does the K_C - K_I generalization gap persist when edits accumulate?",
            "the gap persists (K_C facts generalize better under KN editing, also after many edits)",
            "kn (N_i) after the last sequential edit: Gen K_C minus K_I (each group's interval combined conservatively) "
            "supports when its interval lies above 0; contradicts when below 0", judge_kc_ki_at_scale),
)


EXPERIMENT = Experiment(
    name=NAME, question="do the editors, and the K_C / K_I gap, hold up when edits accumulate?",
    heading="Many edits", summarize=summarize, finalize=finalize, summary_keys=("mass_editing", "mass_editing_cas"),
    intro="The first --mass-edits studied facts (seeded order), each edited on its first query to a new object of "
          "its relation by each editor: one after another without restoring the model (sequential), and all at once "
          "by the editors that write a batch (memit, alphaedit); kn edits each of CAS, N_i and N_g. After 1, 10, ... "
          "and all edits, every edit so far is measured on its own fact: Rel, Gen, Loc and dlogPPL as the editors "
          "experiment measures one edit, CounterFact's scores, and whether the greedy continuation of the edited "
          "query names the new object, with its n-gram entropy. docs/editing.md, 'Many facts at once'.",
    tables=(Table("mass_editing", title="Every edit so far, all facts", rows=lambda rows: [
        r for r in rows if r["group"] == ALL], columns=(
        Column("model", "model"), Column("method", "method"), Column("editor", "editor"),
        Column("selection", "selection"), Column("mode", "mode"), Column("edits", "n_edits", "int"),
        Column("n", "n", "int"), Column("Rel [95% CI]", "rel", "ci", 2), Column("Gen [95% CI]", "gen", "ci", 2),
        Column("Loc [95% CI]", "loc", "ci", 2), Column("ES", "efficacy_score", "num", 2),
        Column("EM", "efficacy_magnitude", "num", 3, signed=True), Column("PS", "paraphrase_score", "num", 2),
        Column("NS", "neighborhood_score", "num", 2), Column("gen. hit", "generation_hit", "num", 2),
        Column("gen. entropy", "generation_entropy", "num", 2),
        Column("dlogPPL median", "dlogppl_median", "num", 3, signed=True))),
        Table("mass_editing_cas", title="kn: CAS minus N_i / N_g after many sequential edits (Avg, paired)", columns=(
            Column("model", "model"), Column("method", "method"), Column("edits", "n_edits", "int"),
            Column("baseline", "baseline"), Column("n", "n", "int"),
            Column("Avg(CAS) - Avg(baseline) [95% CI]", "avg_diff", "ci", 3, True, "ci_low", "ci_high"),
            Column("", "beyond_ci", "star")))),
    findings=FINDINGS)
