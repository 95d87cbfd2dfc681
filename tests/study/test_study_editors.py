"""The editors experiment end to end on a tiny model: rows per editor and layer, C computed once in the driver and
stored, the two findings, the figure, and a rerun that recomputes nothing."""

import json

import pytest

from knowloc.editing.editors import covariance as covariance_module
from knowloc.editing.editors.finetune import BOUNDS
from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study

EDITOR_ARGS = dict(experiments=["consistency", "editors"], rome_samples=4, rome_steps=3, rome_prefixes=1,
                   ft_steps=3, edit_layer=["0", "mid"])


def test_editors_study_end_to_end(tmp_path, study_args, monkeypatch):
    computed = []
    real = covariance_module.key_second_moments

    def spy(lm, layers, seqs, *a, **k):
        computed.append(tuple(layers))
        return real(lm, layers, seqs, *a, **k)
    monkeypatch.setattr(covariance_module, "key_second_moments", spy)
    out = tmp_path / "study"
    summary = json.loads(run_study(StudyConfig(**study_args(out, **EDITOR_ARGS)), echo=lambda _: None).read_text())
    assert computed == [(0, 1)]  # C of both edit layers (mid of 3 layers = 1), once, before the facts' units
    rows = summary["editors"]
    combos = {(r["editor"], r["layer"]) for r in rows}
    assert combos == {("kn", None), ("kn-ft", None), ("ft", 0), ("ft", 1), ("rome", 0), ("rome", 1)}
    n_facts = summary["facts"]["tiny-llama"]
    for r in rows:
        if r["group"] == "all" and r["editor"] in ("ft", "rome"):
            assert r["n"] == n_facts and 0 <= r["rel"] <= 1 and 0 <= r["loc"] <= 1 and r["seconds"] > 0
    assert {g["editor"] for g in summary["editors_gap"]} == {"kn", "kn-ft", "ft", "rome"}
    assert {c["baseline"] for c in summary["editors_contrasts"]} == {"ft L0", "ft L1", "rome L0", "rome L1"}
    ids = {f["id"] for f in summary["findings"]}
    assert {"kn-vs-editors", "ki-gap-source"} <= ids
    assert "editors_tiny-llama_ig.png" in summary["figures"]["editors"]
    assert (out / "tables" / "editors.csv").exists() and "## Editors" in (out / "summary.md").read_text()
    # ft's bound calibrated once for the model on the reference queries (--ft-bound auto), before the edits
    calibration = summary["calibration"]
    chosen = [r for r in calibration if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["model"] == "tiny-llama" and chosen[0]["value"] in BOUNDS
    assert chosen[0]["n"] == 10 and chosen[0]["layer"] == 0 and 0 <= chosen[0]["rel"] <= 1
    assert "ft / kn-ft bound per model" in (out / "summary.md").read_text()
    # a rerun reads everything back: no C, no calibration, no edit
    monkeypatch.setattr("knowloc.study.experiments.editors.measure_edit",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("edit recomputed")))
    monkeypatch.setattr("knowloc.study.calibration.calibrate",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("calibrated again")))
    again = json.loads(run_study(StudyConfig(**study_args(out, **EDITOR_ARGS)), echo=lambda _: None).read_text())
    assert again["editors"] == rows and computed == [(0, 1)] and again["calibration"] == calibration


def test_the_study_and_the_editors_share_their_defaults():
    """One source of rome's and ft's defaults: a default study builds the editors the dataclasses' defaults build
    (what `knowloc bench editors` times), with the values studies have always used (4 prefixes, 128 samples)."""
    from dataclasses import fields

    from knowloc.editing.editors import FineTune, Rome
    from knowloc.study.editor_registry import make_editor

    config = StudyConfig()
    study, default = make_editor("rome", config), Rome()
    assert [(f.name, getattr(study, f.name)) for f in fields(Rome) if f.name != "covariance"] == \
        [(f.name, getattr(default, f.name)) for f in fields(Rome) if f.name != "covariance"]
    assert (config.rome.steps, config.rome.lr, config.rome.stop, config.rome.prefixes, config.rome.samples) == \
        (20, 0.5, 0.0, 4, 128) and (default.sample.n, default.sample.length, default.sample.seed) == (128, 64, 0)
    for name in ("ft", "kn-ft"):  # the bound is the model's calibrated one
        assert make_editor(name, config, calibrated={"ft_bound": 2e-3}) == FineTune(bound=2e-3,
                                                                                   neurons=name == "kn-ft")
        with pytest.raises(KnowlocError, match="calibrated per model"):
            make_editor(name, config)
    assert (config.ft.steps, config.ft.lr, config.ft.bound, config.ft.calibration) == (25, 1e-2, "auto", 10)
    assert make_editor("ft", StudyConfig(ft_bound="0.005")).bound == 5e-3


