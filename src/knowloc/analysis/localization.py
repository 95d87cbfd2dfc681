"""Pure maths of localization: ROME's token classes, layer profiles, and Hase et al.'s regression.

* Token classes (Meng et al. 2022, Fig. 1 / 2 averages): first, middle and last subject token, the first subsequent
  token, further tokens and the last token. A position can sit in two classes (a one-token subject is the first and
  the last subject token); the prompt's last token is only "last token", so "first subsequent" and "further" are
  the positions strictly between the subject and it.
* KN layer profile: the share of a KN set's attribution mass per layer, m_l = sum_{(l, i) in N} a_{l,i} /
  sum_{(l', i) in N} a_{l',i} (a: the neurons' attribution scores; negative scores count as 0).
* Hase et al. (NeurIPS 2023, "Does Localization Inform Editing?"), their regression: over (fact, layer) pairs, edit
  success y regressed on the edit layer alone (one indicator per layer: R^2_layer) and on the layer plus a
  localization signal s (R^2_layer+signal); delta R^2 = R^2_layer+signal - R^2_layer is what the signal adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

TOKEN_CLASSES = ("first subject", "middle subject", "last subject", "first subsequent", "further", "last")


def token_classes(n_tokens: int, first: int, last: int) -> dict[str, list[int]]:
    """The positions of each of ROME's token classes (module docstring) in a prompt of ``n_tokens`` tokens whose
    subject spans ``first..last`` (inclusive); classes without a position are left out.

    Example:
        >>> token_classes(8, 2, 4)["middle subject"], token_classes(8, 2, 4)["further"]
        ([3], [6])
    """
    if not 0 <= first <= last < n_tokens:
        raise ValueError(f"subject span {first}..{last} outside a prompt of {n_tokens} tokens")
    end = n_tokens - 1
    classes = {"first subject": [first], "middle subject": list(range(first + 1, last)), "last subject": [last],
               "first subsequent": [last + 1] if last + 1 < end else [],
               "further": list(range(last + 2, end)), "last": [end]}
    return {name: positions for name, positions in classes.items() if positions}


def class_profiles(grid: np.ndarray, first: int, last: int) -> dict[str, np.ndarray]:
    """The mean over each token class's positions of a (token x layer) map ``grid`` [n_tokens, n_layers]:
    class -> [n_layers]."""
    grid = np.asarray(grid, dtype=float)
    return {name: grid[positions].mean(axis=0) for name, positions in token_classes(len(grid), first, last).items()}


def layer_mass(scores: np.ndarray, neurons: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """The KN layer profile m [n_layers] of ``neurons`` under attribution ``scores`` [n_layers, n_neurons]
    (module docstring); None when the set is empty or its mass is 0."""
    scores = np.asarray(scores, dtype=float)
    mass = np.zeros(scores.shape[0])
    for layer, index in neurons:
        mass[layer] += max(float(scores[layer, index]), 0.0)
    total = mass.sum()
    return mass / total if total > 0 else None


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho of two layer profiles (nan when either is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def r_squared(y: np.ndarray, design: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` [n] on ``design`` [n, k] (which holds its own intercept columns)."""
    y = np.asarray(y, dtype=float)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    total = float(((y - y.mean()) ** 2).sum())
    return float("nan") if total == 0 else 1.0 - float((resid ** 2).sum()) / total


def layer_design(layers: Sequence[int], signal: Sequence[float] | None = None) -> np.ndarray:
    """One indicator column per distinct layer (Hase et al.'s layer-only model), plus the signal's column."""
    layers = np.asarray(layers)
    columns = [(layers == value).astype(float) for value in np.unique(layers)]
    if signal is not None:
        columns.append(np.asarray(signal, dtype=float))
    return np.stack(columns, axis=1)


def hase_r2(success: Sequence[float], layers: Sequence[int], signal: Sequence[float]) -> tuple[float, float]:
    """(R^2_layer, R^2_layer+signal) of edit success over (fact, layer) pairs (module docstring).

    Example:
        >>> hase_r2([0, 1, 0, 1], [3, 3, 6, 6], [0.1, 0.9, 0.2, 0.8])[1]
        1.0
    """
    success = np.asarray(success, dtype=float)
    return r_squared(success, layer_design(layers)), r_squared(success, layer_design(layers, signal))


def resampled_interval(n: int, stat: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0
                       ) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``stat(indices)`` over ``n`` units (facts) resampled with
    replacement; resamples whose statistic is undefined (nan, e.g. a constant profile) are left out. (nan, nan)
    with fewer than 2 units or no defined resample."""
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.array([stat(chosen) for chosen in rng.integers(0, n, size=(n_boot, n))], dtype=float)
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return float("nan"), float("nan")
    low, high = np.quantile(boots, [0.025, 0.975])
    return float(low), float(high)


def hase_delta_r2_ci(facts: Sequence[Sequence[tuple[int, float, float]]], n_boot: int = 1000, seed: int = 0
                     ) -> tuple[float, float, float, float, float]:
    """(R^2_layer, R^2_layer+signal, delta R^2, its 95% low, high) over facts, each a list of (layer, signal,
    success) rows; the interval is the percentile bootstrap over facts (a fact's rows resampled together)."""
    def fit(chosen: Sequence[int]) -> tuple[float, float]:
        rows = [row for i in chosen for row in facts[i]]
        layers, signal, success = (np.array(x, dtype=float) for x in zip(*rows)) if rows else ([], [], [])
        return hase_r2(success, layers, signal) if rows else (float("nan"), float("nan"))

    def delta(chosen: Sequence[int]) -> float:
        a, b = fit(chosen)
        return b - a

    r2_layer, r2_both = fit(range(len(facts)))
    low, high = resampled_interval(len(facts), delta, n_boot, seed)
    return r2_layer, r2_both, r2_both - r2_layer, low, high
