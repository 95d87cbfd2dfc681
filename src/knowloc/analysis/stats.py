"""Resampling statistics used to compare groups of facts.

Chen et al. (ICLR 2025), "Knowledge Localization: Mission Not Accomplished? Enter Query
Localization!", compare consistent (``K_C``) and inconsistent (``K_I``) knowledge and real vs.
null/random statistics; these helpers give confidence intervals and p-values for such
comparisons. All randomness goes through ``numpy.random.default_rng(seed)``, so results are
reproducible from the seed.

* Percentile bootstrap (Efron & Tibshirani 1993): resample the ``n`` facts (first axis) with
  replacement ``B`` times, compute the statistic ``T*_b`` each time, and report
  ``(T(x), q_{alpha/2}(T*), q_{1-alpha/2}(T*))``.
* Paired bootstrap: the percentile bootstrap of the mean of ``d_i = a_i - b_i``.
* Unpaired bootstrap: ``mean(a) - mean(b)`` for two independent groups (e.g. K_C vs K_I facts), each resampled
  within itself (``scipy.stats.bootstrap``, percentile method).
* Small samples: an interval, a test or a "beyond the interval" star needs at least :data:`MIN_N` facts
  (per group); below that knowloc reports the estimate without an interval and says why. :class:`Estimate`
  ``(n, value, low, high)`` applies the rule itself: every interval of a study is one, built by
  :meth:`Estimate.bootstrap`, :meth:`Estimate.paired` or :meth:`Estimate.unpaired`.
* Welch's t-test (Welch 1947): two-sided p-value from ``scipy.stats.ttest_ind(equal_var=False)``.
* Permutation test for a difference of means: ``D = mean(real) - mean(null)``; the pooled values
  are relabelled at random ``M`` times and ``p = (1 + #{D*_m ⪰ D}) / (M + 1)`` (Phipson & Smyth
  2010 "+1" correction), where ``⪰`` is ``>=`` (greater), ``<=`` (less) or ``|D*| >= |D|``
  (two-sided), up to a relative floating-point tolerance of ``100 · eps · |D|``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats as _scipy_stats

from knowloc.analysis._arrays import check_count, to_numpy_f64
from knowloc.errors import KnowlocError

Alternative = Literal["greater", "less", "two-sided"]

__all__ = ["MIN_N", "Alternative", "Estimate", "bootstrap_ci", "paired_bootstrap_diff", "permutation_test_diff",
           "unpaired_bootstrap_diff", "welch_t"]

MIN_N = 5  # facts (per group) an interval, a test or a star needs


def _as_samples(values: Any, name: str) -> np.ndarray:
    arr = to_numpy_f64(values, name)
    if arr.ndim == 0:
        raise KnowlocError(f"{name} must have at least one axis (one entry per fact)")
    return arr


def _as_1d(values: Any, name: str) -> np.ndarray:
    arr = _as_samples(values, name)
    if arr.ndim != 1:
        raise KnowlocError(f"{name} must be 1-D (one value per fact), got shape {tuple(arr.shape)}")
    return arr


def _scalar_or_array(x: Any) -> float | np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"alpha must be in (0, 1), got {alpha!r}") from exc
    if not (0.0 < a < 1.0):
        raise KnowlocError(f"alpha must be in (0, 1), got {alpha!r}")
    return a


def bootstrap_ci(
    values: np.ndarray | torch.Tensor | Any,
    stat: Callable[[np.ndarray], Any] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[Any, Any, Any]:
    """Percentile bootstrap ``(estimate, low, high)`` of ``stat`` over the first axis (facts).

    ``estimate = stat(values)``; ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2``
    quantiles (numpy's default linear interpolation) of ``stat`` over ``n_boot`` resamples of the
    rows drawn with replacement by ``np.random.default_rng(seed)``. Scalars come back as floats,
    vector-valued statistics as arrays. ``n = 0`` gives ``(nan, nan, nan)``; ``n = 1`` gives
    ``(v, v, v)`` with ``v = stat(values)``.
    """
    arr = _as_samples(values, "values")
    n_boot = check_count(n_boot, "n_boot", 1)
    a = _check_alpha(alpha)
    n = arr.shape[0]
    if n == 0:
        nan = float("nan")
        return nan, nan, nan
    estimate = _scalar_or_array(stat(arr))
    if n == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.stack([np.asarray(stat(arr[row]), dtype=np.float64) for row in idx])
    low, high = np.quantile(boots, [a / 2.0, 1.0 - a / 2.0], axis=0)
    return estimate, _scalar_or_array(low), _scalar_or_array(high)


def paired_bootstrap_diff(
    a: np.ndarray | torch.Tensor | Any,
    b: np.ndarray | torch.Tensor | Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(mean(a - b), low, high)``: percentile bootstrap of the mean paired difference.

    ``a[i]`` and ``b[i]`` belong to the same fact; facts are resampled jointly. Empty input gives
    ``(nan, nan, nan)``.
    """
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise KnowlocError(f"paired values need equal lengths, got {x.shape[0]} and {y.shape[0]}")
    est, low, high = bootstrap_ci(x - y, np.mean, n_boot=n_boot, alpha=alpha, seed=seed)
    return float(est), float(low), float(high)


def unpaired_bootstrap_diff(
    a: np.ndarray | torch.Tensor | Any,
    b: np.ndarray | torch.Tensor | Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: percentile bootstrap with each group resampled within itself
    (``scipy.stats.bootstrap``); nan interval when a group has fewer than 2 values, nan everything when one
    is empty."""
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    n_boot = check_count(n_boot, "n_boot", 1)
    level = 1.0 - _check_alpha(alpha)
    if x.size == 0 or y.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, float("nan"), float("nan")
    res = _scipy_stats.bootstrap((x, y), lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
                                 n_resamples=n_boot, confidence_level=level, method="percentile",
                                 random_state=np.random.default_rng(seed), vectorized=True)
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def welch_t(a: np.ndarray | torch.Tensor | Any, b: np.ndarray | torch.Tensor | Any) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test of ``mean(a) == mean(b)``.

    Uses ``scipy.stats.ttest_ind(a, b, equal_var=False)``. Returns nan when either group has
    fewer than 2 values (and whatever scipy returns, possibly nan, for zero-variance groups). scipy's warning
    about nearly identical values (a precision loss in the variance) is not shown: a study computes thousands of
    these (a robustness grid printed it twenty times), and the p-value of such groups is what scipy returns.
    """
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.size < 2 or y.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return float(_scipy_stats.ttest_ind(x, y, equal_var=False).pvalue)


def permutation_test_diff(
    real: np.ndarray | torch.Tensor | Any,
    null: np.ndarray | torch.Tensor | Any,
    n_perm: int = 2000,
    seed: int = 0,
    alternative: Alternative = "greater",
) -> tuple[float, float]:
    """``(mean(real) - mean(null), p)`` from a label-permutation test with the +1 correction.

    ``p = (1 + #{m : D*_m ⪰ D}) / (n_perm + 1)``; see the module docstring for ``⪰``.
    Both groups need at least one value.
    """
    x = _as_1d(real, "real")
    y = _as_1d(null, "null")
    if x.size == 0 or y.size == 0:
        raise KnowlocError("permutation_test_diff needs at least one value in each group")
    if alternative not in ("greater", "less", "two-sided"):
        raise KnowlocError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    n_perm = check_count(n_perm, "n_perm", 1)
    observed = float(x.mean() - y.mean())
    pooled = np.concatenate([x, y])
    total, nx = pooled.size, x.size
    rng = np.random.default_rng(seed)
    tol = abs(observed) * 100.0 * np.finfo(np.float64).eps
    hits = 0
    chunk = max(1, 1_000_000 // total)
    done = 0
    while done < n_perm:
        rows = min(chunk, n_perm - done)
        perm = rng.permuted(np.broadcast_to(pooled, (rows, total)), axis=1)
        diffs = perm[:, :nx].mean(axis=1) - perm[:, nx:].mean(axis=1)
        if alternative == "greater":
            hits += int(np.count_nonzero(diffs >= observed - tol))
        elif alternative == "less":
            hits += int(np.count_nonzero(diffs <= observed + tol))
        else:
            hits += int(np.count_nonzero(np.abs(diffs) >= abs(observed) - tol))
        done += rows
    return observed, (1.0 + hits) / (n_perm + 1.0)


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class Estimate:
    """A statistic over ``n`` facts with its 95% interval ``[low, high]``; the one type of every interval.

    The small-sample rule is applied here, once: with ``n < MIN_N`` the interval is withheld (``low`` and
    ``high`` are nan whatever was passed), so no caller can show or test an interval it should not.

    Args:
        n: the number of independent units (facts; for a two-group contrast the smaller group).
        value: the estimate (nan when there is nothing to estimate).
        low, high: the interval's bounds (nan: none).

    Example:
        >>> e = Estimate.bootstrap([0.1, 0.3, 0.2, 0.4, 0.5, 0.3], n_boot=200)
        >>> e.n, round(e.value, 3), e.excludes(0.0)
        (6, 0.3, True)
        >>> Estimate(3, 0.5, 0.1, 0.9).withheld, Estimate(3, 0.5, 0.1, 0.9).low
        (True, nan)
    """

    n: int
    value: float
    low: float = float("nan")
    high: float = float("nan")

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "value", _nan_if_none(self.value))
        withheld = self.n < MIN_N
        object.__setattr__(self, "low", float("nan") if withheld else _nan_if_none(self.low))
        object.__setattr__(self, "high", float("nan") if withheld else _nan_if_none(self.high))

    @property
    def withheld(self) -> bool:
        """True when ``n < MIN_N``: the estimate stands alone, without an interval."""
        return self.n < MIN_N

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def above(self, x: float) -> bool:
        """The interval lies entirely above ``x`` (False without an interval)."""
        return self.has_interval and self.low > x

    def below(self, x: float) -> bool:
        """The interval lies entirely below ``x`` (False without an interval)."""
        return self.has_interval and self.high < x

    def excludes(self, x: float = 0.0) -> bool:
        """The interval exists and does not contain ``x`` (the tables' "beyond the interval" star)."""
        return self.above(x) or self.below(x)

    def fields(self, key: str, low: str | None = None, high: str | None = None) -> dict[str, float]:
        """``{key: value, low: low, high: high}`` for a summary row (bounds default to ``key_ci_low`` /
        ``key_ci_high``)."""
        return {key: self.value, low or f"{key}_ci_low": self.low, high or f"{key}_ci_high": self.high}

    def contrast(self, key: str = "diff") -> dict:
        """A contrast row's fields: ``n``, ``key``, ``ci_low``, ``ci_high`` and ``beyond_ci`` (excludes 0)."""
        return {"n": self.n, **self.fields(key, "ci_low", "ci_high"), "beyond_ci": self.excludes(0.0)}

    @classmethod
    def from_row(cls, row: dict, key: str, low: str = "ci_low", high: str = "ci_high", n: str | int = "n"
                 ) -> "Estimate":
        """The estimate a summary row holds (JSON null read as nan); ``n`` names the row's count or is one."""
        count = n if isinstance(n, int) else int(row.get(n) or 0)
        return cls(count, row.get(key), row.get(low), row.get(high))

    @classmethod
    def bootstrap(cls, values: Any, stat: Callable[[np.ndarray], Any] = np.mean, n_boot: int = 1000,
                  seed: int = 0, alpha: float = 0.05) -> "Estimate":
        """``stat`` over the values (one per fact) with a percentile bootstrap interval (:func:`bootstrap_ci`)."""
        arr = _as_1d(values, "values")
        est, low, high = bootstrap_ci(arr, stat=stat, n_boot=n_boot, alpha=alpha, seed=seed)
        return cls(arr.size, float(est), float(low), float(high))

    @classmethod
    def paired(cls, a: Any, b: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> "Estimate":
        """``mean(a - b)`` over facts with a paired bootstrap interval (:func:`paired_bootstrap_diff`)."""
        x = _as_1d(a, "a")
        if x.size == 0:
            return cls(0, float("nan"))
        return cls(x.size, *paired_bootstrap_diff(x, b, n_boot=n_boot, seed=seed, alpha=alpha))

    @classmethod
    def unpaired(cls, a: Any, b: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> "Estimate":
        """``mean(a) - mean(b)`` of two independent groups (:func:`unpaired_bootstrap_diff`); ``n`` is the
        smaller group's size."""
        x, y = _as_1d(a, "a"), _as_1d(b, "b")
        return cls(min(x.size, y.size), *unpaired_bootstrap_diff(x, y, n_boot=n_boot, seed=seed, alpha=alpha))
