"""Consistency-Aware Score (CAS) for query localization.

Chen et al. (ICLR 2025), "Knowledge Localization: Mission Not Accomplished? Enter Query
Localization!", select knowledge neurons for a fact from the attributions ``A_1..A_n`` of its
``n`` neighbour queries, rewarding neurons that are strongly AND consistently attributed:

    s_i(u)  = A_i(u) / max_u' A_i(u')            (per-query max normalisation; s_i = 0 if max <= 0)
    mu(u)   = (1/n) sum_i s_i(u)
    sigma(u)= sqrt((1/n) sum_i (s_i(u) - mu(u))^2)   (population std, ddof = 0)
    CAS(u)  = beta1 * mu(u) - beta2 * sigma(u)       (defaults beta1 = beta2 = 1)

Our choices (not fixed by the paper's text): the population std (ddof = 0, so ``n = 1`` is
allowed and gives sigma = 0), per-query normalisation by the maximum, computation in float64, and
``mu`` computed as ``s_1 + mean_i(s_i - s_1)`` (same value, but exactly ``s_1`` with exactly
``sigma = 0`` when all queries agree).

Selection keeps ``u`` when ``CAS(u) > t * max_u' CAS(u')`` -- the same strict comparison, written
by the same helper (:func:`knowloc.analysis.neurons.relative_mask`), as the single-query relative
rule of :func:`knowloc.analysis.neurons.select_neurons`. Hence, with identical attributions and
the default betas, ``cas_select(stack, t)`` equals ``select_neurons(A_1, t, "relative")``
exactly. Nothing is kept when ``max CAS <= 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from knowloc.analysis._arrays import check_count, check_finite, check_unit_interval
from knowloc.analysis.neurons import Neuron, relative_mask, sorted_neurons
from knowloc.errors import KnowlocError
from knowloc.settings import chosen, setting

__all__ = ["cas_components", "cas_scores", "cas_select"]

Stack = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


def _as_stack(stack: Stack) -> torch.Tensor:
    if isinstance(stack, (list, tuple)):
        if not stack:
            raise KnowlocError("cas needs at least one query attribution")
        parts = [p if isinstance(p, torch.Tensor) else torch.as_tensor(np.asarray(p, dtype=np.float64))  # cpu maths
                 for p in stack]
        try:
            stack = torch.stack([p.detach().to("cpu", torch.float64) for p in parts])
        except RuntimeError as exc:
            raise KnowlocError("query attributions have different shapes") from exc
    elif isinstance(stack, np.ndarray):
        stack = torch.from_numpy(np.asarray(stack, dtype=np.float64))
    elif not isinstance(stack, torch.Tensor):
        raise KnowlocError(f"stack must be a tensor, array or sequence of 2-D maps, got {type(stack).__name__}")
    t = stack.detach().to("cpu", torch.float64)
    if t.ndim != 3:
        raise KnowlocError(f"stack must be 3-D [n_queries, n_layers, n_neurons], got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise KnowlocError("cas needs at least one query attribution")
    if not bool(torch.isfinite(t).all()):
        raise KnowlocError("attributions contain nan or inf")
    return t


def _check_betas(beta1: float, beta2: float) -> tuple[float, float]:
    b1 = check_finite(beta1, "beta1")
    b2 = check_finite(beta2, "beta2")
    if b1 < 0 or b2 < 0:
        raise KnowlocError(f"beta1 and beta2 must be >= 0, got {beta1!r} and {beta2!r}")
    return b1, b2


def cas_components(stack: Stack) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)``, each float64 ``[L, N]``: mean and population std of the normalised ``s_i``."""
    a = _as_stack(stack)
    n = a.shape[0]
    if a[0].numel() == 0:
        empty = torch.zeros(a.shape[1:], dtype=torch.float64)  # on the CPU, as every result here
        return empty, empty.clone()
    peaks = a.reshape(n, -1).amax(dim=1)
    s = torch.zeros_like(a)
    pos = peaks > 0
    s[pos] = a[pos] / peaks[pos].view(-1, 1, 1)
    base = s[0]
    mu = base + (s - base).mean(dim=0)
    sigma = ((s - mu) ** 2).mean(dim=0).sqrt()
    return mu, sigma


