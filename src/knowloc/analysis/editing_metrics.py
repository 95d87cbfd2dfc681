"""Pure success rules and scores for knowledge editing (erasure and update).

Used to evaluate edits of located knowledge neurons as in Chen et al. (ICLR 2025), "Knowledge
Localization: Mission Not Accomplished? Enter Query Localization!" (following Dai et al. 2022 and
the Rel/Gen/Loc metrics of Yao et al. 2023, "Editing Large Language Models"):

* erasure succeeds when, after the edit, the gold object's first token is not the argmax AND
  its probability fell by at least 50% relative: ``p_after <= 0.5 * p_before``;
* update succeeds when the new object ``o'`` is strictly more probable than the old ``o``;
* relative change ``(after - before) / before`` (nan where ``before == 0``);
* locality is kept when an unrelated query's prediction is unchanged;
* the average score is the mean of the available (non-nan) parts of Rel, Gen and Loc;
* an edit's Rel is its success on the edited query, its Gen the mean success on the other queries
  (:func:`edit_scores`, the one place both are computed);
* perplexity ``PPL = exp(NLL_sum / n_tokens)`` (natural log) and ``ΔPPL = PPL_after - PPL_before``;
* fluency change ``ΔlogPPL = log(PPL_after / PPL_before) = log PPL_after - log PPL_before``, the change of
  the mean token NLL: exactly 0 for an unchanged model, finite where PPL itself overflows, and symmetric
  (a doubling is +0.69, a halving -0.69), so it can be averaged over edits where ΔPPL cannot.

CounterFact's metrics (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 3.2), for a
rewrite of ``(s, r, o)`` to ``o*``:

* efficacy score ``ES = mean[P(o*) > P(o)]`` and magnitude ``EM = mean(P(o*) - P(o))`` on the rewrite prompt;
  the paraphrase score and magnitude are the same on its paraphrases (:func:`preference`);
* neighborhood score ``NS = mean[P(o_c) > P(o*)]`` over neighborhood prompts, each with its own correct
  answer ``o_c`` (:func:`neighborhood_score`);
* generation entropy ``GE = (2/3 H_2 + 4/3 H_3) / 2``, ``H_n = -sum_g f(g) log2 f(g)`` over the frequencies of
  the text's word n-grams (:func:`generation_entropy`): low when a continuation repeats itself;
* a generation hit: the greedy continuation names ``o*`` (:func:`generation_hit`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import entropy

from knowloc.analysis._arrays import check_unit_interval, to_numpy_f64
from knowloc.errors import KnowlocError

__all__ = [
    "erase_success",
    "update_success",
    "relative_change",
    "locality_kept",
    "avg_score",
    "edit_scores",
    "perplexity",
    "log_perplexity",
    "delta_ppl",
    "delta_log_ppl",
    "preference",
    "neighborhood_score",
    "ngram_entropy",
    "generation_entropy",
    "generation_hit",
]

ArrayLike = float | np.ndarray | torch.Tensor


def _out(arr: np.ndarray) -> float | np.ndarray:
    return float(arr) if arr.ndim == 0 else arr


def erase_success(p_before: float, p_after: float, top1_after_is_gold: bool) -> bool:
    """Erasure succeeded: gold first token no longer top-1 AND ``p_after <= 0.5 * p_before``.

    ``p_before`` / ``p_after`` are the gold first token's probabilities before / after the edit
    (in [0, 1]). When ``p_before == 0`` the relative drop is undefined and the result is False.
    """
    pb = check_unit_interval(p_before, "p_before")
    pa = check_unit_interval(p_after, "p_after")
    if pb == 0.0:
        return False
    return (not bool(top1_after_is_gold)) and pa <= 0.5 * pb


def update_success(p_new_after: float, p_gold_after: float) -> bool:
    """Update succeeded: after the edit ``P(o') > P(o)`` strictly (ties fail)."""
    pn = check_unit_interval(p_new_after, "p_new_after")
    pg = check_unit_interval(p_gold_after, "p_gold_after")
    return pn > pg


def relative_change(before: ArrayLike, after: ArrayLike) -> float | np.ndarray:
    """``(after - before) / before`` elementwise; nan where ``before == 0``."""
    b = to_numpy_f64(before, "before")
    a = to_numpy_f64(after, "after")
    try:
        b, a = np.broadcast_arrays(b, a)
    except ValueError as exc:
        raise KnowlocError(f"before and after shapes differ: {b.shape} vs {a.shape}") from exc
    out = np.full(b.shape, np.nan)
    np.divide(a - b, b, out=out, where=b != 0)
    return _out(out)


def locality_kept(pred_before: Any, pred_after: Any) -> bool:
    """True when the prediction for an unrelated query is unchanged (exact equality).

    Works for ints, strings, token-id lists, numpy arrays and torch tensors (shape and values must
    both match).
    """
    if isinstance(pred_before, (np.ndarray, torch.Tensor)) or isinstance(
        pred_after, (np.ndarray, torch.Tensor)
    ):
        b = pred_before.detach().cpu().numpy() if isinstance(pred_before, torch.Tensor) else pred_before
        a = pred_after.detach().cpu().numpy() if isinstance(pred_after, torch.Tensor) else pred_after
        return bool(np.array_equal(np.asarray(b), np.asarray(a)))
    return bool(pred_before == pred_after)


def avg_score(rel: ArrayLike | None, gen: ArrayLike | None, loc: ArrayLike | None) -> float | np.ndarray:
    """Mean of Rel, Gen and Loc over the parts that are available.

    A part that is ``None`` or nan is left out: ``avg = sum(available) / count(available)``;
    nan when none is available. Works elementwise on arrays.
    """
    parts = [np.nan if p is None else p for p in (rel, gen, loc)]
    arrs = [to_numpy_f64(p, "score") for p in parts]
    try:
        stacked = np.stack(np.broadcast_arrays(*arrs))
    except ValueError as exc:
        raise KnowlocError("rel, gen and loc shapes differ") from exc
    present = ~np.isnan(stacked)
    count = present.sum(axis=0)
    total = np.where(present, stacked, 0.0).sum(axis=0)
    out = np.full(count.shape, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return _out(out)


def edit_scores(success: Sequence[bool], index: int, loc: float,
                generalize_on: Sequence[int] | None = None) -> tuple[float, float, float]:
    """Rel, Gen and Avg of one edit from the rule's verdict on each of the fact's queries.

    Args:
        success: the success rule's verdict on each query of the fact, with the edit applied.
        index: the edited query ``q_i``.
        loc: the edit's Loc (nan when there were no locality prompts).
        generalize_on: the queries Gen is measured on (default: every query but ``index``).

    Returns:
        ``(rel, gen, avg)``: ``rel = success[index]`` (0 or 1); ``gen`` the mean success over
        ``generalize_on`` (nan when it is empty); ``avg = avg_score(rel, gen, loc)``.

    Raises:
        KnowlocError: an index outside ``success``.

    Example:
        >>> edit_scores([True, False, True, True], 0, loc=0.5)
        (1.0, 0.6666666666666666, 0.7222222222222222)
    """
    n = len(success)
    others = [j for j in range(n) if j != index] if generalize_on is None else list(generalize_on)
    for j in (index, *others):
        if isinstance(j, bool) or not hasattr(j, "__index__") or not 0 <= int(j) < n:
            raise KnowlocError(f"query index {j!r} out of range for {n} queries")
    rel = float(success[index])
    gen = float(np.mean([success[j] for j in others])) if others else float("nan")
    return rel, gen, float(avg_score(rel, gen, loc))


def perplexity(nll_sum: ArrayLike, n_tokens: ArrayLike) -> float | np.ndarray:
    """``PPL = exp(nll_sum / n_tokens)``; ``nll_sum`` is the summed natural-log NLL.

    Raises:
        KnowlocError: ``n_tokens <= 0``.
    """
    with np.errstate(over="ignore"):  # a wrecked model's PPL is inf; use log_perplexity to compare such
        return _out(np.exp(log_perplexity(nll_sum, n_tokens)))


def _after_minus_before(before: ArrayLike, after: ArrayLike, name: str) -> float | np.ndarray:
    b = to_numpy_f64(before, f"{name}before")
    a = to_numpy_f64(after, f"{name}after")
    try:
        return _out(np.asarray(a - b))
    except ValueError as exc:
        raise KnowlocError("before and after shapes differ") from exc


def delta_ppl(before: ArrayLike, after: ArrayLike) -> float | np.ndarray:
    """``ΔPPL = PPL_after - PPL_before`` (absolute change; positive = the edit hurt fluency)."""
    return _after_minus_before(before, after, "")


def log_perplexity(nll_sum: ArrayLike, n_tokens: ArrayLike) -> float | np.ndarray:
    """``log PPL = nll_sum / n_tokens`` (natural log): the mean token NLL, never overflowing.

    Raises:
        KnowlocError: ``n_tokens <= 0``.
    """
    nll = to_numpy_f64(nll_sum, "nll_sum")
    n = to_numpy_f64(n_tokens, "n_tokens")
    if np.any(~(n > 0)):
        raise KnowlocError("n_tokens must be > 0")
    return _out(nll / n)


def delta_log_ppl(log_before: ArrayLike, log_after: ArrayLike) -> float | np.ndarray:
    """``ΔlogPPL = log PPL_after - log PPL_before = log(PPL_after / PPL_before)`` from log perplexities.

    Exactly 0 when before and after are equal; > 0 means the edit hurt fluency
    (``log(1000) ≈ 6.91`` is a 1000-fold perplexity).
    """
    return _after_minus_before(log_before, log_after, "log_")


def preference(p_new: ArrayLike, p_old: ArrayLike) -> tuple[float, float]:
    """CounterFact's efficacy (or paraphrase) score and magnitude over prompts: ``(mean[P(o*) > P(o)],
    mean(P(o*) - P(o)))`` from each prompt's probabilities of the new object ``p_new`` and the old ``p_old``;
    ``(nan, nan)`` for no prompt.

    Example:
        >>> preference([0.6, 0.1], [0.2, 0.3])
        (0.5, 0.09999999999999999)
    """
    new = np.atleast_1d(to_numpy_f64(p_new, "p_new"))
    old = np.atleast_1d(to_numpy_f64(p_old, "p_old"))
    if new.shape != old.shape:
        raise KnowlocError(f"p_new and p_old shapes differ: {new.shape} vs {old.shape}")
    if not new.size:
        return float("nan"), float("nan")
    return float(np.mean(new > old)), float(np.mean(new - old))


def neighborhood_score(p_true: ArrayLike, p_new: ArrayLike) -> float:
    """CounterFact's neighborhood score: the share of neighborhood prompts whose own answer ``o_c`` stays more
    probable than the edit's new object, ``mean[P(o_c) > P(o*)]`` (nan for no prompt).

    Example:
        >>> neighborhood_score([0.5, 0.1, 0.3], [0.2, 0.4, 0.1])
        0.6666666666666666
    """
    return preference(p_true, p_new)[0]


WORDS = re.compile(r"\w+|[^\w\s]")  # words and punctuation marks, as nltk's word_tokenize splits plain text


def ngram_entropy(words: Sequence[str], n: int) -> float:
    """``H_n = -sum_g f(g) log2 f(g)`` over the relative frequencies ``f`` of the n-grams ``g`` of ``words``
    (0 with fewer than ``n`` words)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise KnowlocError(f"n must be an integer >= 1, got {n!r}")
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return float(entropy(list(counts.values()), base=2)) if counts else 0.0


def generation_entropy(text: str) -> float:
    """Meng et al.'s fluency of one generated text: ``(2/3 H_2 + 4/3 H_3) / 2`` over its words (module
    docstring; ROME reports it x 100). A text that repeats one phrase scores near 0.

    Example:
        >>> generation_entropy("the cat sat on the mat")  # 5 distinct bigrams, 4 distinct trigrams
        2.107309364962454
    """
    if not isinstance(text, str):
        raise KnowlocError(f"a generated text must be a string, got {type(text).__name__}")
    words = WORDS.findall(text)
    return (2 / 3 * ngram_entropy(words, 2) + 4 / 3 * ngram_entropy(words, 3)) / 2


def generation_hit(text: str, target: str) -> bool:
    """Whether a generated text names ``target`` (case-insensitive, as whole words)."""
    if not isinstance(text, str) or not isinstance(target, str) or not target.strip():
        raise KnowlocError("generation_hit needs a text and a non-empty target string")
    return re.search(rf"(?<!\w){re.escape(target.strip().lower())}(?!\w)", text.lower()) is not None
