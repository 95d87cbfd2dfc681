"""The engine's entry points: the integration points of one query, or of several queries of one shape, in chunks
of staircase rows, to scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from knowloc.attribution.engine.memory import default_max_rows
from knowloc.attribution.engine.prefix_attention import split_attention
from knowloc.attribution.engine.prepare import prepare, query_shape
from knowloc.attribution.engine.staircase import CleanRun, staircase_gradients
from knowloc.attribution.methods import MethodConfig, baselines, n_baselines
from knowloc.models.lm import Encoding, LanguageModel


def attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, *, layers: list[int] | None = None,
                   max_rows: int | None = None, memory_gb: float | None = None) -> tuple[torch.Tensor, float]:
    """Scores [n_layers, n_neurons] (float32, CPU) and the clean objective value, by the staircase engine: the
    one-query case of :func:`attribute_fast_many`."""
    ((scores, prob),) = attribute_fast_many(lm, [enc], config, layers=layers, max_rows=max_rows, memory_gb=memory_gb)
    return scores, prob


def batch_key(lm: LanguageModel, enc: Encoding, config: MethodConfig) -> tuple[int, int, int]:
    """What queries must share to run in one staircase: (prefix length, target length, number of baselines J).

    Example:
        >>> batch_key(lm, lm.encode("The capital of France is", "Paris"), MethodConfig("ig", 20))
        (4, 1, 1)
    """
    return (*query_shape(enc), n_baselines(lm, enc, config))


def attribute_fast_many(lm: LanguageModel, encs: Sequence[Encoding], config: MethodConfig, *,
                        layers: list[int] | None = None, max_rows: int | None = None,
                        memory_gb: float | None = None) -> list[tuple[torch.Tensor, float]]:
    """Attribute Q queries of one :func:`batch_key` in one staircase: every block call, the unembedding and the
    backward pass serve all of them at once (about Q times fewer operator calls per attribution), and each
    query's scores equal its own :func:`attribute_fast` up to rounding.

    Args:
        lm: the model; encs: the Q queries (one `batch_key`); config: the method's settings.
        layers: attribute only these layers (others score 0).
        max_rows: staircase rows per chunk, all Q queries' together (each query gets max_rows // Q, at least 1,
            besides its clean row); memory_gb: or the activation budget they come from (:func:`default_max_rows`).

    Returns:
        One (scores [n_layers, n_neurons] float32 on the CPU, clean objective value) per query, in order.

    Raises:
        ValueError: queries of different `batch_key`s.

    Example:
        >>> encs = [lm.encode("The capital of France is", "Paris"), lm.encode("The capital of Italy is", "Rome")]
        >>> [(scores.shape, round(prob, 3)) for scores, prob in attribute_fast_many(lm, encs, MethodConfig("ig"))]
    """
    encs = list(encs)
    if not encs:
        return []
    keys = {batch_key(lm, enc, config) for enc in encs}
    if len(keys) != 1:
        raise ValueError(f"one staircase needs queries of one shape (prefix length, target length, baselines), "
                         f"got {sorted(keys)}")
    with lm.fast_attention():
        return _attribute_fast_many(lm, encs, config, layers, max_rows, memory_gb)


def _attribute_fast_many(lm: LanguageModel, encs: list[Encoding], config: MethodConfig, layers: list[int] | None,
                         max_rows: int | None, memory_gb: float | None) -> list[tuple[torch.Tensor, float]]:
    prep = prepare(lm, encs)
    n_query, n_layers = len(encs), lm.n_layers
    base = torch.stack([baselines(lm, enc, config).float() for enc in encs])  # [Q, J, n_layers, n_neurons]
    n_base, steps = base.shape[1], config.effective_steps
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    prefix_elements = sum(k.numel() + v.numel() for k, v in prep.prefix_cache.prefix.values()) // n_query
    max_rows = max_rows or default_max_rows(lm, encs[0].n_target, memory_gb, prefix_elements)  # all queries'
    per_query = max(1, max_rows // n_query)  # grid rows of each query per chunk
    # Units (baseline j, step k, layer l) for k < m, ordered so that a chunk holds whole staircases where it
    # can; every query has the same units. At k = m every baseline's point is the clean activation a, so the
    # clean rows (in the first chunk) give that step's gradient for every layer and baseline.
    grid = torch.cartesian_prod(torch.arange(n_base, device=lm.device), torch.arange(1, steps, device=lm.device),
                                torch.tensor(layers, device=lm.device)).view(-1, 3)
    # [J * (m - 1) * len(layers), 3]: (j, k, l) per row
    grad_sum = torch.zeros(n_query, n_base * n_layers, lm.n_neurons, device=lm.device, dtype=torch.float32)
    # [Q, J * n_layers, n_neurons]: sum over k of dF_q/dx at (j, k, l), in row j * n_layers + l
    clean: CleanRun | None = None
    with split_attention(lm, prep.prefix_cache):
        for start in range(0, max(grid.shape[0], 1), per_query):
            j, k, l = grid[start:start + per_query].unbind(dim=1)  # [rows] each
            alpha = (k.float() / steps).unsqueeze(1)  # [rows, 1]
            result = staircase_gradients(lm, prep, l.tolist(), base[:, j, l], alpha, config.objective,
                                         clean_layers=layers if clean is None else None, clean=clean)
            # base[:, j, l]: [Q, rows, n_neurons]
            _add_rows(grad_sum, j * n_layers + l, k, result.grads)
            if clean is None:
                clean = result.clean
                grad_sum.view(n_query, n_base, n_layers, -1)[:, :, layers] += result.clean_grads.unsqueeze(1)
    assert clean is not None
    clean_acts = torch.stack(clean.act, dim=1).float()  # [Q, n_layers, n_neurons]
    grad_mean = grad_sum.view(n_query, n_base, n_layers, lm.n_neurons) / steps  # [Q, J, n_layers, n_neurons]
    scores = ((clean_acts.unsqueeze(1) - base) * grad_mean).mean(dim=1).cpu()  # [Q, n_layers, n_neurons]
    if n_query == 1:
        return [(scores[0], clean.values[0])]
    return [(scores[q].clone(), clean.values[q]) for q in range(n_query)]  # each its own storage


def _add_rows(total: torch.Tensor, index: torch.Tensor, steps: torch.Tensor, grads: torch.Tensor) -> None:
    """``total[:, index[r]] += grads[:, r]`` for every row r, in the same order on every device and run.

    A chunk's rows of one (baseline, layer) differ only in their step k, so one step's rows never share an index:
    adding one step at a time (k ascending, the rows' order) leaves no collision to cuda's ``index_add_``, which
    adds colliding rows in any order, and sums exactly as one row-order ``index_add_`` on the CPU does.
    total [Q, J * n_layers, n_neurons]; index, steps [rows]; grads [Q, rows, n_neurons]."""
    for k in steps.unique().tolist():  # ascending
        pick = steps == k  # [rows]
        total.index_add_(1, index[pick], grads[:, pick])
