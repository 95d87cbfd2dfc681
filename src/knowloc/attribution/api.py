"""Public entry points: `attribute` and `attribute_many`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import warnings

import torch
from tqdm.auto import tqdm

from knowloc.attribution.completeness import convergence_delta
from knowloc.attribution.disk_cache import AttributionCache, attribution_key
from knowloc.attribution.engine import attribute_fast, attribute_fast_many, batch_key
from knowloc.attribution.methods import MethodConfig
from knowloc.attribution.result import Attribution
from knowloc.errors import KnowlocError
from knowloc.models.lm import Encoding, LanguageModel


def _prompt_and_target(query_or_prompt, target: str | None) -> tuple[str, str]:
    if hasattr(query_or_prompt, "text") and hasattr(query_or_prompt, "fact"):
        return query_or_prompt.text, target if target is not None else query_or_prompt.fact.object
    if not isinstance(query_or_prompt, str):
        raise KnowlocError(f"expected a prompt string or a Query, got {type(query_or_prompt).__name__}")
    if target is None:
        raise KnowlocError("a target is required when attributing a plain prompt")
    return query_or_prompt, target


def attribute(lm: LanguageModel, query_or_prompt, target: str | None = None, method: str = "ig", steps: int = 20,
              *, objective: str = "prob", baseline_token: str = "eos", reference_prompts=None,
              layers: list[int] | None = None, max_rows: int | None = None, memory_gb: float | None = None,
              return_convergence_delta: bool = False, top_k: int = 5, warn: bool = True,
              cache: AttributionCache | None = None) -> Attribution:
    """Attribute the gold target of one query to every neuron (fast exact engine, docs/methods.md).

    Args:
        lm: a model from :func:`knowloc.models.load_model`.
        query_or_prompt: the prompt text (without the answer), or a :class:`knowloc.data.Query`.
        target: the gold object, scored as ``" " + target`` (teacher-forced over all its tokens); a Query's
            own object by default.
        method: ``ig`` (Dai et al. 2022), ``sig``, ``amig`` or ``grad_x_act``; steps: integration steps m.
        objective: ``prob`` (mean over target tokens of P(token)) or ``logprob``.
        baseline_token: the token SIG replaces prompt tokens with; reference_prompts: AMIG's neutral prompts.
        layers: attribute only these layers (others score 0); max_rows, memory_gb: the engine's batch size (rows
            per chunk), or its activation budget in GB (None: from the device, half of a GPU's free memory, 4 GB
            on a CPU: :func:`knowloc.attribution.engine.memory.memory_budget_gb`).
        return_convergence_delta: also compute IG's completeness gap per layer
            (:mod:`knowloc.attribution.completeness`) into ``Attribution.convergence_delta``.
        top_k: how many of the model's next tokens ``Attribution.top_k`` lists.
        warn: warn (:class:`TargetNotPredicted`, on stderr) when the target's first token is not the model's
            top-1; ``Attribution.warning`` says so either way.
        cache: an :class:`~knowloc.attribution.disk_cache.AttributionCache`: an attribution computed before with
            the same weights, settings, prompt and target is read from it (bit-exact), a new one stored in it
            (not used with ``return_convergence_delta``, or with ``top_k`` other than 5).

    Returns:
        :class:`Attribution` with ``scores[n_layers, n_neurons]`` (float32, CPU), the objective ``prob``, and
        what the model predicts: ``p_first``, ``top_k`` and ``target_rank``.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> attr = attribute(lm, "The capital of France is", "Paris", method="ig", steps=20)
        >>> attr.neurons(0.2)[:5]          # knowledge neurons: score > 0.2 x max
    """
    config = _method_config(method, steps, objective, baseline_token, reference_prompts)
    prompt, target = _prompt_and_target(query_or_prompt, target)
    cache = cache if not return_convergence_delta and top_k == 5 else None
    key = attribution_key(lm, config, prompt, target, layers) if cache is not None else None
    result = cache.get(key) if cache is not None else None
    if result is None:
        enc = lm.encode(prompt, target)
        scores, prob = attribute_fast(lm, enc, config, layers=layers, max_rows=max_rows, memory_gb=memory_gb)
        result = _attribution(lm, enc, config, prompt, target, scores, prob, return_convergence_delta, top_k)
        if cache is not None:
            cache.put(key, result)
    if result.warning and warn:
        warnings.warn(result.warning, TargetNotPredicted, stacklevel=2)
    return result


def _method_config(method: str, steps: int, objective: str, baseline_token: str, reference_prompts) -> MethodConfig:
    return MethodConfig(method, steps, objective, baseline_token,
                        tuple(reference_prompts) if reference_prompts else None)


def _attribution(lm: LanguageModel, enc: Encoding, config: MethodConfig, prompt: str, target: str,
                 scores: torch.Tensor, prob: float, return_convergence_delta: bool, top_k: int) -> Attribution:
    """The :class:`Attribution` of one query from the engine's scores [n_layers, n_neurons] and objective value:
    the convergence delta if asked for, and what the model predicts (:func:`next_token_view`)."""
    delta = convergence_delta(lm, enc, config, scores, prob) if return_convergence_delta else None
    return Attribution(scores=scores, method=config.method, steps=config.effective_steps,
                       baseline=config.describe_baseline(), prompt=prompt.rstrip(), target=target,
                       objective=config.objective, prob=prob, convergence_delta=delta,
                       **next_token_view(lm, enc.prompt_ids, enc.target_ids[0], top_k))


class TargetNotPredicted(UserWarning):
    """The attributed target is not the model's top-1 next token."""


