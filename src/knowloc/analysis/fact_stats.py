"""Statistics over facts of per-trial rows: the estimates and intervals every study summary reports.

A study stores each fact's trials as rows (dicts of metric values, e.g. ``{"operation": "erase", "rel": 1.0,
...}``); ``fact_trials`` is one list of rows per fact. Facts, not trials, are the independent units:

* a fact's value of a metric is the mean over its trials that match ``match`` (``row[k] == v`` for every
  ``k=v``), skipped trials and missing / nan values left out (:func:`fact_means`; nan when it has none);
* an estimate over facts is a statistic (default: the mean) of the facts' values with a percentile bootstrap
  interval that resamples facts (:meth:`knowloc.analysis.stats.Estimate.bootstrap`; none below MIN_N facts);
* a paired contrast is the mean over facts of ``value(first) - value(second)``, over the facts with both
  (:meth:`~knowloc.analysis.stats.Estimate.paired`).

Example:
    >>> trials = [[{"rel": 1.0}, {"rel": 0.0}], [{"rel": 1.0}], [{"rel": None}]]
    >>> fact_means(trials, "rel").tolist()
    [0.5, 1.0, nan]
    >>> fact_level_ci(trials, "rel", n_boot=100, seed=0).value
    0.75
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from knowloc.analysis.stats import Estimate

__all__ = ["dlogppl_stats", "fact_level_ci", "fact_means", "metric_stats", "paired_contrast"]

FactTrials = list[list[dict]]  # one list of trial rows per fact


def fact_means(fact_trials: FactTrials, metric: str, **match: object) -> np.ndarray:
    """Each fact's mean of `metric` over its trials matching `match` (nan where it has none, e.g. a metric a
    store predates), aligned with `fact_trials` so that two metrics or matches of the same facts can be paired.

    Returns:
        float array ``[n_facts]``.
    """
    out = []
    for rows in fact_trials:
        values = [r.get(metric, np.nan) for r in rows if all(r.get(k) == v for k, v in match.items())
                  and not r.get("skipped")]
        values = [v for v in values if v is not None and not np.isnan(v)]
        out.append(float(np.mean(values)) if values else np.nan)
    return np.array(out, dtype=float)


def fact_level_ci(fact_trials: FactTrials, metric: str, n_boot: int, seed: int,
                  stat: Callable[[np.ndarray], Any] | None = None, **match: object) -> Estimate:
    """The :class:`Estimate` of a metric over facts: each fact's trials matching `match` are averaged (nan left
    out, :func:`fact_means`), then `stat` (default: the mean) over the facts that have a value, with a bootstrap
    interval that resamples facts (facts, not trials, are the independent units; none below MIN_N facts)."""
    per_fact = fact_means(fact_trials, metric, **match)
    return Estimate.bootstrap(per_fact[~np.isnan(per_fact)], stat=np.mean if stat is None else stat,
                              n_boot=n_boot, seed=seed)


def paired_contrast(fact_trials: FactTrials, metric: str, first: dict, second: dict, n_boot: int,
                    seed: int) -> Estimate:
    """The :class:`Estimate` of the mean over facts of (metric under `first` - under `second`), paired within
    facts (facts with both), with a paired bootstrap interval (none below MIN_N facts)."""
    a, b = fact_means(fact_trials, metric, **first), fact_means(fact_trials, metric, **second)
    both = ~np.isnan(a) & ~np.isnan(b)
    return Estimate.paired(a[both], b[both], n_boot=n_boot, seed=seed)


def dlogppl_stats(fact_trials: FactTrials, n_boot: int, seed: int, **match: object) -> dict:
    """dlogppl_mean / dlogppl_median with bootstrap CIs over facts (each fact: the mean over its matching
    trials' dlogPPL = log(PPL_after / PPL_before))."""
    out = {}
    for name, stat in (("mean", np.mean), ("median", np.median)):
        out.update(fact_level_ci(fact_trials, "dlogppl", n_boot, seed, stat=stat, **match)
                   .fields(f"dlogppl_{name}"))
    return out


def metric_stats(fact_trials: FactTrials, metrics: tuple[str, ...], n_from: str, n_boot: int, seed: int,
                 **match: object) -> dict:
    """A summary row's metrics over facts: each metric's estimate with its CI (:func:`fact_level_ci`), ``n`` =
    the facts with a value of ``n_from``, and the dlogPPL mean / median (:func:`dlogppl_stats`)."""
    row: dict = {}
    for metric in metrics:
        estimate = fact_level_ci(fact_trials, metric, n_boot, seed, **match)
        row.update(estimate.fields(metric))
        if metric == n_from:
            row["n"] = estimate.n
    return {**row, **dlogppl_stats(fact_trials, n_boot, seed, **match)}
