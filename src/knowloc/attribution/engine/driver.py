"""The engine's entry point: a query's integration points, in chunks of staircase rows, to scores."""

from __future__ import annotations

import torch

from knowloc.attribution.engine.memory import default_max_rows
from knowloc.attribution.engine.prefix_attention import split_attention
from knowloc.attribution.engine.prepare import prepare
from knowloc.attribution.engine.staircase import CleanRun, staircase_gradients
from knowloc.attribution.methods import MethodConfig, baselines
from knowloc.models.lm import Encoding, LanguageModel


def attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, *, layers: list[int] | None = None,
                   max_rows: int | None = None, memory_gb: float | None = None) -> tuple[torch.Tensor, float]:
    """Scores [n_layers, n_neurons] (float32, CPU) and the clean objective value, by the staircase engine."""
    with lm.fast_attention():
        return _attribute_fast(lm, enc, config, layers, max_rows, memory_gb)


def _attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, layers: list[int] | None,
                    max_rows: int | None, memory_gb: float | None) -> tuple[torch.Tensor, float]:
    prep = prepare(lm, enc)
    base = baselines(lm, enc, config).float()  # [J, n_layers, n_neurons]
    n_base, steps = base.shape[0], config.effective_steps
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    prefix_elements = sum(k.numel() + v.numel() for k, v in prep.prefix_cache.prefix.values())
    max_rows = max_rows or default_max_rows(lm, enc.n_target, memory_gb, prefix_elements)
    # Units (baseline j, step k, layer l) for k < m, ordered so that a chunk holds whole staircases where it
    # can. At k = m every baseline's point is the clean activation a, so the clean row (in the first chunk)
    # gives that step's gradient for every layer and baseline.
    grid = torch.cartesian_prod(torch.arange(n_base, device=lm.device), torch.arange(1, steps, device=lm.device),
                                torch.tensor(layers, device=lm.device)).view(-1, 3)
    # [J * (m - 1) * len(layers), 3]: (j, k, l) per row
    grad_sum = torch.zeros(n_base * lm.n_layers, lm.n_neurons, device=lm.device, dtype=torch.float32)
    # [J * n_layers, n_neurons]: sum over k of dF/dx at (j, k, l), in row j * n_layers + l
    clean: CleanRun | None = None
    with split_attention(lm, prep.prefix_cache):
        for start in range(0, max(grid.shape[0], 1), max_rows):
            j, k, l = grid[start:start + max_rows].unbind(dim=1)  # [rows] each
            alpha = (k.float() / steps).unsqueeze(1)  # [rows, 1]
            result = staircase_gradients(lm, prep, l.tolist(), base[j, l], alpha, config.objective,
                                         clean_layers=layers if clean is None else None, clean=clean)
            _add_rows(grad_sum, j * lm.n_layers + l, k, result.grads)
            if clean is None:
                clean = result.clean
                grad_sum.view(n_base, lm.n_layers, -1)[:, layers] += result.clean_grads
    assert clean is not None
    prob = clean.value
    clean_acts = torch.stack(clean.act).float()  # [n_layers, n_neurons]
    grad_mean = grad_sum.view(n_base, lm.n_layers, lm.n_neurons) / steps  # [J, n_layers, n_neurons]
    scores = ((clean_acts.unsqueeze(0) - base) * grad_mean).mean(dim=0)  # [n_layers, n_neurons]
    return scores.cpu(), prob


def _add_rows(total: torch.Tensor, index: torch.Tensor, steps: torch.Tensor, grads: torch.Tensor) -> None:
    """``total[index[r]] += grads[r]`` for every row r, in the same order on every device and run.

    A chunk's rows of one (baseline, layer) differ only in their step k, so one step's rows never share an index:
    adding one step at a time (k ascending, the rows' order) leaves no collision to cuda's ``index_add_``, which
    adds colliding rows in any order, and sums exactly as one row-order ``index_add_`` on the CPU does.
    total [J * n_layers, n_neurons]; index, steps [rows]; grads [rows, n_neurons]."""
    for k in steps.unique().tolist():  # ascending
        pick = steps == k  # [rows]
        total.index_add_(0, index[pick], grads[pick])
