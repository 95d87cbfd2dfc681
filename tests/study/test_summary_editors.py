"""The `editors` summary, its K_C - K_I gap per editor, kn minus rome / ft and the two findings, from small
hand-made stores (each expected number worked out by hand below)."""

from __future__ import annotations

import pytest
from summary_helpers import one, summarize

from knowloc.study.experiments import editors
from knowloc.study.findings import CONTRADICTS, SUPPORTS, UNDECIDED, findings
from knowloc.study.registry import experiments

SETTINGS = {"editors": ["kn", "ft", "rome"], "edit_layer": ["1"]}
CONTRACT = ("model", "method", "editor", "layer", "group", "n", "rel", "gen", "loc", "avg", "dlogppl_median",
            "dprob_self")


def trial(editor, layer, gen, rel=1.0, loc=1.0, dlogppl=0.0, q=0):
    return {"editor": editor, "layer": layer, "edited": q, "operation": "update", "n_neurons": 2, "skipped": False,
            "rel": rel, "gen": gen, "loc": loc, "avg": (rel + gen + loc) / 3, "dlogppl": dlogppl,
            "dprob_self": -0.5, "seconds": 1.0}


def store(kn_gen, other_gen, kn_loc=0.8):
    """5 K_C and 5 K_I facts; Gen per group (K_C, K_I) of kn and of both rome and ft at layer 1, facts of a
    group alternating +-0.05 around it (so intervals have width); kn's Loc `kn_loc`, the others' 1."""
    groups = {f"c{k}": "K_C" for k in range(5)} | {f"i{k}": "K_I" for k in range(5)}
    trials = {}
    for k, (fid, group) in enumerate(groups.items()):
        g = 0 if group == "K_C" else 1
        wobble = 0.05 if k % 2 else -0.05
        trials[fid] = [trial("kn", None, min(1.0, max(0.0, kn_gen[g] + wobble)), loc=kn_loc, dlogppl=0.01 * k),
                       trial("ft", 1, min(1.0, max(0.0, other_gen[g] + wobble))),
                       trial("rome", 1, min(1.0, max(0.0, other_gen[g] + wobble)))]
    return groups, {"editors": trials}


@pytest.fixture(scope="module")
def method_gap(tmp_path_factory):
    """kn: Gen 0.9 (K_C) vs 0.1 (K_I); rome and ft: 0.9 for both groups."""
    groups, trials = store((0.9, 0.1), (0.9, 0.9))
    return summarize(editors.summarize, tmp_path_factory.mktemp("editors"), groups, trials, **SETTINGS)


def test_one_row_per_editor_layer_and_group_with_the_contract_fields(method_gap):
    rows = method_gap["editors"]
    assert sorted((r["editor"], r["layer"] if r["layer"] is not None else -1, r["group"]) for r in rows) == sorted(
        (e, layer, g) for e, layer in (("kn", -1), ("ft", 1), ("rome", 1)) for g in ("K_C", "K_I", "all"))
    for r in rows:
        assert all(k in r for k in CONTRACT)
        assert all(f"{m}_ci_low" in r and f"{m}_ci_high" in r for m in ("rel", "gen", "loc", "avg"))
    kn_kc = one(rows, editor="kn", group="K_C")
    assert kn_kc["n"] == 5 and kn_kc["gen"] == pytest.approx(0.9 - 0.01) and kn_kc["loc"] == pytest.approx(0.8)
    assert kn_kc["dlogppl_median"] == pytest.approx(0.02)  # facts c0..c4: 0.00 .. 0.04
    assert one(rows, editor="kn", group="all")["n"] == 10
    assert one(rows, editor="kn", group="K_C")["update_rule"] == "calibrated"
    assert one(rows, editor="rome", group="K_I")["update_rule"] is None


def test_the_gap_per_editor_and_kn_minus_the_others(method_gap):
    gaps = {(g["editor"], g["layer"]): g for g in method_gap["editors_gap"]}
    # K_C facts c0..c4 wobble -,+,-,+,-: 0.89; K_I facts +,-,+,-,+: 0.11
    assert gaps[("kn", None)]["diff"] == pytest.approx(0.78) and gaps[("kn", None)]["ci_low"] > 0
    for name in ("rome", "ft"):
        assert gaps[(name, 1)]["diff"] == pytest.approx(-0.02)  # 0.89 - 0.91
        assert gaps[(name, 1)]["n_k_c"] == gaps[(name, 1)]["n_k_i"] == 5
    contrasts = method_gap["editors_contrasts"]
    loc = one(contrasts, baseline="rome L1", metric="loc")
    assert loc["diff"] == pytest.approx(-0.2) and loc["n"] == 10
    avg = one(contrasts, baseline="ft L1", metric="avg")
    # kn: Gen 0.5 over the ten facts, Loc 0.8; ft: Gen 0.9, Loc 1
    assert avg["diff"] == pytest.approx(((1 + 0.5 + 0.8) - (1 + 0.9 + 1)) / 3) and avg["ci_high"] < 0


def _finding(summary, fid):
    summary = {**summary, "config": {"specificity": 1.0}}
    return next(f for f in findings(summary, experiments()) if f["id"] == fid)


def test_the_method_when_only_kn_shows_the_gap(method_gap):
    f = _finding(method_gap, "ki-gap-source")
    assert f["verdict"] == SUPPORTS and "The method" in f["text"]
    assert _finding(method_gap, "kn-vs-editors")["verdict"] == SUPPORTS  # kn's Avg below rome's and ft's


def test_the_facts_when_every_editor_shows_the_gap(tmp_path):
    groups, trials = store((0.9, 0.1), (0.9, 0.2), kn_loc=1.0)
    summary = summarize(editors.summarize, tmp_path, groups, trials, **SETTINGS)
    f = _finding(summary, "ki-gap-source")
    assert f["verdict"] == CONTRADICTS and "The facts" in f["text"]


def test_cannot_decide_without_a_kn_gap(tmp_path):
    groups, trials = store((0.5, 0.5), (0.9, 0.2))
    summary = summarize(editors.summarize, tmp_path, groups, trials, **SETTINGS)
    f = _finding(summary, "ki-gap-source")
    assert f["verdict"] == UNDECIDED and "no gap to explain" in f["reason"]
