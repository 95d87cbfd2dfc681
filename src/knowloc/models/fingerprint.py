"""A model's weights fingerprint: the SHA-256 of every parameter and buffer (name, dtype, shape, bytes).

Used as the model part of content-addressed keys (the attribution cache, :mod:`knowloc.attribution.disk_cache`):
two models with the same fingerprint compute the same values, and any change of any weight gives another one.
Hashing SmolLM2-135M's 540 MB of float32 weights takes about a second, so the digest of a loaded model is
remembered in its ``lm.caches`` (it goes with the model) together with each tensor's identity and in-place version
counter (``Tensor._version``, bumped by every in-place write, e.g. a weight edit and its restoration): it is
recomputed only when a tensor was replaced or written. A bare module's digest is computed at each call.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from knowloc.models.lm import LanguageModel

__all__ = ["weights_hash"]


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def _state(tensors: list[tuple[str, torch.Tensor]]) -> tuple:
    return tuple((name, id(t), t.data_ptr(), t._version) for name, t in tensors)


@torch.no_grad()
def weights_hash(model: LanguageModel | nn.Module) -> str:
    """The hex SHA-256 of a model's parameters and buffers, in registration order.

    Args:
        model: a loaded model (``lm``: its module's digest, remembered in ``lm.caches`` until a weight changes)
            or any ``nn.Module`` (computed at each call).

    Returns:
        64 hex digits; equal for bit-identical weights (of the same names, dtypes and shapes), different after
        any change.

    Example:
        >>> weights_hash(lm)[:12]
        '3f1c0a9be2d4'
    """
    lm = model if isinstance(model, LanguageModel) else None
    module = model.model if lm is not None else model
    tensors = _tensors(module)
    state = _state(tensors)
    remembered = lm.caches.get(__name__) if lm is not None else None  # (state, digest) of the last call
    if remembered is not None and remembered[0] == state:
        return remembered[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        data = tensor.detach().contiguous().reshape(-1)
        if data.numel():
            digest.update(data.view(torch.uint8).cpu().numpy().data)
    value = digest.hexdigest()
    if lm is not None:
        lm.caches[__name__] = (state, value)
    return value
