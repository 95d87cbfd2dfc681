"""ROME: a rank-one update of one layer's MLP output projection (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", section 3).

Read the MLP output projection of layer l as a linear associative memory ``v = W k (+ b)``: ``k`` the key (the
projection's input, knowloc's neuron activations ``[n_neurons]``), ``v`` the value it writes ``[d_model]``.

1. **Key** ``k*``: the mean of ``k`` at the subject's last token over the edited query and ``prefixes`` seeded
   contexts ``"<prefix>. <query>"``, ``<prefix>`` a short sample of the model's own text
   (:func:`knowloc.editing.editors.covariance.model_samples`; ROME uses ten-token samples the same way).
2. **Value** ``v* = out(k*) + delta``, ``out(k*) = W k* (+ b)`` the projection's current output at ``k*``
   (so a zero-step edit changes nothing). ``delta`` is added to the projection's output at the subject's last
   token of every context and of the KL prompt ``"<subject> is a"``, and found by ``steps`` Adam steps
   (``lr``) minimizing

   ``L(delta) = mean_c NLL(o' | context c) + kl_factor * KL(P(. | S is a) || P_delta(. | S is a))
   + weight_decay * |delta|^2 / |out(k*)|^2``,

   with ``|delta| <= clamp * |out(k*)|`` after every step (ROME's ``clamp_norm_factor``), ending early once
   ``L(delta) < stop`` when ``stop`` > 0 (ROME's code stops at 5e-2; knowloc's default runs every step). NLL is over all of o''s tokens, teacher-forced.
3. **Update** (ROME eq. 2): ``W <- W + (v* - out(k*)) (C^-1 k*)^T / (k*^T C^-1 k*)``, ``C = E[k k^T]`` over
   a text sample (:class:`~knowloc.editing.editors.covariance.CovarianceStore`), solved in float64 with a ridge
   of ``ridge x mean(diag C)`` (1e-6 by default; it only matters for a sample with fewer tokens than neurons).
   Then ``W' k* = v*`` and ``W' k = W k`` for every ``k`` with ``k^T C^-1 k* = 0`` (:func:`rank_one_update`).

Devices: steps 1-2 run on the model's device; ``k*``, ``out(k*)`` and ``delta`` come back float64 on the CPU, where
C is stored, and the solve of step 3 runs there in float64 (deterministic, the same on any device, and C
``[n_neurons, n_neurons]`` float64 never occupies the accelerator). ``dW`` is float64 on the CPU; applying it
(:meth:`knowloc.models.hooks.WeightEditor.add_matrix`) casts it to the weight's device and dtype.

Defaults follow ROME's GPT-2 XL settings where they carry over (20 steps, KL factor 0.0625, weight decay 0.5,
clamp 4, ``"{} is a"``); ``lr`` 0.5 as ROME; 4 prefixes and C over 128 samples of 64 tokens. They are the study's
defaults too (its ``--rome-*`` settings read them), so ``knowloc bench editors`` times the ROME studies run.
docs/editing.md has the measured behaviour on SmolLM2-135M.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from knowloc.editing.editors.base import (AppliedEdit, EditRequest, Editor, Teacher, adam_rows, added_to_output,
                                          check_positive, check_steps, subject_last_index)
from knowloc.editing.editors.covariance import CovarianceStore, TextSample, model_samples
from knowloc.errors import KnowlocError
from knowloc.models.hooks import edit_weights
from knowloc.models.lm import LanguageModel
from knowloc.settings import setting

KL_TEMPLATE = "{} is a"
SAMPLES = 128  # C's text sample: samples of TextSample's 64 tokens (studies' --rome-samples)
PREFIX_TOKENS = 10


def rank_one_update(c: torch.Tensor, k_star: torch.Tensor, residual: torch.Tensor, ridge: float = 0.0
                    ) -> torch.Tensor:
    """ROME's update ``dW = residual (C^-1 k*)^T / (k*^T C^-1 k*)`` ``[d_out, d_in]``, float64; pure.

    Args:
        c: ``C`` ``[d_in, d_in]`` (symmetric positive semi-definite); k_star: ``k*`` ``[d_in]``;
        residual: ``v* - W k*`` ``[d_out]``; ridge: added to C's diagonal, times its mean diagonal.

    Returns:
        ``dW`` with ``(W + dW) k* = W k* + residual`` and ``dW k = 0`` for every ``k`` with
        ``k^T C^-1 k* = 0`` (C with its ridge), float64 on C's device (``k*`` and ``residual`` are moved there:
        :class:`Rome` passes C from the store, on the CPU).

    Example:
        >>> c = torch.eye(3, dtype=torch.float64); k = torch.tensor([1.0, 0, 0], dtype=torch.float64)
        >>> rank_one_update(c, k, torch.tensor([0.0, 2.0], dtype=torch.float64))
        tensor([[0., 0., 0.],
                [2., 0., 0.]], dtype=torch.float64)
    """
    c = c.double()
    k = k_star.to(device=c.device, dtype=torch.float64).reshape(-1)  # the solve runs where C is
    if c.shape != (k.numel(), k.numel()):
        raise KnowlocError(f"C is {tuple(c.shape)}, keys have {k.numel()} entries")
    if ridge:
        c = c + ridge * c.diagonal().mean().clamp_min(1e-30) * torch.eye(k.numel(), dtype=c.dtype, device=c.device)
    u, info = torch.linalg.solve_ex(c, k)  # C^-1 k*
    denom = float(k @ u)
    if int(info) != 0 or not denom > 0 or not torch.isfinite(u).all():
        raise KnowlocError("k*^T C^-1 k* is not positive: C is singular on the key (an empty or degenerate "
                           "text sample)")
    return torch.outer(residual.to(device=c.device, dtype=torch.float64).reshape(-1), u) / denom


def _whole(value: object, flag: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise KnowlocError(f"{flag} must be an integer >= {low}, got {value!r}")


@dataclass
class RomeSettings:
    """What a study sets of ROME (``--rome-*``; the :class:`Rome` editor's defaults are these): Adam ``steps``,
    ``lr`` and early ``stop`` of v*, context ``prefixes``, and the ``samples`` of 64 tokens C is computed over."""

    steps: int = setting(20, help="rome: Adam steps of the value vector v* (ROME: 20)")
    lr: float = setting(0.5, help="rome: learning rate of v* (ROME: 0.5)")
    stop: float = setting(0.0, help="rome: v*'s steps end once its loss is below this (ROME's code: 5e-2; 0, the "
                          "default the measurements used: every --rome-steps step)")
    prefixes: int = setting(4, help="rome: seeded context prefixes of the model's own text besides the query (key "
                            "k* and v* are fitted over them)")
    samples: int = setting(SAMPLES, help="rome: samples of 64 tokens of the model's own seeded text over which the "
                           "key statistics C = E[k k^T] are computed (once per model and layer, stored)")

    def __post_init__(self) -> None:
        _whole(self.steps, "--rome-steps", 0)
        _whole(self.prefixes, "--rome-prefixes", 0)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise KnowlocError(f"--rome-samples must be >= 1 (an empty text sample has no keys), got {self.samples!r}")
        if isinstance(self.stop, bool) or not isinstance(self.stop, (int, float)) or not 0 <= self.stop < 1e9:
            raise KnowlocError(f"--rome-stop must be a number >= 0, got {self.stop!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise KnowlocError(f"--rome-lr must be a number > 0, got {self.lr!r}")

    def arguments(self, covariance: CovarianceStore, seed: int = 0, sample_length: int = 64) -> dict:
        """The keyword arguments of ROME's fit with these settings (also MEMIT's and AlphaEdit's targets): C over
        ``samples`` x ``sample_length`` tokens seeded by ``seed`` (also the prefixes' seed), stored in
        ``covariance``."""
        return dict(steps=self.steps, lr=self.lr, stop=self.stop, prefixes=self.prefixes,
                    sample=TextSample(n=self.samples, length=sample_length, seed=seed), covariance=covariance,
                    seed=seed)

    def editor(self, covariance: CovarianceStore, seed: int = 0, sample_length: int = 64) -> Rome:
        """The :class:`Rome` editor with these settings (:meth:`arguments`)."""
        return Rome(**self.arguments(covariance, seed, sample_length))


@dataclass
class Rome(Editor):
    """The ``rome`` editor (module docstring); ``apply(lm, request)`` edits ``request.layer`` (one layer).

    Args:
        steps, lr: Adam steps (at most) and learning rate of ``delta``; stop: the steps end once L(delta) is
            below it (ROME's code: 5e-2; 0, the default: all ``steps``); kl_factor, weight_decay, clamp: the loss terms and
            norm bound; prefixes: seeded context prefixes besides the query itself (generated once per model and
            seed and shared by every edit, as ROME's context templates); sample: the text sample of C;
        covariance: where C is stored; ridge: C's ridge; seed: the prefixes' seed.

    Example:
        >>> request = EditRequest("The capital of France is", "France", "Paris", "Rome", layers=4)
        >>> with Rome().apply(lm, request) as applied:
        ...     lm.model(...)  # the edited model
    """

    steps: int = RomeSettings.steps
    lr: float = RomeSettings.lr
    stop: float = RomeSettings.stop
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 4.0
    prefixes: int = RomeSettings.prefixes
    sample: TextSample = field(default_factory=lambda: TextSample(n=RomeSettings.samples))
    covariance: CovarianceStore = field(default_factory=CovarianceStore)
    ridge: float = 1e-6
    seed: int = 0

    name = "rome"
    uses_layer = True
    uses_neurons = False

    def __post_init__(self) -> None:
        check_steps(self.steps, "rome steps")
        check_steps(self.prefixes, "rome prefixes")
        check_positive(self.lr, "rome lr")
        check_positive(self.stop, "rome stop", allow_zero=True)
        for name in ("kl_factor", "weight_decay", "ridge"):
            check_positive(getattr(self, name), f"rome {name.replace('_', ' ')}", allow_zero=True)
        check_positive(self.clamp, "rome clamp")

    def prefix_texts(self, lm: LanguageModel) -> list[str]:
        """The seeded context prefixes: ``prefixes`` samples of PREFIX_TOKENS tokens of the model's own text,
        generated once per (model, seed) and kept in ``lm.caches``: {(prefixes, seed): texts}."""
        memo = lm.cache(__name__, dict)
        key = (self.prefixes, self.seed)
        if key not in memo:
            seqs = model_samples(lm, self.prefixes, PREFIX_TOKENS, self.seed) if self.prefixes else []
            memo[key] = [lm.tokenizer.decode(s, skip_special_tokens=True).replace("\n", " ").strip() for s in seqs]
        return memo[key]

    def contexts(self, lm: LanguageModel, request: EditRequest) -> list[str]:
        """The edited query and its prefixed versions ``"<prefix>. <query>"``."""
        query = request.prompt.rstrip()
        return [query, *(f"{prefix}. {query}" for prefix in self.prefix_texts(lm))]

    def key_and_value(self, lm: LanguageModel, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(k*, v*, info)`` of the request (steps 1 and 2 of the module docstring); the model is unchanged."""
        k_star, out_k, delta, info = self._fit(lm, request)
        return k_star, out_k + delta, info

    def _fit(self, lm: LanguageModel, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """``(k*, out(k*), delta, info)``: v* = out(k*) + delta, float64 on the CPU (fitted on the model's
        device)."""
        return self._fit_batch(lm, [request])[0]

    def _fit_batch(self, lm: LanguageModel, requests: Sequence[EditRequest]
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
        """:meth:`_fit` of requests that edit the same layer, fitted together: one teacher-forced batch of every
        request's contexts and KL prompt, one ``delta`` row per request (:func:`adam_rows`: each row takes the
        steps it would take alone; the batch only changes float rounding)."""
        requests = [r.checked(lm, needs_layer=True) for r in requests]
        layer = requests[0].layer
        if any(r.layer != layer for r in requests):
            raise KnowlocError("requests fitted together must edit the same layer")
        prompts: list[str] = []
        targets: list[str | None] = []
        owner: list[int] = []  # the request of each row
        fit_rows: list[int] = []  # the rows of contexts (the KL prompts are the others)
        kl_rows: list[int] = []
        counts: list[int] = []  # each request's number of contexts
        for i, request in enumerate(requests):
            contexts = self.contexts(lm, request)
            counts.append(len(contexts))
            fit_rows.extend(range(len(prompts), len(prompts) + len(contexts)))
            kl_rows.append(len(prompts) + len(contexts))
            prompts.extend([*contexts, KL_TEMPLATE.format(request.subject.strip())])
            targets.extend([request.new_object] * len(contexts) + [None])
            owner.extend([i] * (len(contexts) + 1))
        positions = [subject_last_index(lm, text, requests[owner[r]].subject) for r, text in enumerate(prompts)]
        n, device = len(requests), lm.device
        teacher = Teacher(lm, prompts, targets, start=layer, trace=[layer])
        rows = torch.arange(len(prompts), device=device)
        at = torch.tensor(positions, dtype=torch.long, device=device)
        keys = teacher.activations[layer][rows, at].double()  # [rows, n_neurons]
        fit = torch.tensor(fit_rows, dtype=torch.long, device=device)
        owner_t = torch.tensor(owner, dtype=torch.long, device=device)
        fit_owner = owner_t[fit]  # the request of each context row
        n_fit = torch.tensor(counts, dtype=torch.float64, device=device)  # [n]
        k_star = torch.zeros(n, keys.shape[1], dtype=torch.float64, device=device).index_add(
            0, fit_owner, keys[fit]) / n_fit[:, None]  # [n, n_neurons]: each request's mean key
        with torch.no_grad():
            out_k = lm.mlp_out(layer)(k_star.to(lm.dtype)).double().cpu()  # out(k*) [n, d_model]
        base_norm = out_k.norm(dim=1).clamp_min(1e-12)  # [n]
        norm_dev = base_norm.to(device=device, dtype=torch.float32)
        delta = torch.zeros(n, out_k.shape[1], dtype=torch.float32, device=device, requires_grad=True)
        mask = torch.zeros(len(prompts), teacher.batch.ids.shape[1], 1, device=device)
        mask[rows, at] = 1.0
        with torch.no_grad():
            kl_before = teacher.last_log_probs(teacher.unedited(), kl_rows).detach()  # [n, vocab]

        def losses() -> torch.Tensor:
            with added_to_output(lm, {layer: lambda x: mask * delta[owner_t][:, None, :]}):
                hidden = teacher.run()
            nll = torch.zeros(n, device=device).index_add(0, fit_owner, teacher.row_nll(hidden, fit_rows))
            nll = nll / n_fit.float()
            kl_after = teacher.last_log_probs(hidden, kl_rows)
            kl = torch.sum(kl_before.exp() * (kl_before - kl_after), dim=-1)
            return nll + self.kl_factor * kl + self.weight_decay * delta.pow(2).sum(dim=1) / norm_dev ** 2

        def clamp() -> None:
            scale = (self.clamp * norm_dev / delta.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
            delta.mul_(scale[:, None])

        last, taken = adam_rows(delta, losses, self.steps, self.lr, clamp, stop_below=self.stop)
        fitted = delta.detach().double().cpu()
        return [(k_star[i].cpu(), out_k[i], fitted[i],
                 {"loss": last[i], "steps": taken[i], "delta_norm": float(fitted[i].norm()),
                  "value_norm": float(base_norm[i]), "contexts": counts[i]}) for i in range(n)]

    def weight_change(self, lm: LanguageModel, request: EditRequest) -> tuple[torch.Tensor, dict]:
        """``dW`` ``[d_model, n_neurons]`` of the request (step 3) and the info of steps 1-2; model unchanged."""
        k_star, _, delta, info = self._fit(lm, request)
        c = self.covariance.get(lm, request.layer, self.sample)  # type: ignore[arg-type]  # float64, on the CPU
        # the float64 solve on the CPU, where C, k* and delta are (module docstring: Devices)
        return rank_one_update(c, k_star, delta, self.ridge), info  # residual v* - out(k*) = delta

    @contextmanager
    def edit(self, lm: LanguageModel, request: EditRequest) -> Iterator[AppliedEdit]:
        """The model with the rank-one update of ``request.layer`` applied; restored bit-exactly on exit."""
        delta_w, info = self.weight_change(lm, request)
        changed = bool(delta_w.abs().max() > 0)
        with edit_weights(lm) as editor:
            if changed:
                editor.add_matrix(request.layer, delta_w)  # type: ignore[arg-type]
            yield AppliedEdit(start=request.layer if changed else None,
                              n_weights=int(delta_w.numel()) if changed else 0, info=info)
