"""Studies share attributions through the attribution cache: a second study that differs only in editing or
analysis settings computes none (its dry run shows 0 attribution units), and `off` disables the cache; a
shipped reference pack serves the specificity reference."""

import json
import sqlite3

import pytest

from knowloc.attribution import shipped
from knowloc.errors import KnowlocError
from knowloc.study import plan
from knowloc.study.config import StudyConfig
from knowloc.study.reference_pack import build_reference_pack
from knowloc.study.runner import run_study


def _rows(path, table):
    with sqlite3.connect(path) as db:
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_second_study_with_other_editing_settings_runs_no_attribution(tmp_path, study_args, engine_calls):
    args = study_args(tmp_path / "first", facts=3, specificity_prompts=4)
    run_study(StudyConfig(**args), echo=lambda _: None)
    computed = len(engine_calls)
    assert computed > 0
    other = {**args, "out": str(tmp_path / "second"), "update_rule": "signed", "locality": 2, "threshold": 0.3}
    dry = plan.print_plan(StudyConfig(**other), echo=lambda _: None)["units"]["tiny-llama"]
    assert dry["attribution"] == 0 and dry["reference"] == 0 and dry["cached"] > 0
    assert len(engine_calls) == computed  # the dry run timed no attribution either
    lines = []
    summary = json.loads(run_study(StudyConfig(**other), echo=lines.append).read_text())
    assert len(engine_calls) == computed
    assert any("from the attribution cache" in line for line in lines)
    assert summary["modification"]
    # the same stored scores as the first study (KN sets re-selected at the second study's threshold)
    first = {r[:4]: (r[4], r[6]) for r in _rows(tmp_path / "first" / "results.sqlite", "attributions")}
    second = {r[:4]: (r[4], r[6]) for r in _rows(tmp_path / "second" / "results.sqlite", "attributions")}
    assert first.keys() == second.keys() and first == second


def test_cache_off_recomputes(tmp_path, study_args, engine_calls):
    args = study_args(tmp_path / "a", facts=2, specificity="off", attribution_cache="off")
    run_study(StudyConfig(**args), echo=lambda _: None)
    once = len(engine_calls)
    run_study(StudyConfig(**{**args, "out": str(tmp_path / "b")}), echo=lambda _: None)
    assert once > 0 and len(engine_calls) == 2 * once


def test_cache_directory_option(tmp_path, study_args):
    args = study_args(tmp_path / "a", facts=2, specificity="off", attribution_cache=str(tmp_path / "mine"))
    run_study(StudyConfig(**args), echo=lambda _: None)
    assert list((tmp_path / "mine").glob("??/*.attr"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(KnowlocError, match="not a directory"):
        StudyConfig(**{**args, "attribution_cache": str(tmp_path / "file")})
    with pytest.raises(KnowlocError, match="attribution-cache-gb"):
        StudyConfig(**{**args, "attribution_cache_gb": 0})


def _reference_rows(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return sorted(db.execute("SELECT method, ridx, kn FROM reference").fetchall())


def test_a_study_reads_its_reference_from_a_pack(tmp_path, study_args, monkeypatch, engine_calls):
    args = study_args(tmp_path / "plain", facts=2, specificity_prompts=4, attribution_cache="off")
    monkeypatch.setenv("KNOWLOC_REFERENCE_DIR", str(tmp_path / "no-packs"))
    run_study(StudyConfig(**args), echo=lambda _: None)
    plain_calls = len(engine_calls)
    packs = tmp_path / "packs"
    build_reference_pack("tiny-llama", packs / "tiny-llama.json.gz", [StudyConfig(**args)], ["ig"],
                         echo=lambda _: None)
    monkeypatch.setenv("KNOWLOC_REFERENCE_DIR", str(packs))
    engine_calls.clear()
    lines = []
    run_study(StudyConfig(**{**args, "out": str(tmp_path / "packed")}), echo=lines.append)
    n_reference = len(_reference_rows(tmp_path / "plain"))
    assert n_reference > 0 and len(engine_calls) == plain_calls - n_reference  # only the facts' attributions
    assert _reference_rows(tmp_path / "packed") == _reference_rows(tmp_path / "plain")
    assert any("from the attribution cache" in line for line in lines)
    # below the floor the pack cannot give the KN sets: the reference is computed
    engine_calls.clear()
    low = {**args, "out": str(tmp_path / "low"), "threshold": shipped.FLOOR / 2}
    run_study(StudyConfig(**low), echo=lambda _: None)
    assert len(engine_calls) == plain_calls
