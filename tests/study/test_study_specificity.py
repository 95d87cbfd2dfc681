"""The neuron specificity profile, the filter it drives, and the update-sweep experiment (issue: editing evidence
that measures knowledge, not damage)."""

import json
from functools import partial
import math
import sqlite3
from pathlib import Path

import pytest

from knowloc.analysis import MIN_N
from knowloc.analysis import normalized_prompt
from knowloc.data import load_specificity_prompts, load_specificity_queries
from knowloc.errors import KnowlocError
from knowloc.study.config import DEFAULT_SPECIFICITY, StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.experiments.common import selections
from knowloc.study.runner import run_study
from knowloc.study.store import Store

SUBJECTS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt"]
TEMPLATES = ["The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The seat of government of [X] is [Y]."]

LEGACY = Path(__file__).parent / "data" / "legacy_tiny_summary.json"
ALL_PAPER = ["consistency", "modification", "query-mapping", "attention", "cas", "cas-sweep"]


def _context(out: Path, config: StudyConfig) -> StudyContext:
    ctx = StudyContext(config=config, store=Store(out / "results.sqlite", readonly=True), out=out,
                       echo=lambda _: None)
    ctx.refresh()
    return ctx


WITHHELD = ("ci_low", "ci_high", "welch_p", "null_p")  # withheld below MIN_N facts since the fixtures were written


