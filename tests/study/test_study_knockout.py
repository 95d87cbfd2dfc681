"""The knockout experiment end to end on a tiny model: the summary contract, the figures, the findings, and a
rerun that recomputes nothing."""

import json

import numpy as np
import pytest

from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.experiments.knockout import synapse_subject_profile, upper_middle
from knowloc.study.runner import run_study


def test_knockout_study_end_to_end(tmp_path, study_args, monkeypatch):
    out = tmp_path / "study"
    args = study_args(out, experiments=["consistency", "knockout"], methods=["ig", "amig"], knockout_window=2)
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    n_layers, n_facts = 3, summary["facts"]["tiny-llama"]
    rows = summary["knockout"]
    assert {r["edge_set"] for r in rows} == {"subject", "non_subject", "last"}
    assert {r["group"] for r in rows} >= {"all"} and {r["method"] for r in rows} == {"ig", "amig"}
    every = [r for r in rows if r["group"] == "all" and r["method"] == "ig"]
    assert len(every) == 3 * n_layers and all(r["n"] == n_facts for r in every)
    assert all(r["drop_low"] <= r["drop_mean"] <= r["drop_high"] for r in every if r["drop_low"] == r["drop_low"])
    # the same facts' drops whichever method groups them
    by_key = {(r["edge_set"], r["layer"]): r["drop_mean"] for r in rows if r["group"] == "all" and r["method"] == "amig"}
    assert by_key == {(r["edge_set"], r["layer"]): r["drop_mean"] for r in every}
    extraction = summary["extraction"]
    assert {(r["site"], r["layer"]) for r in extraction} == {(s, l) for s in ("subject_hidden", "attention_update")
                                                             for l in range(n_layers)}
    assert all(0 <= r["rate"] <= 1 and r["n"] == n_facts for r in extraction)
    (contrast,) = summary["knockout_contrasts"]
    assert contrast["model"] == "tiny-llama" and contrast["layers"] == "1-1" and contrast["n"] == n_facts
    assert {r["method"] for r in summary["knockout_vs_kn"]} == {"ig", "amig"}
    assert summary["knockout_vs_synapses"][0]["n"] + summary["knockout_vs_synapses"][0]["n_constant"] == n_facts
    ids = {f["id"] for f in summary["findings"]}
    assert {"attention-carries-subject", "synapses-agree-with-knockout"} <= ids
    assert {"knockout_tiny-llama_ig.png", "extraction_tiny-llama.png"} <= set(summary["figures"]["knockout"])
    assert "## Attention knockout" in (out / "summary.md").read_text()
    assert (out / "tables" / "knockout.csv").exists()
    # a rerun reads the stored drops back: no knockout runs
    monkeypatch.setattr("knowloc.study.experiments.knockout.knockout_effects",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("knockout recomputed")))
    again = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    assert again["knockout"] == rows


def test_the_window_setting_is_checked_in_one_line():
    assert StudyConfig(knockout_window=4).knockout.window == 4
    assert StudyConfig().knockout.layers(30) == 6 and StudyConfig(knockout_window=3).knockout.layers(30) == 3
    with pytest.raises(KnowlocError, match="--knockout-window must be an integer >= 0"):
        StudyConfig(knockout_window=-1)


def test_upper_middle_layers_and_the_synapse_profile():
    assert upper_middle(30) == list(range(15, 22)) and upper_middle(3) == [1] and upper_middle(1) == [0]
    rows = np.zeros((2, 2, 5))
    rows[0, 0, 2], rows[0, 1, 4], rows[1, 1, 3] = 0.6, 0.3, 0.5
    synapses = [(0, 0, 2), (0, 1, 4), (1, 1, 3)]
    assert synapse_subject_profile(rows, synapses, (2, 3)) == [0.3, 0.25]  # per layer, mass on 2-3 over 2 heads
