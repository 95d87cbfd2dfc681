"""Consistency of knowledge-neuron sets across the neighbour queries of one fact.

For a fact with neighbour queries (paraphrases) ``q_1..q_n`` and their knowledge-neuron sets
``N_1..N_n`` (Python sets of ``(layer, index)``), Chen et al. (ICLR 2025), "Knowledge
Localization: Mission Not Accomplished? Enter Query Localization!", measure how much the sets
agree:

* ``CS1 = |N_1 ∩ ... ∩ N_n| / |N_1 ∪ ... ∪ N_n|`` (strict; 0 when the union is empty);
* ``CS2 = 2 / (n (n-1)) * sum_{i<j} J(N_i, N_j)`` with ``J(A, B) = |A ∩ B| / |A ∪ B|``
  (mean pairwise Jaccard; ``J(∅, ∅) = 0``; needs ``n >= 2``);
* ``CS_p = |{u ∈ ∪N_i : c(u) >= p·n}| / |∪N_i|`` where ``c(u)`` is the number of sets that
  contain ``u`` (share of union neurons present in at least a fraction ``p`` of the sets;
  0 when the union is empty). ``CS_1 = CS1``; ``CS_0 = 1`` for a non-empty union.

Facts are then split by Otsu's (1979) threshold over the pooled consistency values into
consistent (``K_C``: ``cs >= tau``) and inconsistent (``K_I``) knowledge.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations

import numpy as np

from knowloc.analysis._arrays import check_count, check_finite, check_unit_interval, to_numpy_f64
from knowloc.errors import KnowlocError

K_C, K_I = "K_C", "K_I"  # consistent / inconsistent knowledge: the group names everywhere in knowloc
GROUPS = (K_C, K_I)

__all__ = [
    "GROUPS",
    "K_C",
    "K_I",
    "cs_strict",
    "cs_pairwise",
    "cs_share",
    "consistency_scores",
    "jaccard",
    "otsu_threshold",
    "split_groups",
]

# p·n is compared with a small tolerance so that e.g. p=0.7, n=10 requires 7 sets, not 8
# (0.7 * 10 == 7.000000000000001 in binary floating point).
_SHARE_EPS = 1e-9


def _as_sets(sets: Sequence[Iterable[Hashable]], minimum: int) -> list[frozenset]:
    if isinstance(sets, (set, frozenset)):
        raise KnowlocError("sets must be a sequence of neuron sets, not a single set")
    try:
        out = [frozenset(s) for s in sets]
    except TypeError as exc:
        raise KnowlocError("sets must be a sequence of iterables of (layer, index) pairs") from exc
    if len(out) < minimum:
        raise KnowlocError(f"need at least {minimum} neuron set(s), got {len(out)}")
    return out


def jaccard(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """Jaccard index ``|A ∩ B| / |A ∪ B|``; defined as 0 when both sets are empty."""
    fa, fb = frozenset(a), frozenset(b)
    union = len(fa | fb)
    return len(fa & fb) / union if union else 0.0


def cs_strict(sets: Sequence[Iterable[Hashable]]) -> float:
    """CS1 = ``|∩_i N_i| / |∪_i N_i|`` (0 if the union is empty). Needs ``n >= 1`` sets."""
    fs = _as_sets(sets, 1)
    union = frozenset().union(*fs)
    if not union:
        return 0.0
    inter = fs[0].intersection(*fs[1:])
    return len(inter) / len(union)


def cs_pairwise(sets: Sequence[Iterable[Hashable]]) -> float:
    """CS2 = mean over unordered pairs ``i < j`` of ``J(N_i, N_j)``. Needs ``n >= 2`` sets."""
    fs = _as_sets(sets, 2)
    values = [jaccard(a, b) for a, b in combinations(fs, 2)]
    return float(sum(values) / len(values))


def cs_share(sets: Sequence[Iterable[Hashable]], p: float = 0.5) -> float:
    """CS_p = share of union neurons contained in at least ``p·n`` of the ``n`` sets.

    A neuron ``u`` counts when ``c(u) >= p·n`` (``c(u)`` = number of sets containing ``u``);
    the comparison tolerates floating-point noise of 1e-9 in ``p·n``. Returns 0 when the union
    is empty. ``p`` must lie in [0, 1].
    """
    pv = check_unit_interval(p, "p")
    fs = _as_sets(sets, 1)
    counts = Counter(u for s in fs for u in s)
    if not counts:
        return 0.0
    need = max(0, math.ceil(pv * len(fs) - _SHARE_EPS))
    kept = sum(1 for c in counts.values() if c >= need)
    return kept / len(counts)


def consistency_scores(sets: Sequence[Iterable[Hashable]], p: float = 0.5) -> dict[str, float]:
    """All three scores: ``{"cs1": CS1, "cs2": CS2, "csp": CS_p}``. Needs ``n >= 2`` sets."""
    fs = _as_sets(sets, 2)
    return {"cs1": cs_strict(fs), "cs2": cs_pairwise(fs), "csp": cs_share(fs, p)}


def otsu_threshold(values: Sequence[float] | np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979) over values in [0, 1], e.g. pooled per-fact CS values.

    The values are histogrammed into ``bins`` equal-width bins on [0, 1] with counts ``c_k`` and
    centres ``m_k``. For each split after bin ``k`` (class 0 = bins ``0..k``, class 1 = the rest)

        w0 = sum_{j<=k} c_j / N,  mu0, mu1 = class means of the centres,
        sigma_B^2(k) = w0 · (1 - w0) · (mu0 - mu1)^2,

    and the threshold is the left edge of bin ``k* + 1`` for ``k* = argmax sigma_B^2``. When the
    maximum is attained on a run of consecutive splits (empty bins between two modes), the
    midpoint of the first such run's edges is returned; the partition is the same for any
    threshold in that run. A value equal to the threshold belongs to the upper class
    (see :func:`split_groups`).

    Degenerate input (all values in one bin, e.g. all equal) has no split with two non-empty
    classes: the minimum value is returned, so :func:`split_groups` puts every value in ``K_C``.

    Raises:
        KnowlocError: empty input, values outside [0, 1] or not finite, ``bins < 2``.
    """
    nbins = check_count(bins, "bins", 2)
    arr = to_numpy_f64(values, "values").ravel()
    if arr.size == 0:
        raise KnowlocError("otsu_threshold needs at least one value")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise KnowlocError("otsu_threshold values must be finite and in [0, 1]")
    counts, edges = np.histogram(arr, bins=nbins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2.0
    total = int(counts.sum())
    prob = counts / total
    n0 = np.cumsum(counts)[:-1]  # split after bin k, k = 0..nbins-2
    w0 = n0 / total
    w1 = (total - n0) / total
    m0 = np.cumsum(prob * centres)[:-1]
    mu_t = float((prob * centres).sum())
    valid = (n0 > 0) & (n0 < total)
    if not valid.any():
        return float(arr.min())
    between = np.zeros_like(w0)
    # sigma_B^2 = (mu_T w0 - m0)^2 / (w0 w1), the usual cumulative form of w0 w1 (mu0 - mu1)^2.
    between[valid] = (mu_t * w0[valid] - m0[valid]) ** 2 / (w0[valid] * w1[valid])
    between[~valid] = -np.inf
    best = float(between.max())
    on_max = between >= best - 1e-12 * abs(best)
    first = int(np.argmax(on_max))
    last = first
    # extend only across empty bins: those splits give the same partition (ties elsewhere keep the first)
    while last + 1 < on_max.size and on_max[last + 1] and counts[last + 1] == 0:
        last += 1
    return float((edges[first + 1] + edges[last + 1]) / 2.0)


def split_groups(cs_values: Sequence[float] | np.ndarray, tau: float) -> np.ndarray:
    """Boolean mask, True for consistent knowledge ``K_C`` (``cs >= tau``), False for ``K_I``."""
    t = check_finite(tau, "tau")
    arr = to_numpy_f64(cs_values, "cs_values")
    if np.isnan(arr).any():
        raise KnowlocError("cs_values contain nan")
    return arr >= t
