"""Degenerate data is named, not counted (issue 24, item 5): facts without a consistency score (every KN set empty,
one answered paraphrase), null baselines that repeat the real scores by construction, skipped editing trials and
duplicate facts are reported as such in the tables and findings, never counted as evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from summary_helpers import summary_json

from knowloc.cli import main
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, trial_key
from knowloc.study.experiments import BUILTIN, cas, consistency, modification, update_sweep
from knowloc.study.findings import findings, markdown
from knowloc.study.runner import run_study
from knowloc.study.store import Store

MODEL, METHOD = "toy-model", "ig"
TEMPLATES = ("[X] is in [Y].", "[X] lies in [Y].", "[X] sits in [Y].")
SAME, OTHER = [(0, 1), (1, 2)], [(2, 3)]  # KN sets


def _context(tmp_path: Path, facts: dict[str, tuple[str, list[list]]], trials: dict | None = None,
             **settings) -> StudyContext:
    """A study context over a real store: each fact {id: (relation, [KN set of each answered query])}, known in
    as many paraphrases as it has sets (the default split: static tau 0.3 on CS2, specificity filter off)."""
    config = StudyConfig(models=[MODEL], methods=[METHOD], specificity="off", seed=0, n_boot=50, progress=False,
                         out=str(tmp_path / "study"), **settings)
    store = Store(tmp_path / "study" / "results.sqlite")
    store.save_probe(MODEL, [
        {"fact_id": fid, "relation": relation, "subject": f"S{k}", "object": f"O{k}",
         "queries": [{"template": t, "text": t.replace("[X]", f"S{k}").split(" [Y]")[0], "top1": q < len(sets),
                      "prob": 0.9, "gold_token": 1, "predictions": []} for q, t in enumerate(TEMPLATES)]}
        for k, (fid, (relation, sets)) in enumerate(facts.items())])
    for fid, (_, sets) in facts.items():
        for q, kn in enumerate(sets):
            store.save_attribution(MODEL, METHOD, fid, q, 0.9, kn, torch.zeros(4, 4))  # cpu: stored scores
    for experiment, by_fact in (trials or {}).items():
        for fid, rows in by_fact.items():
            store.save_trials(experiment, trial_key(MODEL, METHOD, fid), rows)
    ctx = StudyContext(config=config, store=store, out=tmp_path / "study", echo=lambda _: None)
    ctx.load_facts(MODEL)
    return ctx


def _summarize(tmp_path, experiment, facts, trials=None, **settings) -> dict:
    ctx = _context(tmp_path, facts, trials, **settings)
    try:
        section = experiment.summarize(ctx)
        return summary_json(section)
    finally:
        ctx.store.close()


def _finding(summary: dict, finding_id: str) -> dict:
    return next(f for f in findings(summary, BUILTIN) if f["id"] == finding_id)


# ------------------------------------------------------------------------------------- empty KN sets


def test_a_fact_whose_kn_sets_are_all_empty_has_no_score_and_is_counted_apart(tmp_path):
    """CS of empty sets is 0 by definition, which would make the fact K_I: it is left out of the split and the
    rows, counted in n_empty_kn, and the note and the finding say so."""
    facts = {f"c{k}": ("R1", [SAME, SAME]) for k in range(3)}
    facts |= {"i0": ("R1", [SAME, OTHER]), "e0": ("R1", [[], []]), "e1": ("R1", [[], [], []])}
    facts |= {"half": ("R1", [SAME, []])}  # one empty set is a disagreement, not an absence: scored (CS 0)
    ctx = _context(tmp_path, facts)
    assert ctx.neurons.unscored(MODEL, METHOD) == {"e0": "empty_kn", "e1": "empty_kn"}
    groups = ctx.neurons.groups(MODEL, METHOD)
    assert set(groups) == {"c0", "c1", "c2", "i0", "half"} and groups["half"] == "K_I"
    summary = summary_json(consistency.summarize(ctx))
    ctx.store.close()
    static = next(r for r in summary["consistency"] if r["threshold_kind"] == "static")
    assert static["n_facts"] == 5 and static["n_empty_kn"] == 2 and static["k_i_fraction"] == pytest.approx(0.4)
    assert "left out (no consistency score): 2 facts with every KN set empty" in static["note"]
    assert summary["consistency_unscored"] == [{"model": MODEL, "method": METHOD, "specificity": "off",
                                                "n_studied": 7, "n_scored": 5, "n_empty_kn": 2, "n_one_query": 0}]
    notes = consistency.EXPERIMENT.notes(summary)
    assert any(n.startswith("Not counted (toy-model, ig): 2 of 7 studied facts have no CS") for n in notes)
    share = _finding(summary, "k-i-share")
    assert "of 5 facts are K_I" in share["text"] and "2 facts with every KN set empty" in share["text"]


def test_threshold_1_leaves_no_fact_to_count_and_the_findings_say_why(tmp_path, tiny_facts, capsys):
    """`--threshold 1` empties every KN set: no consistency row, no K_C / K_I group, and each finding says why it
    cannot decide instead of "1.00 of n facts are K_I" or "not run"."""
    out = tmp_path / "t1"
    argv = ["study", "--model", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "2",
            "--candidates", "--threshold", "1", "--experiments", "consistency,modification", "--facts", "3",
            "--specificity", "off", "--n-boot", "20", "--locality", "2", "--no-progress", "--out", str(out)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["consistency"] == [] and summary["consistency_relations"] == []
    assert summary["consistency_unscored"] == [{"model": "tiny-llama", "method": "ig", "specificity": "off",
                                                "n_studied": 3, "n_scored": 0, "n_empty_kn": 3, "n_one_query": 0}]
    items = {f["id"]: f for f in summary["findings"]}
    for fid in ("paraphrases-share-kns", "k-i-share"):
        assert items[fid]["verdict"] == "cannot decide"
        assert items[fid]["reason"].startswith("every studied fact's KN sets are empty")
    assert "are K_I" not in items["k-i-share"]["text"]
    assert items["kc-ki-generalization"]["verdict"] == "cannot decide"  # no group to compare, never "not run"
    assert items["kc-ki-generalization"]["reason"] == ("no studied fact has a consistency score, so none has a "
                                                       "K_C / K_I group")
    assert summary["modification_counts"][0]["n_facts"] == 0
    md = (out / "summary.md").read_text()
    assert "Verdict: **cannot decide** (every studied fact's KN sets are empty" in md
    assert "Not counted (tiny-llama, ig): every studied fact's KN sets are empty" in md


# ------------------------------------------------------------------------------------- one template


def test_facts_with_one_answered_paraphrase_have_no_cs_and_the_finding_says_so(tmp_path):
    summary = _summarize(tmp_path, consistency.EXPERIMENT, {f"f{k}": ("R1", [SAME]) for k in range(4)}, min_known=1)
    assert summary["consistency"] == []
    assert summary["consistency_unscored"][0] == {"model": MODEL, "method": METHOD, "specificity": "off",
                                                  "n_studied": 4, "n_scored": 0, "n_empty_kn": 0,
                                                  "n_one_query": 4}
    item = _finding(summary, "k-i-share")
    assert item["verdict"] == "cannot decide"
    assert item["reason"] == "every studied fact has fewer than 2 answered paraphrases: no CS to compute"
    assert "Verdict: **cannot decide** (every studied fact has fewer than 2" in "\n".join(markdown([item]))


def test_a_one_template_relation_is_a_reason_not_not_run(tmp_path, capsys):
    """A relation with one template: `--min-known 1` studies its facts with one query each, the default studies
    none; either way consistency ran and cannot decide, with the reason."""
    facts = tmp_path / "one.jsonl"
    facts.write_text("".join(json.dumps({"id": f"f{k}", "relation": "P1", "subject": s, "object": o,
                                         "templates": ["The capital of [X] is [Y]."]}) + "\n"
                             for k, (s, o) in enumerate([("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")])))
    base = ["study", "--model", "tiny-llama", "--data", str(facts), "--methods", "ig", "--steps", "2", "--candidates",
            "--experiments", "consistency", "--specificity", "off", "--n-boot", "20", "--no-progress"]
    for min_known, reason in (("1", "every studied fact has fewer than 2 answered paraphrases"),
                              ("2", "no fact was studied: none is answered in >= 2 paraphrases")):
        out = tmp_path / f"min{min_known}"
        code = main([*base, "--min-known", min_known, "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads((out / "summary.json").read_text())
        share = next(f for f in summary["findings"] if f["id"] == "k-i-share")
        assert share["verdict"] == "cannot decide" and share["reason"].startswith(reason), share
        line = next(x for x in (out / "summary.md").read_text().splitlines() if "What share of facts" in x)
        assert "Verdict: **cannot decide** (" + reason in line and "not run" not in line


# ------------------------------------------------------------------------------------- null by construction


def test_a_null_from_a_single_other_fact_is_a_reason_not_a_zero_gap(tmp_path):
    """Two facts per relation: each pseudo-fact is the other fact's own KN sets, so the null repeats the real
    scores and the gap is 0 by construction: no gap, no test, a note; the finding cannot decide with that reason."""
    facts = {"a": ("R1", [SAME, SAME, SAME]), "b": ("R1", [SAME, OTHER, OTHER]),
             "c": ("R2", [OTHER, OTHER]), "d": ("R2", [SAME, OTHER])}
    summary = _summarize(tmp_path, consistency.EXPERIMENT, facts)
    for r in summary["consistency"]:
        assert r["null_gap"] is None and r["null_p"] is None and r["null_mean"] is None and r["n_null"] == 4
        assert "no null baseline: every pseudo-fact's queries come from one other studied fact" in r["note"]
    item = _finding(summary, "paraphrases-share-kns")
    assert item["verdict"] == "cannot decide" and item["reason"].startswith("no null baseline: every pseudo-fact")
    assert "gap" not in item["text"].split("(")[0]  # no number shown as the gap


def test_a_null_drawn_from_several_facts_keeps_its_gap(tmp_path):
    facts = {f"f{k}": ("R1", [SAME, SAME if k % 2 else OTHER, SAME]) for k in range(6)}
    summary = _summarize(tmp_path, consistency.EXPERIMENT, facts)
    static = next(r for r in summary["consistency"] if r["threshold_kind"] == "static")
    assert static["null_gap"] is not None and "no null baseline" not in static["note"]


# ------------------------------------------------------------------------------------- skipped trials


def _trial(q, operation, neurons, n_neurons=2, skipped=False, **extra):
    row = {"qidx": q, "edited": q, "operation": operation, "neurons": neurons, "n_neurons": n_neurons,
           "skipped": skipped, **extra}
    if not skipped:
        row |= {"rel": 1.0, "gen": 0.5, "loc": 1.0, "avg": 0.83, "dppl": 0.0, "dlogppl": 0.0, "dprob_self": -0.1,
                "dprob_neighbors": 0.0}
    return row


def _modification_rows(no_target: bool) -> list[dict]:
    return [_trial(q, op, s, skipped=op == "update" and no_target) for q in (0, 1)
            for op in ("erase", "update") for s in ("N_i", "N_g", "N_cap")]


def test_updates_without_a_new_object_are_counted_and_noted(tmp_path):
    facts = {f"f{k}": ("R1", [SAME, SAME]) for k in range(4)}
    trials = {"modification": {f"f{k}": _modification_rows(no_target=k < 3) for k in range(4)}}
    summary = _summarize(tmp_path, modification.EXPERIMENT, facts, trials)
    update = next(r for r in summary["modification"]
                  if (r["operation"], r["neurons"], r["group"]) == ("update", "N_i", "K_C"))
    assert update["n"] == 1 and update["n_skipped"] == 6 and update["n_no_target"] == 6
    assert update["n_no_target_facts"] == 3
    notes = modification.EXPERIMENT.notes(summary)
    assert any(n.startswith("Updates skipped for 3 of 4 facts (toy-model, ig): their relation has no other object "
                            "to update to") for n in notes), notes


def test_update_sweep_and_cas_say_which_trials_were_skipped(tmp_path):
    facts = {f"f{k}": ("R1", [SAME, SAME]) for k in range(3)}
    sweep = {f"f{k}": [{"rule": "dai", "lambda1": 1.0, "lambda2": 1.0, "edited": 0, "n_neurons": 2 if k else 0,
                        "skipped": True}] for k in range(2)}
    sweep["f2"] = [{"rule": "dai", "lambda1": 1.0, "lambda2": 1.0, "edited": 0, "n_neurons": 2, "skipped": False,
                    "rel": 1.0, "gen": 0.5, "loc": 1.0, "avg": 0.8, "dprob_self": 0.1, "dlogppl": 0.0}]
    summary = _summarize(tmp_path / "sweep", update_sweep.EXPERIMENT, facts, {"update-sweep": sweep},
                         update_sweep_rules=["dai"], update_sweep_lambda2=[1.0])
    total = next(r for r in summary["update_sweep"] if r["group"] == "all")
    assert total["n"] == 1 and total["n_skipped_facts"] == 2 and total["n_no_target_facts"] == 1
    assert update_sweep.EXPERIMENT.notes(summary) == [
        "No update made for 2 of 3 facts (toy-model, ig; 1 fact: their relation has no other object to update to "
        "(one whose first token differs from the gold object's); 1 fact: every edited query's N_i is empty): n "
        "counts only the other facts."]
    cas_rows = [_trial(0, op, None, selection=sel, protocol=p, budget=b, held_out=None,
                       skipped=op == "update") for op in ("erase", "update") for sel in ("CAS", "N_i", "N_g")
                for p in ("transductive", "held_out") for b in ("free", "matched") if not (b == "matched" and sel == "CAS")]
    summary = _summarize(tmp_path / "cas", cas.EXPERIMENT, facts, {"cas": {f: cas_rows for f in facts}})
    notes = cas.EXPERIMENT.notes(summary)
    assert notes == ["30 trials skipped (toy-model, ig): 30 updates of facts whose relation has no other object to "
                     "update to; each row's n counts only facts with a measured trial."]


# ------------------------------------------------------------------------------------- duplicate facts


def test_a_duplicate_fact_is_studied_once(tmp_path, study_args, tiny_facts):
    """The same fact under a second id is merged into the first: the study's facts and every n count it once."""
    rows = [json.loads(line) for line in tiny_facts.read_text().splitlines()]
    data = tmp_path / "dup.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**r, "id": r["id"] + "-again"} for r in rows]))
    args = dict(experiments=["consistency"], specificity="off")
    plain = json.loads(run_study(StudyConfig(**study_args(tmp_path / "plain", **args)), echo=lambda _: None)
                       .read_text())
    dup = json.loads(run_study(StudyConfig(**{**study_args(tmp_path / "dup", **args), "data": str(data)}),
                               echo=lambda _: None).read_text())
    assert dup["facts"] == plain["facts"]
    assert [r["n_facts"] for r in dup["consistency"]] == [r["n_facts"] for r in plain["consistency"]]
    assert [f["text"] for f in dup["findings"]] == [f["text"] for f in plain["findings"]]
