"""The `Attribution` result type."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from knowloc.analysis import select_neurons


@dataclass
class Attribution:
    """Attribution scores of every neuron for one query.

    scores: float32 [n_layers, n_neurons] on CPU.
    prob: the attributed objective F on the unmodified query: the mean over the target's tokens (teacher-forced)
    of P(token) (``objective="prob"``) or of log P(token) (``"logprob"``); for a one-token target, P(target).
    p_first: P(first target token) at the prompt's last position (the quantity a query is "answered" by).
    top_k: the model's most likely next tokens there, ``[{"token": text, "prob": p}, ...]`` (best first).
    target_rank: rank of the first target token in that distribution (1 = the model's prediction).
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
    p_first: float = float("nan")
    top_k: list[dict] = field(default_factory=list)
    target_rank: int | None = None

    @property
    def target_is_top1(self) -> bool:
        """Whether the model predicts the target's first token (False when not measured)."""
        return self.target_rank == 1

    @property
    def warning(self) -> str | None:
        """A one-line warning when the target is not the model's prediction: its "knowledge neurons" then
        explain an answer the model does not give."""
        if self.target_rank is None or self.target_rank == 1:
            return None
        best = self.top_k[0] if self.top_k else {"token": "?", "prob": float("nan")}
        return (f"the target {self.target!r} is not the model's prediction: its first token has rank "
                f"{self.target_rank} (P={self.p_first:.3g}); the top-1 next token is {best['token']!r} "
                f"(P={best['prob']:.3g})")

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
