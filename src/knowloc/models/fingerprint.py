"""A model's weights fingerprint: the SHA-256 of every parameter and buffer (name, dtype, shape, bytes).

Used as the model part of content-addressed keys (the attribution cache, :mod:`knowloc.attribution.disk_cache`):
two models with the same fingerprint compute the same values, and any change of any weight gives another one.
Hashing SmolLM2-135M's 540 MB of float32 weights takes about a second, so the digest is remembered per module
together with each tensor's identity and in-place version counter (``Tensor._version``, bumped by every in-place
write, e.g. a weight edit and its restoration): it is recomputed only when a tensor was replaced or written.
"""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn

__all__ = ["weights_hash"]

_REMEMBERED: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def _state(tensors: list[tuple[str, torch.Tensor]]) -> tuple:
    return tuple((name, id(t), t.data_ptr(), t._version) for name, t in tensors)


@torch.no_grad()
def weights_hash(module: nn.Module) -> str:
    """The hex SHA-256 of a module's parameters and buffers, in registration order.

    Args:
        module: any ``nn.Module`` (e.g. ``lm.model``).

    Returns:
        64 hex digits; equal for bit-identical weights (of the same names, dtypes and shapes), different after
        any change.

    Example:
        >>> weights_hash(lm.model)[:12]
        '3f1c0a9be2d4'
    """
    tensors = _tensors(module)
    state = _state(tensors)
    remembered = _REMEMBERED.get(module)
    if remembered is not None and remembered[0] == state:
        return remembered[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        data = tensor.detach().contiguous().reshape(-1)
        if data.numel():
            digest.update(data.view(torch.uint8).cpu().numpy().data)
    value = digest.hexdigest()
    _REMEMBERED[module] = (state, value)
    return value