@torch.no_grad()
def next_token_view(lm: LanguageModel, prompt_ids, target_token: int, k: int = 5) -> dict:
    """{"p_first", "top_k", "target_rank"} of the next-token distribution after a prompt (one forward pass)."""
    logits = lm.model(input_ids=torch.tensor([list(prompt_ids)], device=lm.device)).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    best = torch.topk(probs, k)
    rank = int((probs > probs[target_token]).sum()) + 1
    return {"p_first": float(probs[target_token]), "target_rank": rank,
            "top_k": [{"token": lm.tokenizer.decode([int(i)]), "id": int(i), "prob": float(p)}
                      for p, i in zip(best.values, best.indices)]}


def attribute_next_token(lm: LanguageModel, prompt: str, method: str = "ig", steps: int = 20, *,
                         objective: str = "prob", baseline_token: str = "eos", reference_prompts=None,
                         layers: list[int] | None = None, max_rows: int | None = None,
                         memory_gb: float | None = None, cache: AttributionCache | None = None) -> Attribution:
    """Attribute the model's own top-1 next token after `prompt` (whatever it is, with or without a leading
    space) to every neuron: what the model uses to continue a prompt that holds no fact.

    Args:
        lm: a loaded model; prompt: the prompt (trailing whitespace removed); the other arguments as for
            :func:`attribute`.

    Returns:
        An :class:`Attribution` whose ``target`` is the decoded token and ``extra["token_id"]`` its id.

    Example:
        >>> attr = attribute_next_token(lm, "My favourite colour is", method="ig", steps=20)
        >>> attr.target, attr.neurons(0.2)[:3]
    """
    config = MethodConfig(method, steps, objective, baseline_token,
                          tuple(reference_prompts) if reference_prompts else None)
    key = attribution_key(lm, config, prompt, None, layers) if cache is not None else None
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    enc = lm.encode(prompt)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.prompt_ids], device=lm.device)).logits[0, -1]
    token = int(torch.argmax(logits.float()))
    scores, prob = attribute_fast(lm, Encoding(enc.prompt_ids, (token,)), config, layers=layers,
                                  max_rows=max_rows, memory_gb=memory_gb)
    result = Attribution(scores=scores, method=method, steps=config.effective_steps,
                         baseline=config.describe_baseline(), prompt=prompt.rstrip(),
                         target=lm.tokenizer.decode([token]), objective=objective, prob=prob,
                         extra={"token_id": token}, **next_token_view(lm, enc.prompt_ids, token))
    if cache is not None:
        cache.put(key, result)
    return result


