"""The `Attribution` result type."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from knowloc.analysis import select_neurons


@dataclass
class Attribution:
    """Attribution scores of every neuron for one query.

    scores: float32 [n_layers, n_neurons] on CPU. prob: the model's objective value on the unmodified query.
    convergence_delta: per layer, sum of the layer's scores minus the objective difference they should add up
    to (IG's completeness; :mod:`knowloc.attribution.completeness`), when asked for; else None.
    """

    scores: torch.Tensor
    method: str
    steps: int
    baseline: str
    prompt: str
    target: str
    objective: str = "prob"
    prob: float = float("nan")
    extra: dict = field(default_factory=dict)
    convergence_delta: torch.Tensor | None = None

    def neurons(self, threshold: float = 0.2, mode: str = "relative") -> list[tuple[int, int]]:
        """Knowledge neurons, sorted by score. relative: score > threshold * max (Dai et al.'s adaptive
        threshold); absolute: score > threshold; top_k: the int(threshold) best."""
        return select_neurons(self.scores, threshold=threshold, mode=mode)

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        flat = self.scores.flatten()
        k = min(k, flat.numel())
        values, order = torch.topk(flat, k)
        n = self.scores.shape[1]
        return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(values, order)]