def cas_scores(stack: Stack, beta1: float = 1.0, beta2: float = 1.0) -> torch.Tensor:
    """``CAS = beta1 * mu - beta2 * sigma`` as a float64 tensor ``[L, N]``.

    Args:
        stack: attributions ``[n, L, N]`` of the fact's ``n`` queries (tensor, array, or a
            sequence of ``[L, N]`` maps).
        beta1, beta2: finite, ``>= 0`` weights of the mean and of the std.
    """
    b1, b2 = _check_betas(beta1, beta2)
    mu, sigma = cas_components(stack)
    return b1 * mu - b2 * sigma


# the cas experiment's protocols: CAS from all neighbor queries, every query edited (the paper's); CAS without the
# paraphrase Generalization is then measured on (knowloc's held-out check)
CAS_PROTOCOLS = ("transductive", "held_out")
# its budgets: each selection as it comes (the paper's); N_i and N_g cut to the |CAS| strongest (knowloc's check that
# CAS's edge is not its size)
CAS_BUDGETS = ("free", "matched")


@dataclass
class CasSettings:
    """CAS's selection as a study makes it (``--cas-*``): ``CAS = beta1 mean - beta2 std``, neurons with
    ``CAS > threshold x max CAS``, at most ``top_k`` of them (:func:`cas_select`); and the protocols the cas
    experiment runs (:data:`CAS_PROTOCOLS`, in that order) and its budgets (:data:`CAS_BUDGETS`)."""

    beta1: float = setting(1.0, help="CAS = beta1 mean - beta2 std")
    beta2: float = setting(1.0, help="CAS = beta1 mean - beta2 std")
    threshold: float = setting(0.2, help="CAS selection: CAS > t x max CAS")
    top_k: int | None = setting(None, help="cap the CAS selection at k neurons")
    protocols: list[str] = setting(factory=lambda: list(CAS_PROTOCOLS), help="cas experiment: transductive (CAS "
                                   "from all neighbor queries, the paper's protocol and the finding's) and / or "
                                   "held_out (CAS without the paraphrase Gen is measured on)")
    budgets: list[str] = setting(factory=lambda: list(CAS_BUDGETS), help="cas experiment: free (each selection as "
                                 "it comes, the paper's and the finding's) and / or matched (N_i and N_g cut to the "
                                 "|CAS| strongest neurons)")

    def __post_init__(self) -> None:
        if self.beta1 < 0 or self.beta2 < 0:
            raise KnowlocError("--cas-beta1 and --cas-beta2 must be >= 0")
        if not 0 <= self.threshold <= 1:
            raise KnowlocError(f"--cas-threshold must be in [0, 1], got {self.threshold}")
        self.protocols = chosen(self.protocols, CAS_PROTOCOLS, "--cas-protocols")
        self.budgets = chosen(self.budgets, CAS_BUDGETS, "--cas-budgets")

    def select(self, stack: Stack, threshold: float | None = None, beta1: float | None = None,
               beta2: float | None = None) -> list[Neuron]:
        """:func:`cas_select` with these settings (a sweep's grid point may override the threshold and betas)."""
        return cas_select(stack, self.threshold if threshold is None else threshold,
                          self.beta1 if beta1 is None else beta1, self.beta2 if beta2 is None else beta2, self.top_k)


def cas_select(
    stack: Stack,
    threshold: float = 0.2,
    beta1: float = 1.0,
    beta2: float = 1.0,
    top_k: int | None = None,
) -> list[Neuron]:
    """Neurons with ``CAS(u) > threshold * max CAS``, sorted by CAS descending.

    Ties are broken by ``(layer, index)`` ascending; ``top_k`` (if given, ``>= 0``) keeps only the
    first ``top_k`` of them. Returns ``[]`` when ``max CAS <= 0``.
    """
    t = check_unit_interval(threshold, "threshold")
    k = None if top_k is None else check_count(top_k, "top_k", 0)
    cas = cas_scores(stack, beta1, beta2).numpy()
    return sorted_neurons(cas, relative_mask(cas, t), limit=k)