def attribute_many(lm: LanguageModel, queries: Iterable, method: str = "ig", steps: int = 20, *, batch: int = 8,
                   progress: bool = True, objective: str = "prob", baseline_token: str = "eos",
                   reference_prompts=None, layers: list[int] | None = None, max_rows: int | None = None,
                   memory_gb: float | None = None, return_convergence_delta: bool = False, top_k: int = 5,
                   warn: bool = True, cache: AttributionCache | None = None) -> Iterator[Attribution]:
    """Stream attributions for many queries (Query objects or (prompt, target) pairs) with one progress bar, in
    the order given, several queries of one shape at a time.

    Queries that share a shape (prefix length, target length and number of baselines:
    :func:`knowloc.attribution.engine.batch_key`) run together, up to `batch` at a time, in one staircase
    (:func:`knowloc.attribution.engine.attribute_fast_many`): each block call, the unembedding and the backward
    pass serve all of them, so the operator calls (kernel launches on a GPU) per attribution fall by about the
    group's size. Every result is built as :func:`attribute` builds it, and its scores equal that attribution's
    up to rounding (float32: about 1e-6 of the largest score).

    Args:
        lm: a model from :func:`knowloc.models.load_model`.
        queries: :class:`knowloc.data.Query` objects, or (prompt, target) pairs.
        method, steps: as for :func:`attribute`.
        batch: at most this many queries of one shape in one staircase; 1 attributes one query after the other
            with :func:`attribute` (as before batching).
        progress: show a progress bar (it advances as results are yielded).
        objective, baseline_token, reference_prompts, layers, return_convergence_delta, top_k, warn: as for
            :func:`attribute`.
        max_rows, memory_gb: the engine's rows per chunk, or its activation budget, for one staircase: a group of
            Q queries shares them (max_rows // Q rows of each query per chunk).
        cache: an :class:`~knowloc.attribution.disk_cache.AttributionCache`: hits are read from it (before any
            computation), misses computed in groups and then stored, under the same rules as :func:`attribute`.

    Returns:
        An iterator of :class:`Attribution`, one per query, in the order of `queries`. A query whose results are
        ready is yielded once every query before it is; a query that cannot be attributed (an empty prompt, say)
        raises its :class:`~knowloc.errors.KnowlocError` when the stream reaches it.

    Example:
        >>> pairs = [("The capital of France is", "Paris"), ("The capital of Italy is", "Rome")]
        >>> for attr in attribute_many(lm, pairs, method="ig", steps=20, batch=8):
        ...     print(attr.target, attr.neurons(0.2)[:3])
    """
    options = dict(objective=objective, baseline_token=baseline_token, reference_prompts=reference_prompts,
                   layers=layers, max_rows=max_rows, memory_gb=memory_gb,
                   return_convergence_delta=return_convergence_delta, top_k=top_k, warn=warn, cache=cache)
    items = list(queries)
    if batch < 1:
        raise KnowlocError(f"batch must be at least 1, got {batch}")
    if batch == 1:
        for item in tqdm(items, desc=f"attribution ({method})", unit="query", disable=not progress):
            prompt, target = item if isinstance(item, tuple) else (item, None)
            yield attribute(lm, prompt, target, method=method, steps=steps, **options)
        return
    config = _method_config(method, steps, objective, baseline_token, reference_prompts)
    cache = cache if not return_convergence_delta and top_k == 5 else None
    slots: list[Attribution | KnowlocError | None] = [None] * len(items)  # a result, or the error to raise there
    groups: dict[tuple, list[_Pending]] = {}  # batch_key -> the queries to compute, in order
    for i, item in enumerate(items):
        try:
            prompt, target = _prompt_and_target(*(item if isinstance(item, tuple) else (item, None)))
            key = attribution_key(lm, config, prompt, target, layers) if cache is not None else None
            slots[i] = cache.get(key) if cache is not None else None
            if slots[i] is None:
                enc = lm.encode(prompt, target)
                groups.setdefault(batch_key(lm, enc, config), []).append(_Pending(i, prompt, target, enc, key))
        except KnowlocError as exc:  # raised when the stream reaches this query, as `attribute` would
            slots[i] = exc
    runs = sorted((pending[start:start + batch] for pending in groups.values()
                   for start in range(0, len(pending), batch)), key=lambda run: run[0].index)
    done = 0  # results yielded so far
    with tqdm(total=len(items), desc=f"attribution ({method})", unit="query", disable=not progress) as bar:
        for run in [None] + runs:  # None: yield what the cache had before computing anything
            if run is not None:
                results = attribute_fast_many(lm, [p.enc for p in run], config, layers=layers, max_rows=max_rows,
                                              memory_gb=memory_gb)
                for p, (scores, prob) in zip(run, results):
                    slots[p.index] = result = _attribution(lm, p.enc, config, p.prompt, p.target, scores, prob,
                                                           return_convergence_delta, top_k)
                    if cache is not None:
                        cache.put(p.key, result)
            while done < len(slots) and slots[done] is not None:
                result = slots[done]
                if isinstance(result, KnowlocError):
                    raise result
                if result.warning and warn:
                    warnings.warn(result.warning, TargetNotPredicted, stacklevel=2)
                slots[done] = None  # the caller holds it now
                done += 1
                bar.update(1)
                yield result


@dataclass(frozen=True)
class _Pending:
    """A query of `attribute_many` to compute: its place in the input, prompt, target, encoding and cache key."""

    index: int
    prompt: str
    target: str
    enc: Encoding
    key: str | None
