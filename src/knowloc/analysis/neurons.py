"""Knowledge-neuron selection from one query's attribution scores.

An attribution for one query is a float array ``scores[n_layers, n_neurons]``; a neuron is the
pair ``(layer, index)``. Three selection rules are offered:

* ``"relative"`` -- the adaptive threshold of Dai et al. (2022), "Knowledge Neurons in
  Pretrained Transformers" (ACL), as used by Chen et al. (ICLR 2025), "Knowledge Localization:
  Mission Not Accomplished? Enter Query Localization!": keep ``u`` when
  ``score(u) > t * max_u' score(u')``. Nothing is kept when the maximum is ``<= 0``.
  The comparison is evaluated on the normalised scale, ``score(u) / max > t``, which is the same
  inequality for ``max > 0`` and is bit-for-bit the rule used by
  :func:`knowloc.analysis.cas.cas_select` (see there).
* ``"absolute"`` -- keep ``u`` when ``score(u) > t``.
* ``"top_k"`` -- keep the ``int(t)`` largest scores (``t`` must be a whole number >= 0).

The comparison is strict (``>``) in both threshold modes. Results are sorted by score
descending; ties are broken by ``(layer, index)`` ascending so the output is deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from knowloc.analysis._arrays import (
    Neuron,
    check_count,
    check_finite,
    check_unit_interval,
    sorted_neurons,
    to_numpy_f64,
)
from knowloc.errors import KnowlocError

SelectMode = Literal["relative", "absolute", "top_k"]

__all__ = ["SelectMode", "select_neurons", "relative_mask"]


def relative_mask(values: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the relative rule ``values / max(values) > threshold``.

    Returns an all-False mask when ``max(values) <= 0`` (or ``values`` is empty). This is the one
    place the relative comparison is written, shared by :func:`select_neurons` and
    :func:`knowloc.analysis.cas.cas_select` so that both agree exactly.
    """
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    peak = float(values.max())
    if peak <= 0.0:
        return np.zeros(values.shape, dtype=bool)
    return (values / peak) > threshold


def _as_scores(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = to_numpy_f64(scores, "scores")
    if arr.ndim != 2:
        raise KnowlocError(f"scores must be 2-D [n_layers, n_neurons], got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise KnowlocError("scores contain nan or inf")
    return arr


def select_neurons(
    scores: torch.Tensor | np.ndarray,
    threshold: float = 0.2,
    mode: SelectMode = "relative",
) -> list[Neuron]:
    """Select knowledge neurons from one attribution map.

    Args:
        scores: attribution ``[n_layers, n_neurons]`` (torch tensor or numpy array).
        threshold: ``t`` in [0, 1] for ``"relative"``; any finite number for ``"absolute"``;
            a whole number ``k >= 0`` for ``"top_k"``.
        mode: ``"relative"`` (``score > t * max``, Dai et al. 2022), ``"absolute"``
            (``score > t``) or ``"top_k"`` (the ``k`` largest).

    Returns:
        ``[(layer, index), ...]`` sorted by score descending, ties by ``(layer, index)``.

    Raises:
        KnowlocError: scores not 2-D or not finite, bad threshold or unknown mode.
    """
    arr = _as_scores(scores)
    if mode == "relative":
        t = check_unit_interval(threshold, "threshold")
        mask = relative_mask(arr, t)
    elif mode == "absolute":
        t = check_finite(threshold, "threshold")
        mask = arr > t
    elif mode == "top_k":
        k = check_count(threshold, "threshold (top_k)", 0)
        return sorted_neurons(arr, np.ones(arr.shape, dtype=bool))[:k]
    else:
        raise KnowlocError(f"mode must be 'relative', 'absolute' or 'top_k', got {mode!r}")
    return sorted_neurons(arr, mask)
