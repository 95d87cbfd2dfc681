"""Small private helpers shared by the analysis modules (array conversion, validation)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from knowloc.errors import KnowlocError


def to_numpy_f64(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (torch tensor, numpy array or nested sequence) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"{name} must be numeric, got {type(x).__name__}") from exc
    return arr


def check_unit_interval(value: float, name: str) -> float:
    """Return ``value`` as a float, raising unless it is a finite number in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"{name} must be a number in [0, 1], got {value!r}") from exc
    if not (0.0 <= v <= 1.0):  # also rejects nan
        raise KnowlocError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_finite(value: float, name: str) -> float:
    """Return ``value`` as a float, raising unless it is finite."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"{name} must be a finite number, got {value!r}") from exc
    if not math.isfinite(v):
        raise KnowlocError(f"{name} must be a finite number, got {value!r}")
    return v


def check_count(value: Any, name: str, minimum: int) -> int:
    """Return ``value`` as an int, raising unless it is an integer >= ``minimum``."""
    if isinstance(value, bool):
        raise KnowlocError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"{name} must be an integer >= {minimum}, got {value!r}") from exc
    if not math.isfinite(f) or f != int(f) or int(f) < minimum:
        raise KnowlocError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(f)

