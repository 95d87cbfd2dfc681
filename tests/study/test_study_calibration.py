"""ft's bound calibrated per model (--ft-bound auto): shipped calibrations are read instead of computed when they
are the same calibration, any other is computed; the shipped entries of the built-in models are current."""

import json
from pathlib import Path

import pytest

from knowloc.study.calibration import (calibration_key, calibration_requests, needed, shipped, write_shipped)
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.runner import run_study

ARGS = dict(experiments=["consistency", "editors"], editors=["kn", "ft"], ft_steps=3, ft_calibration=4)


def _context(config: StudyConfig) -> StudyContext:
    return StudyContext(config=config, store=None, out=Path("unused"), echo=lambda _: None)  # type: ignore[arg-type]


def test_a_shipped_calibration_is_read_not_computed(tmp_path, study_args, monkeypatch):
    monkeypatch.setenv("KNOWLOC_REFERENCE_DIR", str(tmp_path / "shipped"))
    config = StudyConfig(**study_args(tmp_path / "study", **ARGS))
    path = write_shipped(_context(config), "tiny-llama")
    assert path == tmp_path / "shipped" / "calibration.json"
    (entry,) = json.loads(path.read_text()).values()
    assert entry["model"] == "tiny-llama" and sum(r["chosen"] for r in entry["rows"]) == 1
    monkeypatch.setattr("knowloc.study.calibration.calibrate",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("calibrated although shipped")))
    summary = json.loads(run_study(config, echo=lambda _: None).read_text())
    assert summary["calibration"] == entry["rows"]
    # another setting that decides the calibration (ft's steps) is another calibration: computed, not read
    monkeypatch.undo()
    monkeypatch.setenv("KNOWLOC_REFERENCE_DIR", str(tmp_path / "shipped"))
    other = StudyConfig(**study_args(tmp_path / "other", **{**ARGS, "ft_steps": 2}))
    lm = _context(other).model("tiny-llama")
    assert shipped(calibration_key(lm, other, calibration_requests(lm, other, 0))) is None


def test_reference_calibrate_keeps_one_entry_per_model(tmp_path):
    from knowloc.cli import main

    out = tmp_path / "calibration.json"
    for _ in range(2):
        assert main(["reference", "calibrate", "--model", "tiny-llama", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text()).values()
    assert entry["model"] == "tiny-llama" and {r["n"] for r in entry["rows"]} == {10}


def test_calibration_needs_ft_in_an_editing_experiment():
    assert needed(StudyConfig(experiments=["consistency", "editors"], editors=["kn", "ft"]))
    assert not needed(StudyConfig(experiments=["consistency", "editors"], editors=["kn", "rome"]))
    assert not needed(StudyConfig(experiments=["consistency", "editors"], editors=["ft"], ft_bound="0.01"))
    assert needed(StudyConfig(experiments=["consistency", "localization-vs-editing"], editors=["kn"]))
    with pytest.raises(Exception, match="--ft-bound must be a number > 0 or 'auto'"):
        StudyConfig(ft_bound="big")


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_the_built_in_models_calibrations_under_the_defaults_are_shipped(fixture, request):
    """A default study reads its calibration: the shipped
    entry's key is today's (weights, requests, settings), so a change of any of them shows here."""
    lm = request.getfixturevalue(fixture)
    if lm.device.type != "cpu":
        pytest.skip("the shipped calibrations are the CPU's (the key holds the device type)")
    config = StudyConfig(models=[lm.name])
    layer = config.layers("edit_layer").resolve(lm.n_layers)[0]
    rows = shipped(calibration_key(lm, config, calibration_requests(lm, config, layer)))
    assert rows is not None and sum(r["chosen"] for r in rows) == 1
