"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME section 2.1).

For a query whose answer's first token is o:

* clean run: P_clean(o) from the prompt as it is;
* corrupted run: Gaussian noise eps ~ N(0, sigma^2 I) added to the input embeddings of the subject's tokens,
  ``samples`` seeded draws, sigma = ``noise`` x the standard deviation of the model's token embeddings (ROME's
  3 x; ROME measured that deviation on its dataset's subjects, knowloc over the whole vocabulary's embedding
  outputs, Gemma's sqrt(d_model) scale included); P_corrupted(o) = mean over the draws;
* restored run: the corrupted run with one state set back to its clean value: (a) ``hidden``, block l's output
  (the residual stream) at token t; (b) ``mlp``, the MLP's output at token t in every layer of the window
  W(l) = [l - w // 2, l + ceil(w / 2) - 1] clipped to the model (ROME's window); (c) ``attn``, the attention
  output the same way. P_restored(o) = mean over the same draws.

Indirect effect IE(kind, t, l) = P_restored(o) - P_corrupted(o); total effect TE = P_clean(o) - P_corrupted(o).

Batched (:func:`trace`): the clean pass records every block's call (:mod:`knowloc.models.block_calls`), each
block's output and each MLP / attention output; the corrupted pass runs the ``samples`` draws as one batch and
keeps every block's input. A restoration at layer l (window start l' for mlp / attn) changes nothing below it, so
all the restorations of one layer (every token x every draw) run as the rows of one pass that starts at that
block from the stored corrupted input: 3 x n_layers passes per query, each over half the blocks on average.
Tokens before the subject are not traced: the noise cannot reach them (causal attention), so their clean and
corrupted states are equal and IE = 0 there exactly. :func:`restored_probability` computes one restoration with
full forward passes and hooks (the reference the batched maps are tested against; any set of states).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from knowloc.errors import KnowlocError
from knowloc.models.block_calls import BlockCall, capture_block_calls, first_output
from knowloc.models.hooks import hook_module
from knowloc.models.lm import LanguageModel
from knowloc.models.spans import subject_span
from knowloc.settings import setting

KINDS = ("hidden", "mlp", "attn")
DEFAULT_SAMPLES = 10
DEFAULT_NOISE = 3.0  # x the embeddings' standard deviation (ROME)
DEFAULT_WINDOW = 6  # ROME's 10 of GPT-2 XL's 48 layers is ~0.2 of the depth: 6 of a 30-layer model


