"""The model's weights before an edit, and the check that an edit left them exactly as they were."""

import torch


def snapshot(lm) -> dict:
    """A copy of every tensor of the model's state."""
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def assert_restored(lm, before: dict) -> None:
    """Every tensor of the model's state equals ``before``'s, bit for bit."""
    after = lm.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
