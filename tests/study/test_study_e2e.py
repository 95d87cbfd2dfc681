import json
import sqlite3

import pytest

from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study


def _reject(token: str):
    raise ValueError(f"summary.json holds {token}, which strict JSON parsers reject")


def test_study_end_to_end_writes_outputs(tmp_path, study_args):
    out = tmp_path / "study"
    path = run_study(StudyConfig(**study_args(out)), echo=lambda _: None)
    summary = json.loads(path.read_text(), parse_constant=_reject)  # strict JSON: no NaN / Infinity
    assert any(v is None for r in summary["modification"] for v in r.values())  # nan cells are written as null
    for name in ("summary.json", "summary.md", "tables/modification.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o644 & ~_umask(), name
    assert summary["config"]["models"] == ["tiny-llama"]
    assert summary["facts"]["tiny-llama"] >= 3
    kinds = {r["threshold_kind"] for r in summary["consistency"]}
    assert kinds == {"static", "otsu"}
    for row in summary["consistency"]:
        assert row["n_facts"] == summary["facts"]["tiny-llama"]
        assert 0 <= row["k_i_fraction"] <= 1 and row["k_i_ci_low"] <= row["k_i_fraction"] <= row["k_i_ci_high"]
    mods = summary["modification"]
    assert {r["operation"] for r in mods} == {"erase", "update"}
    assert {r["neurons"] for r in mods} == {"N_i", "N_g", "N_cap"}
    assert sum(r["n"] for r in mods if r["operation"] == "erase" and r["neurons"] == "N_i") \
        == summary["facts"]["tiny-llama"]
    erase = [r for r in mods if r["operation"] == "erase" and r["neurons"] == "N_i" and r["n"]]
    assert erase and all(r["dprob_self"] < 0 for r in erase)  # erasing own KNs lowers the gold probability
    assert (out / "tables" / "consistency.csv").read_text().startswith("model,")
    assert (out / "tables" / "modification.csv").exists()
    assert (out / "summary.md").read_text().startswith("# knowloc study")
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert any(n.startswith("cs_violin") for n in figures) and any(n.startswith("modification_") for n in figures)
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rerun_reuses_store_and_conflict_is_refused(tmp_path, study_args, monkeypatch):
    out = tmp_path / "study"
    first = run_study(StudyConfig(**study_args(out)), echo=lambda _: None).read_text()
    import knowloc.attribution as attribution

    def forbidden(*_a, **_k):
        raise AssertionError("attribution recomputed")
    monkeypatch.setattr(attribution, "attribute", forbidden)
    assert run_study(StudyConfig(**study_args(out)), echo=lambda _: None).read_text() == first
    with pytest.raises(KnowlocError, match="another configuration.*threshold"):
        run_study(StudyConfig(**study_args(out, threshold=0.5)), echo=lambda _: None)


def test_growing_a_study_reuses_stored_work(tmp_path, study_args, monkeypatch):
    """More facts or another method on the same directory computes only what is new."""
    import knowloc.attribution as attribution

    calls = []
    real = attribution.attribute

    def counting(*args, **kwargs):
        calls.append(kwargs.get("method"))
        return real(*args, **kwargs)
    monkeypatch.setattr(attribution, "attribute", counting)
    out = tmp_path / "grow"
    small = json.loads(run_study(StudyConfig(**study_args(out, facts=2, experiments=["consistency"])),
                                 echo=lambda _: None).read_text())
    first = len(calls)
    assert small["facts"]["tiny-llama"] == 2 and first >= 4
    full = json.loads(run_study(StudyConfig(**study_args(out, experiments=["consistency"])),
                                echo=lambda _: None).read_text())
    grown = len(calls) - first
    with sqlite3.connect(out / "results.sqlite") as db:
        stored = db.execute("SELECT COUNT(*) FROM attributions").fetchone()[0]
        # the specificity profile's reference queries (computed once, with the first run) are next-token
        # attributions (attribute_next_token), not counted here
        references = db.execute("SELECT COUNT(*) FROM reference WHERE relation IS NOT NULL").fetchone()[0]
    assert stored == first + grown and grown > 0 and references > 0  # nothing attributed twice
    run_study(StudyConfig(**study_args(out, experiments=["consistency"], methods=["ig", "amig"])), echo=lambda _: None)
    assert set(calls[first + grown:]) == {"amig"}
    assert full["facts"]["tiny-llama"] > 2


def test_attention_options_and_older_stores(tmp_path, study_args):
    """KS top-k, a layer range and renormalisation are study settings; a store that predates a setting
    counts as its default."""
    from knowloc.study.config import StudyConfig as Config

    with pytest.raises(KnowlocError, match="attention-layers"):
        Config(attention_layers="5-2")
    out = tmp_path / "attn"
    args = study_args(out, experiments=["consistency", "attention"], attention_k=2, attention_layers="1-2",
                      attention_renormalize=True, facts=3)
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    assert summary["config"]["attention_layers"] == "1-2" and summary["attention"]
    with sqlite3.connect(out / "results.sqlite") as db:
        db.execute("DELETE FROM config WHERE key = 'attention_k'")  # as if written before the setting existed
    with pytest.raises(KnowlocError, match="attention_k"):
        run_study(StudyConfig(**args), echo=lambda _: None)  # stored default 3 != 2


def test_bf16_study_end_to_end_and_cuda_without_gpu(tmp_path, study_args, capsys):
    """--compute-dtype bf16 runs the whole pipeline (on the suite's device); --gpu on a machine without one is a
    one-line error."""
    import torch

    from knowloc.cli import main

    out = tmp_path / "bf16"
    summary = json.loads(run_study(StudyConfig(**study_args(out, compute_dtype="bf16")), echo=lambda _: None).read_text())
    assert summary["facts"]["tiny-llama"] >= 3 and summary["modification"]
    erase = [r for r in summary["modification"] if r["operation"] == "erase" and r["neurons"] == "N_i" and r["n"]]
    assert erase and all(r["dprob_self"] < 0 for r in erase)
    if not torch.cuda.is_available():
        code = main(["study", "--gpu", "--model", "tiny-llama", "--out", str(tmp_path / "gpu")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "cuda" in err[0].lower()
        assert not (tmp_path / "gpu").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_study_is_tied_to_the_content_of_its_data(tmp_path, study_args, tiny_facts):
    """An edited fact file is refused with one line naming the change; the same facts under another path
    spelling (or a copy) are the same study."""
    out = tmp_path / "content"
    args = study_args(out, experiments=["consistency"], facts=3)
    first = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    copy = tmp_path / "elsewhere" / "facts.jsonl"
    copy.parent.mkdir()
    copy.write_text(tiny_facts.read_text())
    spelled = tmp_path / "elsewhere" / ".." / "elsewhere" / "facts.jsonl"
    again = json.loads(run_study(StudyConfig(**{**args, "data": str(spelled)}), echo=lambda _: None).read_text())
    assert again["consistency"] == first["consistency"]
    lines = copy.read_text().splitlines()
    row = json.loads(lines[0])
    row["object"] = "Tokyo"
    copy.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    with pytest.raises(KnowlocError, match=rf"holds a study of other facts .*fact {row['id']}: object 'Paris' -> 'Tokyo'"):
        run_study(StudyConfig(**{**args, "data": str(copy)}), echo=lambda _: None)
    assert json.loads((out / "summary.json").read_text())["consistency"] == first["consistency"]  # untouched


def test_dry_run_counts_only_missing_units_and_writes_nothing(tmp_path, study_args, monkeypatch):
    """The dry run reuses the stored probe and work (it estimates only what is missing), and --out stays as it
    was; on a fresh directory it counts the units the real run then computes."""
    from knowloc.study import plan

    out = tmp_path / "dry"
    args = study_args(out, experiments=["consistency", "modification"], facts=3, specificity_prompts=4)
    fresh = plan.print_plan(StudyConfig(**args), echo=lambda _: None)
    assert not out.exists()
    counts = fresh["units"]["tiny-llama"]
    assert counts["attribution"] > 0 and counts["reference"] > 0 and counts["modification"] == 3
    assert fresh["estimated_s"] > 0
    run_study(StudyConfig(**args), echo=lambda _: None)
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM attributions").fetchone()[0] == counts["attribution"]
        assert db.execute("SELECT COUNT(*) FROM reference").fetchone()[0] == counts["reference"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_probe(*_a, **_k):
        raise AssertionError("probed again")
    monkeypatch.setattr("knowloc.study.runner.probe_facts", no_probe)
    again = plan.print_plan(StudyConfig(**args), echo=lambda _: None)
    assert again["units"]["tiny-llama"] == {"reference": 0, "attribution": 0, "cached": 0} and again["estimated_s"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    more = plan.print_plan(StudyConfig(**{**args, "facts": 5}), echo=lambda _: None)["units"]["tiny-llama"]
    assert more["modification"] == 2 and more["attribution"] > 0  # only the two new facts


def test_dry_run_times_editing_on_filtered_sets(tmp_path, study_args, monkeypatch):
    """Without stored reference attributions the timed experiment unit uses an approximate specificity profile
    (a few neutral prompts and one query of each other relation), so it edits filtered neuron sets as the real
    run does (an unfiltered unit overestimated the demo's editing experiments about twofold)."""
    from knowloc.study import plan
    
    seen = []
    real_execute = plan.execute

    def spy(ctx, unit):
        if unit.kind == "modification":
            fact = next(f for f in ctx.facts[unit.model] if f.fact_id == unit.fact_id)
            rows = ctx.store.reference(unit.model, unit.method)
            neutral = [r for r in rows if r["relation"] is None]
            queries = sorted(r["relation"] for r in rows if r["relation"] is not None)
            seen.append((ctx.config.filtered, ctx.config.specificity, len(neutral),
                         ctx.neurons.excluded(unit.model, unit.method, fact.relation), queries,
                         ctx.neurons.excluded_reference(unit.model, fact.relation)))
        return real_execute(ctx, unit)
    monkeypatch.setattr(plan, "execute", spy)
    args = study_args(tmp_path / "dry", experiments=["modification"], facts=2, specificity_prompts=12)
    plan.print_plan(StudyConfig(**args), echo=lambda _: None)
    assert len(seen) == 2  # both facts are timed (plan.TIMED_FACTS >= 2)
    for filtered, threshold, n_neutral, excluded, queries, own in seen:
        # one query of each reference relation: at least PROFILE_QUERIES besides the fact's relation's own
        assert len(queries) == len(set(queries)) and len(set(queries) - own) >= plan.PROFILE_QUERIES
        assert filtered and n_neutral == plan.PROFILE_NEUTRAL
        assert threshold == max(StudyConfig(**args).specificity, 1 / plan.PROFILE_NEUTRAL)
        assert excluded  # tiny-llama has neurons that are KNs of most neutral prompts


def test_bench_study_counts_every_fact_as_known_and_ends_with_the_estimate(tmp_path, study_args, monkeypatch, capsys):
    """`knowloc bench study` is the dry run with every query counted as answered (a random-init model knows no
    fact): it plans every fact of the data, and its last line is estimate_s=... device=... model=..."""
    from knowloc.cli import main
    from knowloc.study import bench, plan

    args = study_args(tmp_path / "dry", experiments=["consistency", "modification"], specificity_prompts=4,
                      candidates=False)
    as_probed = plan.print_plan(StudyConfig(**args), echo=lambda _: None)
    every = plan.print_plan(StudyConfig(**args), echo=lambda _: None, every_fact_known=True)
    assert every["units"]["tiny-llama"]["modification"] > as_probed["units"]["tiny-llama"].get("modification", 0)
    assert not (tmp_path / "dry").exists()
    light = {k: args[k] for k in ("data", "methods", "steps", "specificity_prompts", "specificity_queries")}
    monkeypatch.setattr(bench, "FULL_STUDY", {**light, "experiments": ["consistency", "modification"]})
    assert main(["bench", "study", "--model", "tiny-llama", "--facts", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in last.split())
    assert set(fields) == {"estimate_s", "device", "model"} and fields["model"] == "tiny-llama"
    assert float(fields["estimate_s"]) > 0