@dataclass(frozen=True)
class TraceSettings:
    """Causal tracing's settings: ``samples`` noise draws, sigma = ``noise`` x the embeddings' std, mlp / attn
    windows of ``window`` layers, the draws seeded by ``seed``."""

    samples: int = setting(DEFAULT_SAMPLES, help="tracing: seeded noise draws per query (ROME: 10)")
    noise: float = setting(DEFAULT_NOISE, help="tracing: noise sigma in standard deviations of the token embeddings "
                           "(ROME: 3)")
    window: int = setting(DEFAULT_WINDOW, help="tracing: layers restored together around each layer for mlp / attn "
                          "(ROME: 10 of 48 layers; 6 keeps that share of a 30-layer model)")
    seed: int = setting(0, help="the noise draws' seed (a study's own --seed)", study=False)

    def __post_init__(self):
        for name in ("samples", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KnowlocError(f"--trace-{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not 0 < self.noise < float("inf"):
            raise KnowlocError(f"--trace-noise must be a number > 0, got {self.noise!r}")


@dataclass
class TraceResult:
    """One query's tracing maps.

    ``ie[kind]``: [n_tokens, n_layers] indirect effects (0 before the subject); ``tokens``: the prompt's tokens as
    strings; ``subject``: (first, last) token positions; ``te`` = p_clean - p_corrupted."""

    tokens: list[str]
    subject: tuple[int, int]
    target: int
    p_clean: float
    p_corrupted: float
    sigma: float
    settings: TraceSettings
    ie: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def te(self) -> float:
        return self.p_clean - self.p_corrupted

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "subject": list(self.subject), "target": self.target,
                "p_clean": self.p_clean, "p_corrupted": self.p_corrupted, "te": self.te, "sigma": self.sigma,
                "samples": self.settings.samples, "noise": self.settings.noise, "window": self.settings.window,
                "ie": {k: v.round(6).tolist() for k, v in self.ie.items()}}


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """W(l) = [l - w // 2, l + ceil(w / 2) - 1] clipped to [0, n_layers - 1] (ROME's window around layer l)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def embedding_std(lm: LanguageModel) -> float:
    """Standard deviation of the token embeddings as the first block receives them: the input embedding
    matrix's entries, times the module's ``embed_scale`` where it has one (Gemma's sqrt(d_model))."""
    module = lm.model.get_input_embeddings()
    std = float(module.weight.detach().float().std())
    scale = getattr(module, "embed_scale", None)
    return std * (float(scale) if scale is not None else 1.0)


def subject_noise(lm: LanguageModel, n_subject: int, settings: TraceSettings) -> tuple[torch.Tensor, float]:
    """(eps [samples, n_subject, d_model], sigma): the seeded noise of the subject's tokens."""
    sigma = settings.noise * embedding_std(lm)
    gen = torch.Generator().manual_seed(settings.seed)  # on the CPU: CPU and GPU runs draw the same noise
    d_model = lm.model.get_input_embeddings().weight.shape[1]
    eps = torch.randn(settings.samples, n_subject, d_model, generator=gen) * sigma  # on the CPU (seeded), then moved
    return eps.to(device=lm.device, dtype=lm.dtype), sigma


def _module(lm: LanguageModel, kind: str, layer: int):
    block = lm.blocks[layer]
    return lm.arch.mlp_out(block) if kind == "mlp" else lm.arch.attn(block)


def _with_first(out, new: torch.Tensor):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def _encode(lm: LanguageModel, prompt: str, subject: str, target: str) -> tuple[list[int], int, tuple[int, int]]:
    enc = lm.encode(prompt, target)
    span = subject_span(lm, prompt, subject)
    if span is None:
        raise KnowlocError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    return list(enc.prompt_ids), enc.target_ids[0], span


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise KnowlocError(f"unknown tracing kind {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    return kinds


class _Runs:
    """The clean and corrupted passes of one query, and the batched restorations that start from them."""

    def __init__(self, lm: LanguageModel, ids: list[int], target: int, span: tuple[int, int],
                 settings: TraceSettings):
        self.lm, self.target, self.span, self.settings = lm, target, span, settings
        n = lm.n_layers
        self.clean_out: dict[str, list[torch.Tensor]] = {"mlp": [None] * n, "attn": [None] * n}
        x = torch.tensor([ids], device=lm.device)
        with torch.no_grad(), ExitStack() as stack:
            captured = stack.enter_context(capture_block_calls(lm.blocks))
            for kind in ("mlp", "attn"):
                for layer in range(n):
                    stack.enter_context(hook_module(_module(lm, kind, layer), "output", self._recorder(kind, layer)))
            lm.model.base_model(input_ids=x, use_cache=False)
        self.calls: list[BlockCall] = captured.calls  # batch-1 calls: their masks broadcast over any batch
        # block l's output at every token [n_tokens, d_model]
        self.clean_hidden = [h[0] for h in captured.inputs[1:]] + [captured.output[0]]
        self.p_clean = float(self.probs(captured.output)[0])
        eps, self.sigma = subject_noise(lm, span[1] - span[0] + 1, settings)
        start = captured.inputs[0].repeat(settings.samples, 1, 1)  # [samples, n_tokens, d_model]
        start[:, span[0]:span[1] + 1] += eps
        self.corrupted_in: list[torch.Tensor] = []  # block l's input [samples, n_tokens, d_model]
        with torch.no_grad():
            hidden = start
            for layer in range(n):
                self.corrupted_in.append(hidden)
                hidden = self.calls[layer].run(lm.blocks[layer], hidden)
        self.corrupted_in.append(hidden)  # the last block's output, at index n_layers
        self.p_corrupted = float(self.probs(hidden).mean())

    def _recorder(self, kind: str, layer: int):
        def record(out):
            self.clean_out[kind][layer] = first_output(out)[0].detach()
        return record

    def probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """P(o) at the last position of every row [rows] (hidden: the last block's output [rows, tokens, d])."""
        logits = self.lm.logits(hidden[:, -1]).float()
        return torch.softmax(logits, dim=-1)[:, self.target]

    @torch.no_grad()
    def restore(self, kind: str, layer: int, tokens: Sequence[int]) -> np.ndarray:
        """P_restored(o) per token of ``tokens`` [len(tokens)]: every token x draw one row of one pass."""
        lm, s = self.lm, self.settings.samples
        n = lm.n_layers
        rows = torch.arange(len(tokens) * s, device=lm.device)
        where = torch.tensor(tokens, device=lm.device).repeat_interleave(s)  # row r restores token where[r]
        with ExitStack() as stack:
            if kind == "hidden":
                start = layer + 1
                hidden = self.corrupted_in[start].repeat(len(tokens), 1, 1)
                hidden[rows, where] = self.clean_hidden[layer][where]
            else:
                span = window_layers(layer, self.settings.window, n)
                start = span.start
                hidden = self.corrupted_in[start].repeat(len(tokens), 1, 1)
                for l in span:
                    patch = self._patcher(kind, l, rows, where)
                    stack.enter_context(hook_module(_module(lm, kind, l), "output", patch))
            for b in range(start, n):
                hidden = self.calls[b].run(lm.blocks[b], hidden)
        return self.probs(hidden).reshape(len(tokens), s).mean(dim=1).cpu().numpy()

    def _patcher(self, kind: str, layer: int, rows: torch.Tensor, where: torch.Tensor):
        clean = self.clean_out[kind][layer][where]  # [rows, d_model]

        def patch(out):
            value = first_output(out).clone()
            value[rows, where] = clean
            return _with_first(out, value)
        return patch


def trace(lm: LanguageModel, prompt: str, subject: str, target: str, *, kinds: Iterable[str] = KINDS,
          settings: TraceSettings = TraceSettings()) -> TraceResult:
    """Causal tracing of one query: the IE maps of ``kinds`` over (token, layer) (module docstring).

    Args:
        lm: the model (any registered family); prompt: the query; subject: its subject, which must occur in the
            prompt; target: the answer (its first token is o); kinds: of ``hidden``, ``mlp``, ``attn``;
            settings: samples, noise, window and seed.

    Returns:
        A :class:`TraceResult`; ``result.ie["mlp"][t, l]`` is the IE of restoring the MLP outputs of W(l) at
        token t.

    Example:
        >>> r = trace(lm, "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris")  # doctest: +SKIP
        >>> r.ie["hidden"].shape  # (tokens, layers)
    """
    kinds = _check_kinds(kinds)
    ids, target_id, span = _encode(lm, prompt, subject, target)
    with lm.fast_attention():
        runs = _Runs(lm, ids, target_id, span, settings)
        tokens = list(range(span[0], len(ids)))
        ie = {}
        for kind in kinds:
            grid = np.zeros((len(ids), lm.n_layers))
            for layer in range(lm.n_layers):
                grid[span[0]:, layer] = runs.restore(kind, layer, tokens) - runs.p_corrupted
            ie[kind] = grid
    names = [lm.tokenizer.decode([i]) for i in ids]
    return TraceResult(names, span, target_id, runs.p_clean, runs.p_corrupted, runs.sigma, settings, ie)


@torch.no_grad()
def restored_probability(lm: LanguageModel, prompt: str, subject: str, target: str,
                         restore: Mapping[str, Iterable[tuple[int, int]]] | None = None,
                         settings: TraceSettings = TraceSettings()) -> float:
    """P(o) under the subject's noise with the states ``restore`` set back to their clean values, by full forward
    passes with hooks (the reference of :func:`trace`; no restoration: P_corrupted).

    Args:
        restore: kind -> (layer, token) pairs; ``hidden`` restores block outputs, ``mlp`` / ``attn`` the module
            outputs of exactly those layers (no window).

    Example:
        >>> restored_probability(lm, prompt, subject, "Paris", {"hidden": [(3, t) for t in range(n_tokens)]})
    """
    restore = {k: list(v) for k, v in (restore or {}).items()}
    _check_kinds(restore or KINDS)
    ids, target_id, span = _encode(lm, prompt, subject, target)
    x = torch.tensor([ids], device=lm.device)
    modules = {("hidden", l): lm.blocks[l] for l in range(lm.n_layers)}
    modules.update({(k, l): _module(lm, k, l) for k in ("mlp", "attn") for l in range(lm.n_layers)})
    wanted = {(k, l) for k, pairs in restore.items() for l, _ in pairs}
    clean: dict[tuple[str, int], torch.Tensor] = {}

    def recorder(key):
        def record(out):
            clean[key] = first_output(out)[0].clone()
        return record

    with ExitStack() as stack:
        for key in wanted:
            stack.enter_context(hook_module(modules[key], "output", recorder(key)))
        lm.model(input_ids=x, use_cache=False)
    eps, _ = subject_noise(lm, span[1] - span[0] + 1, settings)

    def add_noise(out):
        out = out.clone()
        out[:, span[0]:span[1] + 1] += eps
        return out

    def restorer(key, positions):
        def patch(out):
            value = first_output(out).clone()
            value[:, positions] = clean[key][positions]
            return _with_first(out, value)
        return patch

    with ExitStack() as stack:
        stack.enter_context(hook_module(lm.model.get_input_embeddings(), "output", add_noise))
        for key in wanted:
            positions = [t for k, pairs in restore.items() for l, t in pairs if (k, l) == key]
            stack.enter_context(hook_module(modules[key], "output", restorer(key, positions)))
        logits = lm.model(input_ids=x.repeat(settings.samples, 1), use_cache=False).logits[:, -1].float()
    return float(torch.softmax(logits, dim=-1)[:, target_id].mean())
