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

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from knowloc.analysis._arrays import check_count, check_finite, check_unit_interval, to_numpy_f64
from knowloc.errors import KnowlocError

SelectMode = Literal["relative", "absolute", "top_k"]

__all__ = ["KnSet", "Neuron", "SelectMode", "kn_list", "kn_set", "relative_mask", "select_neurons",
           "sorted_neurons"]


class Neuron(NamedTuple):
    """One MLP neuron of a model: ``(layer, index)``, e.g. ``Neuron(29, 1197)``.

    A tuple: it equals, hashes and sorts as the plain pair ``(layer, index)``, is written to JSON as
    ``[layer, index]`` and prints as ``(layer, index)``, so plain pairs and neurons mix freely (a plain pair is
    found in a set of neurons and the other way round).

    Example:
        >>> Neuron(2, 7) == (2, 7), Neuron(*[2, 7]).layer, repr(Neuron(2, 7))
        (True, 2, '(2, 7)')
    """

    layer: int
    index: int

    __repr__ = tuple.__repr__  # as the plain pair: text built from neurons reads as before


KnSet = frozenset[Neuron]
"""A knowledge-neuron set: the neurons of one query's KN list, without order (consistency scores compare these)."""


def kn_list(pairs: Iterable[Sequence[int]]) -> list[Neuron]:
    """A KN list (order kept) from ``(layer, index)`` pairs, e.g. a stored JSON list ``[[l, i], ...]``.

    Example:
        >>> kn_list([[0, 3], [1, 2]])
        [(0, 3), (1, 2)]
    """
    return [Neuron(*pair) for pair in pairs]


def kn_set(pairs: Iterable[Sequence[int]]) -> KnSet:
    """A :data:`KnSet` from ``(layer, index)`` pairs, e.g. a stored JSON list ``[[l, i], ...]``.

    Example:
        >>> kn_set([[0, 3], [0, 3], [1, 2]]) == {(0, 3), (1, 2)}
        True
    """
    return frozenset(Neuron(*pair) for pair in pairs)


def sorted_neurons(values: np.ndarray, mask: np.ndarray, limit: int | None = None) -> list[Neuron]:
    """Neurons ``(layer, idx)`` where ``mask`` holds, by value descending, ties by (layer, idx); the first
    ``limit`` of them when given."""
    layers, idxs = np.nonzero(mask)
    vals = values[layers, idxs]
    # np.lexsort sorts by the last key first: value descending, then layer, then index.
    order = np.lexsort((idxs, layers, -vals))[:limit]
    return [Neuron(int(layers[k]), int(idxs[k])) for k in order]


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
        return sorted_neurons(arr, np.ones(arr.shape, dtype=bool), limit=k)
    else:
        raise KnowlocError(f"mode must be 'relative', 'absolute' or 'top_k', got {mode!r}")
    return sorted_neurons(arr, mask)