def _same(old, new, path=""):
    """Every value of `old` is in `new` and equal (floats within 1e-5 relative or 1e-4 absolute, nan == null),
    except intervals, tests and stars that the minimum-n rule (analysis.stats.MIN_N) withholds for small groups.
    The float tolerance is fp32's across CPUs: on another processor's kernels the same code gives probabilities
    that differ by ~1e-7 relative and, through the tiny random model's large perplexities, dPPL by up to 1.4e-5
    (measured on an AMD EPYC against the fixture); every discrete value (KN sets, counts, verdicts) is exact."""
    if isinstance(old, dict):
        for key, value in old.items():
            assert key in new, f"{path}/{key} missing"
            if new[key] is None and key.endswith(WITHHELD):
                continue
            if key == "beyond_ci" and new[key] is False and new.get("n", MIN_N) < MIN_N:
                continue
            _same(value, new[key], f"{path}/{key}")
    elif isinstance(old, list):
        assert len(old) == len(new), f"{path}: {len(old)} vs {len(new)} rows"
        for i, (a, b) in enumerate(zip(old, new)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and math.isnan(old):
        assert new is None, f"{path}: nan vs {new!r}"  # summary.json is strict JSON: nan is written as null
    elif isinstance(old, float):
        assert math.isclose(old, new, rel_tol=1e-5, abs_tol=1e-4), f"{path}: {old} vs {new}"
    else:
        assert old == new, f"{path}: {old!r} vs {new!r}"


def test_specificity_off_reproduces_the_previous_release(tmp_path, study_args):
    """`--specificity off --update-rule dai` gives every summary value of knowloc before the filter existed
    (tests/study/data/legacy_tiny_summary.json: this study's summary.json written by commit 9e700d1), and computes
    no specificity profile: a filter that removes nothing needs no reference attributions (issue 24; the profile
    used to be computed and reported anyway), so the always-on specificity experiment says that none was made."""
    out = tmp_path / "off"
    args = study_args(out, experiments=ALL_PAPER, specificity="off", update_rule="dai")
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    legacy = json.loads(LEGACY.read_text())
    _same(legacy, summary)
    assert summary["config"]["specificity"] == 1.0
    assert {r["specificity"] for r in summary["consistency"]} == {"off"}
    assert summary["specificity"] == [] and summary["specificity_counts"] == []
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM reference").fetchone()[0] == 0
    assert "No specificity profile was computed: with --specificity off" in (out / "summary.md").read_text()


def _reference_study(out: Path, study_args, data: Path | None = None, **overrides) -> StudyContext:
    args = study_args(out, **{"experiments": ["consistency"], "specificity_prompts": 6, "specificity_queries": 2,
                              "specificity": 0.0, **overrides})
    if data is not None:
        args["data"] = str(data)
    config = StudyConfig(**args)
    run_study(config, echo=lambda _: None)
    return _context(out, config)


def _write_facts(path: Path, relations: dict[str, list[str]], extra: tuple = ()) -> Path:
    """A JSONL fact set: {relation: objects} over SUBJECTS and TEMPLATES, plus `extra` fact lines."""
    lines = [{"id": f"{relation}-{k}", "relation": relation, "subject": subject, "object": objects[k % len(objects)],
              "templates": TEMPLATES} for relation, objects in relations.items() for k, subject in enumerate(SUBJECTS)]
    lines += list(extra)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_reference_is_the_shipped_set_and_never_a_facts_own_queries(tmp_path, study_args):
    """The reference is the neutral prompts plus the first --specificity-queries of each shipped reference relation
    (the model's own next token as target), never a studied query; for a fact of relation R, the reference
    relations with R's id or with an answer type of R's objects do not count (issue 21)."""
    shipped = load_specificity_queries()
    colour = next(q for q in shipped if q["answer_type"] == "color")
    head, last = colour["prompt"].rsplit(" ", 1)  # a studied query equal to a shipped one: subject = its last word
    clash = {"id": "tints-clash", "relation": "tints", "subject": last, "object": "red",
             "templates": [f"{head} [X] [Y].", f"{head}, [X] [Y]."]}
    data = _write_facts(tmp_path / "facts.jsonl", {
        "P38": ["Paris", "Rome"],  # the id of a shipped relation (currency), other answers
        "tints": ["red", "blue"],  # a free label whose answers are colours
    }, extra=[clash])
    ctx = _reference_study(tmp_path / "a", study_args, data)
    rows = ctx.store.reference("tiny-llama", "ig")
    neutral = [r for r in rows if r["relation"] is None]
    queries = [r for r in rows if r["relation"] is not None]
    assert [r["prompt"] for r in neutral] == load_specificity_prompts()[:6]
    studied = {normalized_prompt(q.text) for probe in ctx.probes["tiny-llama"] for q in probe.queries}
    assert normalized_prompt(colour["prompt"]) in studied
    expected = []
    for q in shipped:
        if normalized_prompt(q["prompt"]) not in studied and \
                sum(e["relation"] == q["relation"] for e in expected) < 2:
            expected.append(q)
    assert [(r["prompt"], r["relation"]) for r in queries] == [(q["prompt"], q["relation"]) for q in expected]
    assert not {normalized_prompt(r["prompt"]) for r in rows} & studied  # never a studied query
    assert all(r["kn"] is not None for r in queries) and len({r["relation"] for r in queries}) >= 15
    types = {q["relation"]: q["answer_type"] for q in shipped}
    # by id, and by answer type: its objects are cities
    assert ctx.neurons.excluded_reference("tiny-llama", "P38") == {"P38"} | {r for r, t in types.items() if t == "city"}
    assert ctx.neurons.excluded_reference("tiny-llama", "tints") == {r for r, t in types.items() if t == "color"}
    shown = {r["relation"]: r for r in json.loads((tmp_path / "a" / "summary.json").read_text())
             ["specificity_exclusions"]}
    assert shown["tints"]["answer_types"] == ["color"] and shown["P38"]["answer_types"] == ["city"]
    assert shown["tints"]["not_counted"] == sorted(r for r, t in types.items() if t == "color")
    assert shown["tints"]["reference_queries_counted"] == sum(r["relation"] not in shown["tints"]["not_counted"]
                                                               for r in queries)
    for relation in ("P38", "tints"):
        own = ctx.neurons.excluded_reference("tiny-llama", relation)
        # F = 0: exactly the KNs of the neutral prompts and of the reference queries that are not R's own
        kept = {n for r in rows if r["relation"] not in own for n in r["kn"]}
        assert ctx.neurons.excluded("tiny-llama", "ig", relation) == kept
        assert {n for r in queries if r["relation"] in own for n in r["kn"]} - kept  # R's own would add neurons
    for fact in ctx.facts["tiny-llama"]:
        drop = ctx.neurons.excluded("tiny-llama", "ig", fact.relation)
        for kn in ctx.neurons.kn_lists("tiny-llama", "ig", fact.fact_id).values():
            assert not set(kn) & drop
    ctx.store.close()


def test_one_relation_study_gets_the_seven_relation_reference(tmp_path, study_args):
    """The reference set does not depend on what else is studied: a study of one relation stores the same
    reference attributions, and filters that relation's facts by the same neurons, as a study of seven."""
    relations = {f"rel{k}": [["Paris", "Rome"], ["Europe", "Africa"], ["red", "blue"]][k % 3] for k in range(7)}
    seven = _reference_study(tmp_path / "seven", study_args, _write_facts(tmp_path / "seven.jsonl", relations))
    one = _reference_study(tmp_path / "one", study_args,
                           _write_facts(tmp_path / "one.jsonl", {"rel1": relations["rel1"]}))
    a, b = (ctx.store.reference("tiny-llama", "ig") for ctx in (seven, one))
    assert [(r["prompt"], r["relation"], r["kn"]) for r in a] == [(r["prompt"], r["relation"], r["kn"]) for r in b]
    assert seven.neurons.excluded("tiny-llama", "ig", "rel1") == one.neurons.excluded("tiny-llama", "ig", "rel1")
    assert seven.neurons.excluded("tiny-llama", "ig", "rel1")
    seven.store.close()
    one.store.close()


def test_study_reference_uses_other_relations_known_facts(tmp_path, study_args):
    """--specificity-reference study (the behaviour of stores made before the shipped set): per relation a few
    known facts' queries; a fact's filter reads only the other relations' queries."""
    ctx = _reference_study(tmp_path / "a", study_args, specificity_reference="study", specificity_queries=3)
    rows = ctx.store.reference("tiny-llama", "ig")
    queries = [r for r in rows if r["relation"] is not None]
    assert {r["relation"] for r in queries} == {"R1", "R2"} and len(queries) <= 6
    fact_prompts = {q.text for probe in ctx.probes["tiny-llama"] for q in probe.queries}
    assert {r["prompt"] for r in queries} <= fact_prompts  # real queries, of known facts
    for relation in ("R1", "R2"):
        expected = {n for r in rows if r["relation"] in (None, *({"R1", "R2"} - {relation})) for n in r["kn"]}
        assert ctx.neurons.excluded("tiny-llama", "ig", relation) == expected
    ctx.store.close()


def test_filter_removes_non_specific_neurons_from_every_set(tmp_path, study_args):
    out = tmp_path / "f0"
    config = StudyConfig(**study_args(out, experiments=["consistency", "modification", "query-mapping"],
                                      specificity=0.0))
    summary = json.loads(run_study(config, echo=lambda _: None).read_text())
    ctx = _context(out, config)
    raw_total = 0
    for fact in ctx.facts["tiny-llama"]:
        dropped = ctx.neurons.excluded("tiny-llama", "ig", fact.relation)
        assert dropped
        raw = ctx.store.kn_lists("tiny-llama", "ig", fact.fact_id)
        used = ctx.neurons.kn_lists("tiny-llama", "ig", fact.fact_id)
        assert used.keys() == raw.keys()
        for q in used:
            assert not set(used[q]) & dropped
            raw_total += len(set(raw[q]) & dropped)
            assert used[q] == [n for n in raw[q] if n not in dropped]  # the paper's set minus the non-specific
        queries, stack = ctx.neurons.score_stack("tiny-llama", "ig", fact.fact_id)
        keep = partial(ctx.neurons.remove_nonspecific, "tiny-llama", "ig", fact.fact_id)
        for chosen in selections(ctx, stack, 0, list(range(len(queries))), keep).values():
            assert all(not set(neurons) & dropped for neurons in chosen.values())
    assert raw_total > 0  # the unfiltered sets did hold non-specific neurons
    views = {(r["method"], r["threshold_kind"]): set() for r in summary["consistency"]}
    for r in summary["consistency"]:
        views[(r["method"], r["threshold_kind"])].add(r["specificity"])
    assert all(v == {"on", "off"} for v in views.values())
    assert summary["config"]["specificity"] == 0.0
    union = ctx.neurons.excluded("tiny-llama", "ig", "R1") | ctx.neurons.excluded("tiny-llama", "ig", "R2")
    assert {(r["layer"], r["index"]) for r in summary["specificity"] if r["non_specific"]} == union
    for r in summary["specificity"]:
        assert {"model", "method", "layer", "index", "ref_frequency", "fact_frequency", "activation_ratio"} <= set(r)
        assert r["ref_frequency"] == max(r["ref_frequency_neutral"], r["ref_frequency_queries"])
        assert set(r["removed_for"]) == {rel for rel in ("R1", "R2")
                                         if (r["layer"], r["index"]) in ctx.neurons.excluded("tiny-llama", "ig", rel)}
    # modification trials edit the filtered sets: N_i sizes match the filtered lists
    with sqlite3.connect(out / "results.sqlite") as db:
        for key, rows in db.execute("SELECT key, rows FROM trials WHERE experiment = 'modification'"):
            fact_id = key.split("\t")[2]
            used = ctx.neurons.kn_lists("tiny-llama", "ig", fact_id)
            for row in json.loads(rows):
                if row["neurons"] == "N_i":
                    assert row["n_neurons"] == len(used[row["qidx"]])
    ctx.store.close()


def test_update_sweep_contract_and_frontier_figures(tmp_path, study_args):
    out = tmp_path / "sweep"
    args = study_args(out, experiments=["consistency", "update-sweep"], update_sweep_lambda2=[0.5, 4.0],
                      update_sweep_queries=1, facts=4)
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    rows = summary["update_sweep"]
    assert {r["rule"] for r in rows} == {"dai", "signed", "calibrated"}
    assert {r["lambda2"] for r in rows} == {0.5, 4.0}
    assert {r["group"] for r in rows} == {"K_C", "K_I", "all"}
    for r in rows:
        assert {"model", "method", "rule", "lambda2", "group", "n", "rel", "gen", "loc", "avg",
                "dlogppl_median"} <= set(r)
    total = [r for r in rows if r["group"] == "all"]
    assert all(r["n"] == max(t["n"] for t in total) for r in total) and total[0]["n"] >= 1
    figures = {p.name for p in (out / "figures").glob("update_frontier_*.png")}
    assert figures == {f"update_frontier_tiny-llama_ig_{rule}.png" for rule in ("dai", "signed", "calibrated")}
    assert "## Update frontier" in (out / "summary.md").read_text()
    # a larger lambda2 moves the edited query further: Rel never falls from 0.5 to 4 under dai (same direction)
    dai = {r["lambda2"]: r for r in total if r["rule"] == "dai"}
    assert dai[4.0]["rel"] >= dai[0.5]["rel"]


def test_tied_sweep_sets_lambda1_to_lambda2(tmp_path, study_args):
    """--sweep-tied edits with lambda1 = lambda2 at each grid point: its lambda = 1 point is the untied sweep's
    lambda2 = 1 point (lambda1 = 1 there too), its lambda = 2 point is a study with --lambda1 2."""
    common = dict(experiments=["consistency", "update-sweep"], update_sweep_queries=1, facts=4,
                  update_sweep_rules=["calibrated"])

    def sweep(name, **kwargs):
        out = run_study(StudyConfig(**study_args(tmp_path / name, **common, **kwargs)), echo=lambda _: None)
        return {(r["lambda2"], r["group"]): r for r in json.loads(out.read_text())["update_sweep"]}

    tied = sweep("tied", update_sweep_lambda2=[1.0, 2.0], update_sweep_tied=True)
    one = sweep("one", update_sweep_lambda2=[1.0])
    two = sweep("two", update_sweep_lambda2=[2.0], lambda1=2.0)
    assert {k: r["lambda1"] for k, r in tied.items()} == {k: k[0] for k in tied}
    assert {r["lambda1"] for r in one.values()} == {1.0} and {r["lambda1"] for r in two.values()} == {2.0}
    for other in (one, two):
        for key, row in other.items():
            _same(row, tied[key], str(key))
    assert any(tied[(1.0, "all")][m] != tied[(2.0, "all")][m] for m in ("rel", "loc", "dlogppl_median"))


def test_older_stores_count_as_unfiltered_dai(tmp_path, study_args):
    """A store written before the filter and the rules existed holds unfiltered sets edited by Dai et al.'s rule:
    it resumes with --specificity off --update-rule dai and is refused under the new defaults."""
    out = tmp_path / "old"
    args = study_args(out, experiments=["consistency"], specificity="off", update_rule="dai", lambda2=8.0)
    run_study(StudyConfig(**args), echo=lambda _: None)
    with sqlite3.connect(out / "results.sqlite") as db:
        db.execute("DELETE FROM config WHERE key IN ('specificity', 'update_rule', 'specificity_prompts', "
                   "'update_sweep_lambda2', 'update_sweep_rules', 'update_sweep_queries', 'update_sweep_tied')")
    run_study(StudyConfig(**args), echo=lambda _: None)
    defaults = study_args(out, experiments=["consistency"])
    with pytest.raises(KnowlocError, match=f"specificity: stored 1.0 vs now {DEFAULT_SPECIFICITY}.*update_rule"):
        run_study(StudyConfig(**defaults), echo=lambda _: None)


@pytest.mark.parametrize("kwargs,message", [
    ({"specificity": 1.5}, "--specificity"), ({"specificity": "sometimes"}, "--specificity"),
    ({"update_rule": "rome"}, "--update-rule"), ({"lambda2": float("inf")}, "--lambda2"),
    ({"update_sweep_lambda2": "1,x"}, "--sweep-lambda2"), ({"update_sweep_lambda2": [0.0]}, "--sweep-lambda2"),
    ({"update_sweep_rules": "dai,dai"}, "--sweep-rules"), ({"specificity_prompts": 0}, "--specificity-prompts"),
    ({"specificity_queries": -1}, "--specificity-queries"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(KnowlocError, match=message):
        StudyConfig(**kwargs)


def test_lambda2_defaults_to_the_rule(tmp_path):
    assert StudyConfig(update_rule="dai").update.lambda2 == 8.0
    assert StudyConfig(update_rule="calibrated").update.lambda2 == 1.0
    assert StudyConfig(update_rule="calibrated", lambda2=0.5).update.lambda2 == 0.5
    assert StudyConfig(specificity="off").specificity == 1.0 and not StudyConfig(specificity="off").filtered


def test_filtered_study_matches_the_fixture(tmp_path, study_args):
    """Refactoring changes no value: all seven experiments with the filter and the calibrated rule reproduce
    tests/study/data/filtered_tiny_summary.json (see its README)."""
    args = study_args(tmp_path / "on", experiments=ALL_PAPER + ["update-sweep"], specificity=0.1,
                      update_rule="calibrated", lambda2=2.0, update_sweep_lambda2=[0.5, 4.0], update_sweep_queries=1,
                      specificity_reference="study", specificity_queries=8)  # the fixture's reference
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    fixture = json.loads((LEGACY.parent / "filtered_tiny_summary.json").read_text())
    # experiments registered after the fixture add their questions as "not run"; the fixture's are unchanged
    asked = {f["question"] for f in fixture["findings"]}
    added = [f for f in summary["findings"] if f["question"] not in asked]
    assert added and {f["verdict"] for f in added} == {"not run"}
    summary["findings"] = [f for f in summary["findings"] if f["question"] in asked]
    _same(fixture, summary)


def test_heatmaps_skip_facts_the_filter_left_without_kns(tmp_path, study_args, monkeypatch):
    """The K_C / K_I heatmap example is the most typical fact that still has a KN to show (the demo once failed
    when the filter emptied the lowest-CS fact's first two KN sets)."""
    from knowloc.study.experiments import consistency

    out = tmp_path / "hm"
    config = StudyConfig(**study_args(out, experiments=["consistency"]))
    run_study(config, echo=lambda _: None)
    ctx = _context(out, config)
    _, shown = consistency.heatmap_figures(ctx)
    first = {r["group"]: r["fact_id"] for r in shown}
    assert first
    real = ctx.neurons.kn_lists
    emptied = set(first.values())
    monkeypatch.setattr(ctx.neurons, "kn_lists", lambda m, meth, fid: (
        {q: [] for q in real(m, meth, fid)} if fid in emptied else real(m, meth, fid)))
    _, shown = consistency.heatmap_figures(ctx)
    assert shown and not {r["fact_id"] for r in shown} & emptied
    monkeypatch.setattr(ctx.neurons, "kn_lists", lambda m, meth, fid: {q: [] for q in real(m, meth, fid)})
    paths, shown = consistency.heatmap_figures(ctx)
    assert paths == [] and shown == []
    ctx.store.close()
