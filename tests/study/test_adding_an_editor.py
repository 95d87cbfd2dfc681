"""docs/extending.md, "Adding an editor": a toy editor is one module (here, this file's class) plus one line of
the study's editor registry, and then it is an --editors choice, measured by the one editing path and run by the
editors experiment beside the built-in ones."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from knowloc.editing import AppliedEdit, EditRequest, Editor, compute_baseline, measure_edit
from knowloc.editing.operations import unembedding_row
from knowloc.errors import KnowlocError
from knowloc.models.hooks import edit_weights
from knowloc.study import editor_registry
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study


@dataclass
class Steer(Editor):
    """``steer``: every value vector of the chosen layer gets ``strength x (E(o') - E(o)) / |E(o') - E(o)|``."""

    strength: float = 1.0

    name = "steer"
    uses_layer = True

    @contextmanager
    def edit(self, lm, request: EditRequest) -> Iterator[AppliedEdit]:
        request = request.checked(lm, needs_layer=True)
        direction = (unembedding_row(lm, lm.first_target_token(request.new_object))
                     - unembedding_row(lm, lm.first_target_token(request.gold))).float()
        delta = self.strength * torch.outer(direction / direction.norm(),
                                            torch.ones(lm.n_neurons, device=direction.device))
        with edit_weights(lm) as weights:
            weights.add_matrix(request.layer, delta)  # [d_model, n_neurons]
            yield AppliedEdit(start=request.layer, n_weights=delta.numel())


@pytest.fixture
def registered(monkeypatch):
    # the one line a new editor adds to knowloc/study/editor_registry.py's BUILDERS
    monkeypatch.setitem(editor_registry.BUILDERS, "steer", lambda cfg, covariance: Steer(strength=4.0))
    monkeypatch.setattr(editor_registry, "EDITORS", tuple(editor_registry.BUILDERS))


def test_a_registered_editor_is_a_study_choice_and_measured_by_the_one_path(registered, tiny_models):
    lm = tiny_models("tiny-llama")
    assert StudyConfig(editors="kn,steer").editors == ["kn", "steer"]
    editor = editor_registry.make_editor("steer", StudyConfig())
    assert isinstance(editor, Steer) and editor.strength == 4.0
    prompts = ["The capital of France is", "France's capital is"]
    base = compute_baseline(lm, prompts)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    request = EditRequest(prompts[0], "France", "Paris", "Rome", layers=1)
    result, applied, seconds = measure_edit(base, editor, 0, request)
    assert applied.start == 1 and applied.n_weights == lm.n_neurons * lm.value_vector(0, 0).numel()
    assert result.operation == "update" and result.dprob_self != 0.0 and seconds >= 0
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())  # restored bit-exactly
    with pytest.raises(KnowlocError, match="edits one layer"):
        measure_edit(base, editor, 0, EditRequest(prompts[0], "France", "Paris", "Rome"))


def test_unregistered_it_is_refused_in_one_line():
    with pytest.raises(KnowlocError, match="unknown editor 'steer'"):
        StudyConfig(editors="kn,steer")


def test_the_editors_experiment_runs_a_registered_editor(registered, tmp_path, study_args):
    out = tmp_path / "study"
    cfg = StudyConfig(**study_args(out, experiments=["consistency", "editors"], editors=["kn", "steer"],
                                   edit_layer=["mid"]))
    summary = json.loads(run_study(cfg, echo=lambda _: None).read_text())
    rows = [r for r in summary["editors"] if r["editor"] == "steer"]
    assert {r["layer"] for r in rows} == {1} and {r["group"] for r in rows} >= {"all"}
    every = next(r for r in rows if r["group"] == "all")
    assert every["n"] == summary["facts"]["tiny-llama"] and 0 <= every["rel"] <= 1 and every["seconds"] > 0