def test_memit_and_alphaedit_run_in_the_editors_experiment(tmp_path, study_args):
    """The two many-fact editors are --editors choices: one edit per edited query, their C computed once over
    their range (tiny-llama, 3 layers: layers 0-1) before the facts' units."""
    out = tmp_path / "study"
    args = study_args(out, experiments=["consistency", "editors"], editors=["kn", "memit", "alphaedit"],
                      rome_samples=4, rome_steps=2, rome_prefixes=1)
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    rows = {(r["editor"], r["group"]): r for r in summary["editors"]}
    for name in ("memit", "alphaedit"):
        every = rows[(name, "all")]
        assert every["layer"] is None and every["n"] == summary["facts"]["tiny-llama"] and 0 <= every["rel"] <= 1
    assert StudyConfig(editors="memit,alphaedit").editors == ["memit", "alphaedit"]


def test_mass_editing_end_to_end(tmp_path, study_args, monkeypatch):
    """Sequential edits of every editor (kn on each of N_i, CAS, N_g) and memit's batch, measured at 1 and all edits
    on every edit so far with CounterFact's scores and a greedy continuation; the CAS contrasts, the figure, the
    findings; a rerun edits nothing."""
    out = tmp_path / "study"
    args = study_args(out, experiments=["consistency", "mass-editing"], editors=["kn", "rome", "memit"],
                      mass_edits=3, mass_generate=4, rome_samples=4, rome_steps=2, rome_prefixes=1)
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    rows = summary["mass_editing"]
    every = {(r["editor"], r["selection"], r["mode"], r["n_edits"]): r for r in rows if r["group"] == "all"}
    assert {k[:3] for k in every} == {("kn", "N_i", "sequential"), ("kn", "CAS", "sequential"),
                                      ("kn", "N_g", "sequential"), ("rome", "", "sequential"),
                                      ("memit", "", "sequential"), ("memit", "", "batch")}
    for (editor, _, mode, n_edits), r in every.items():
        assert n_edits in (1, 3) or (editor == "kn" and n_edits <= 3)
        assert r["n"] == n_edits and 0 <= r["rel"] <= 1 and 0 <= r["loc"] <= 1  # every edit so far, measured
        # CounterFact's scores: under the update rule the efficacy and paraphrase scores are Rel and Gen
        assert r["efficacy_score"] == r["rel"] and r["paraphrase_score"] == r["gen"]
        assert -1 <= r["efficacy_magnitude"] <= 1 and 0 <= r["neighborhood_score"] <= 1
        assert r["generation_hit"] in (0.0, 1.0) or 0 < r["generation_hit"] < 1
        assert r["generation_entropy"] >= 0
    stored = _stored_trials(out)
    assert all(isinstance(t["generated"], str) for ts in stored.values() for t in ts)
    # kn's three sequences edit the same facts (those whose three selections are non-empty) in the same order
    edited = {sel: [(t["n_edits"], t["fact_id"]) for t in stored[f"tiny-llama|ig|kn|sequential|{sel}"]]
              for sel in ("N_i", "CAS", "N_g")}
    assert edited["N_i"] and edited["N_i"] == edited["CAS"] == edited["N_g"]
    cas = summary["mass_editing_cas"]
    assert {(c["baseline"], c["n_edits"]) for c in cas} == {(b, k) for b in ("N_i", "N_g") for k, _ in edited["N_i"]}
    ids = {f["id"] for f in summary["findings"]}
    assert {"edits-at-scale", "cas-at-scale", "k-c-k-i-at-scale"} <= ids
    assert "mass_editing_tiny-llama_ig.png" in summary["figures"]["mass-editing"]
    monkeypatch.setattr("knowloc.study.experiments.mass_editing._edits",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("edits redone")))
    again = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    assert again["mass_editing"] == rows


def _stored_trials(out):
    from knowloc.study.store import Store

    return Store(out / "results.sqlite", readonly=True).trials("mass-editing")


def test_a_sequence_of_one_editor_matches_its_edits_one_by_one_at_the_first_checkpoint(tmp_path, study_args):
    """After one edit, the sequential row of a fact is the editors experiment's measurement of that edit."""
    from knowloc.study.settings import MassEditingSettings

    assert MassEditingSettings(edits=25).checkpoints(25) == [1, 10, 25]
    assert MassEditingSettings().checkpoints(1) == [1] and MassEditingSettings().checkpoints(0) == []
