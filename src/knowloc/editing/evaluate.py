"""Measuring one editing trial: Rel / Gen / Loc / Avg, ΔPPL and gold-probability changes.

A trial edits a neuron set (erase or update, see :mod:`knowloc.editing.operations`) located for query
``q_i`` of a fact and measures, with the edit applied:

* ``rel``  -- success on ``q_i`` itself (0 or 1);
* ``gen``  -- mean success over the fact's other neighbor queries ``q_j, j != i`` (nan if none);
* ``loc``  -- share of locality (unrelated) prompts whose argmax next token is unchanged (nan if none);
* ``avg``  -- mean of the available parts of rel, gen, loc (:func:`knowloc.analysis.avg_score`; rel, gen and
  avg all come from :func:`knowloc.analysis.editing_metrics.edit_scores`);
* ``dlogppl`` -- ``log(PPL_after / PPL_before)`` on the neutral texts (nan if none): the change of the mean
  token NLL, exactly 0 for an unchanged model and finite even when PPL itself overflows;
* ``dppl`` -- perplexity after minus before (raw; heavy-tailed, kept for the CSV tables only);
* ``dprob_self`` / ``dprob_neighbors`` -- relative change ``(after - before) / before`` of the gold
  first-token probability on ``q_i`` / mean over the neighbors.

Success rules (:mod:`knowloc.analysis.editing_metrics`): erasure succeeds on a query when the gold first
token is no longer the argmax AND its probability fell by at least 50% relative; update succeeds when the
new object's first token ``o'`` is strictly more probable than the gold one ``o``.

Everything that does not depend on the edit is computed once per fact in a :class:`Baseline`, which also
records the fact's batches block by block and measures each trial (:meth:`Baseline.evaluate`): a trial re-runs
only the blocks from its lowest edited layer up (:mod:`knowloc.models.replay`), for the fact and locality prompts
in one batch and the neutral texts in another. :meth:`Baseline.evaluate_many` measures several trials of the fact
in one replay, each trial's edit applied to its own copy of the batches in activation space (equal up to float
rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from knowloc.analysis.editing_metrics import (
    delta_log_ppl,
    delta_ppl,
    edit_scores,
    erase_success,
    locality_kept,
    log_perplexity,
    relative_change,
    update_success,
)
from knowloc.editing.operations import (
    OPERATIONS,
    NeuronEdit,
    Neurons,
    RowEdit,
    check_rule,
    neuron_edit,
    rows_edited,
    target_tokens,
)
from knowloc.errors import KnowlocError
from knowloc.models.hooks import trace_activations
from knowloc.models.lm import LanguageModel
from knowloc.models.replay import RecordedBatch
from knowloc.models.scoring import next_token_distributions, pad_right

__all__ = [
    "EditTrial",
    "Baseline",
    "TrialResult",
    "compute_baseline",
    "text_nll",
    "perplexity_of_texts",
]


# --------------------------------------------------------------------------------------------------------
# perplexity


def _text_ids(lm: LanguageModel, text: str) -> list[int]:
    """Token ids of a text (with the tokenizer's special tokens, e.g. Gemma's BOS), cut to the context."""
    if not isinstance(text, str):
        raise KnowlocError(f"texts must be strings, got {type(text).__name__}")
    ids = list(lm.tokenizer(text)["input_ids"])
    limit = lm.max_positions
    return ids[:limit] if limit else ids


@torch.no_grad()
def text_nll(lm: LanguageModel, texts: Sequence[str], batch_size: int = 64) -> tuple[float, int]:
    """``(sum of token NLLs in nats, number of predicted tokens)`` over all texts, teacher-forced.

    Each text is tokenized on its own (texts longer than the model's context are cut to it); token ``t``
    of a text is predicted from tokens ``< t``, so a text of ``n`` tokens contributes ``n - 1``. Texts are
    right-padded into batches of ``batch_size`` and the pad positions are masked out of the sum, so the
    result equals the per-text unpadded computation (up to float rounding).
    """
    if isinstance(texts, str):
        raise KnowlocError("texts must be a list of strings, not one string")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KnowlocError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seqs = [_text_ids(lm, t) for t in texts]
    nll_sum = 0.0
    n_tokens = 0
    for start in range(0, len(seqs), batch_size):
        chunk = [s for s in seqs[start:start + batch_size] if len(s) >= 2]
        if not chunk:
            continue
        ids, mask = pad_right(lm, chunk)
        chunk_sum, chunk_tokens = _masked_nll(lm.model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        nll_sum += chunk_sum
        n_tokens += chunk_tokens
    return nll_sum, n_tokens


def log_perplexity_of_texts(lm: LanguageModel, texts: Sequence[str], batch_size: int = 64) -> float:
    """``log PPL = sum of token NLLs / number of predicted tokens`` over all texts (see :func:`text_nll`)."""
    if isinstance(texts, str):
        raise KnowlocError("texts must be a list of strings, not one string")
    if not texts:
        raise KnowlocError("perplexity needs a non-empty list of texts")
    nll_sum, n_tokens = text_nll(lm, texts, batch_size)
    if n_tokens == 0:
        raise KnowlocError("the texts have no token to predict (each needs at least 2 tokens)")
    return float(log_perplexity(nll_sum, n_tokens))


def _masked_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token NLLs (nats) over the unpadded positions of a right-padded batch, and their count."""
    logits = logits[:, :-1].float()
    targets = ids[:, 1:]
    keep = mask[:, 1:].bool()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return float(nll.view(targets.shape)[keep].double().sum()), int(keep.sum())


def perplexity_of_texts(lm: LanguageModel, texts: Sequence[str], batch_size: int = 64) -> float:
    """``exp(sum of token NLLs / number of predicted tokens)`` over all texts (see :func:`text_nll`)."""
    return float(np.exp(log_perplexity_of_texts(lm, texts, batch_size)))


# --------------------------------------------------------------------------------------------------------
# trials


@dataclass(frozen=True)
class EditTrial:
    """One edit of one fact.

    prompts: the fact's neighbor query prompts; ``index``: the edited query ``q_i`` (whose neurons these are);
    gold: the fact's object string ``o`` (its first token, of ``" " + gold``, is scored);
    neurons: ``[(layer, index), ...]`` or ``{layer: [index, ...]}``; operation: ``"erase"`` | ``"update"``;
    new_object: for update, the new object ``o'`` (first token of ``" " + new_object``);
    lambda1 / lambda2: the update coefficients (Dai et al. 2022: 1 and 8);
    update_rule: ``dai`` | ``signed`` | ``calibrated`` (:mod:`knowloc.editing.operations`); the sign-aware rules
    read each neuron's activation at the last position of ``prompts[index]`` from the baseline.
    """

    prompts: Sequence[str]
    index: int
    gold: str
    neurons: Neurons
    operation: str = "erase"
    new_object: str | None = None
    lambda1: float = 1.0
    lambda2: float = 8.0
    update_rule: str = "dai"

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str) or not self.prompts:
            raise KnowlocError("a trial needs a non-empty list of prompts")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        _check_index(self.index, len(self.prompts))
        if self.operation not in OPERATIONS:
            raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {self.operation!r}")
        _check_objects(self.operation, self.gold, self.new_object)
        if self.operation == "update":
            check_rule(self.update_rule)


def _check_index(index: object, n_prompts: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_prompts:
        raise KnowlocError(f"index {index!r} out of range for {n_prompts} prompts")


def _check_objects(operation: str, gold: object, new_object: object) -> None:
    """A non-empty gold object, and for an update a non-empty new object (one line otherwise)."""
    if not isinstance(gold, str) or not gold.strip():
        raise KnowlocError("empty gold object")
    if operation == "update" and (not isinstance(new_object, str) or not new_object.strip()):
        raise KnowlocError("an update trial needs a non-empty new_object")


@dataclass(frozen=True)
class Baseline:
    """Unedited measurements of one fact, computed once (:func:`compute_baseline`) and reused by its trials.

    probs: next-token distributions ``[n_prompts, vocab]`` of the fact's prompts;
    locality_probs / locality_top1: distributions ``[n_locality, vocab]`` and argmax tokens of the locality
    prompts; ppl / logppl: perplexity of the neutral texts and its log (nan when there are none);
    activations: neuron activations ``[n_prompts, n_layers, n_neurons]`` at each fact prompt's last position
    (what the sign-aware update rules read); recorded: the fact's batches block by block; lm: the model, which
    :meth:`evaluate` edits and measures.
    """

    model_name: str
    prompts: tuple[str, ...]
    probs: torch.Tensor
    top1: tuple[int, ...]
    locality_prompts: tuple[str, ...]
    locality_probs: torch.Tensor
    locality_top1: tuple[int, ...]
    neutral_texts: tuple[str, ...]
    ppl: float
    logppl: float = math.nan
    activations: torch.Tensor | None = field(default=None, repr=False, compare=False)
    recorded: FactBatches | None = field(default=None, repr=False, compare=False)
    lm: LanguageModel | None = field(default=None, repr=False, compare=False)

    def evaluate(self, trial: EditTrial, locality_gold_tokens: Sequence[int] | None = None) -> TrialResult:
        """Apply the trial's edit to the baseline's model, measure, restore the model (bit-exactly, also on an
        exception).

        The edited model is measured on the baseline's own prompts, locality prompts and neutral texts; a trial
        re-runs only the blocks from its lowest edited layer up (:class:`FactBatches`).

        Args:
            trial: prompts (the baseline's), the edited query's index, gold object, neurons, operation and, for
                an update, the new object, lambdas and update rule (:class:`EditTrial`).
            locality_gold_tokens: optional, one token id per locality prompt of the baseline; only feeds
                ``dprob_locality``.

        Returns:
            :class:`TrialResult`: rel, gen, loc, avg, dlogppl, dppl, dprob_self, dprob_neighbors, and per prompt
            ``success`` and ``dprob`` (the module docstring defines each).

        Raises:
            KnowlocError: a baseline without its model (not from :func:`compute_baseline`) or of other prompts
                than the trial's, bad neurons or tokens.

        Example:
            >>> base = compute_baseline(lm, prompts, loc_prompts, texts)
            >>> trial = EditTrial(prompts, 0, "Paris", [(12, 345)], "update", "Rome", lambda2=2.0,
            ...                   update_rule="calibrated")
            >>> base.evaluate(trial).rel
        """
        locality_gold_tokens = self._locality_tokens(locality_gold_tokens)
        edit = self._prepare(trial)
        with edit.applied(self._model()):
            # blocks below the lowest edited layer are untouched: restart there (exact, see models.replay)
            measured = self._measure(edit.start)
        return self._score(edit, trial.index, measured, locality_gold_tokens)

    def evaluate_current(self, index: int, gold: str, new_object: str, start: int | None, *, n_neurons: int = 0,
                         locality_gold_tokens: Sequence[int] | None = None) -> TrialResult:
        """Measure the model as it is now, with an edit the caller applied to blocks >= ``start`` (None: nothing
        changed), as an update of query ``index`` from ``gold`` to ``new_object`` (what the editors of
        :mod:`knowloc.editing.editors` measure): the same measurements and scores as :meth:`evaluate` of an
        update trial, re-running only the blocks from ``start`` up.

        Args:
            index: the edited query; gold / new_object: its old and new object; start: the lowest changed layer;
            n_neurons: reported as the result's ``n_neurons``; locality_gold_tokens: as in :meth:`evaluate`.

        Example:
            >>> with Rome().apply(lm, request) as applied:
            ...     base.evaluate_current(0, "Paris", "Rome", applied.start).rel
        """
        lm = self._model()
        locality_gold_tokens = self._locality_tokens(locality_gold_tokens)
        _check_index(index, len(self.prompts))
        _check_objects("update", gold, new_object)
        old, new = target_tokens(lm, "update", gold, new_object)
        if start is not None and not (isinstance(start, int) and 0 <= start < lm.n_layers):
            raise KnowlocError(f"start layer {start!r} out of range for {lm.n_layers} layers")
        return self._score(NeuronEdit("update", [], old, new), index, self._measure(start), locality_gold_tokens,
                           n_neurons=n_neurons)

    def evaluate_many(self, trials: Sequence[EditTrial], locality_gold_tokens: Sequence[int] | None = None, *,
                      max_rows: int = 256, schedule: str = "join") -> list[TrialResult]:
        """``[self.evaluate(t, locality_gold_tokens) for t in trials]``, measured in batched replays: the
        fact's recorded batches are stacked once per trial and each trial's edit is applied to its own rows in
        activation space, the weights never change (:func:`knowloc.editing.operations.rows_edited`).

        Equivalence: the MLP output at a position is ``sum_n a_n v_n (+ bias)``. Erasing neuron n
        (``v_n <- 0``) is the same as ``a_n <- 0`` in the down-projection's input of the trial's rows; an update
        ``v_n <- v_n + dv_n`` is the same as adding ``a_n * dv_n`` to the down-projection's output of those rows,
        ``a_n`` the row's own activation at each position (the deltas ``dv_n`` are computed by the same code as
        the weight edit's). Only the order of float sums differs, and the batch is larger, so the results agree
        with :meth:`evaluate` up to float rounding. Tolerance in float32: ``dprob*`` and ``dlogppl`` within
        ``atol=1e-6, rtol=1e-5``, ``ppl_after`` and ``dppl`` within ``1e-6 x ppl_before`` (tested on tiny GPT-2,
        LLaMA and Gemma-2; measured on SmolLM2: at most 4e-6 on dprob, 1e-6 on dlogppl; erasures came out
        bit-identical); the thresholded metrics (``success``, rel, gen, loc, avg) are identical unless a
        probability lies within that rounding of a threshold (identical in the tests and the benchmark). In
        bf16 / fp16 an update agrees only up to that dtype's rounding (the weight path rounds ``v_n + dv_n`` to
        it): about 1e-3 absolute on dprob on the tiny models.

        Trials are sorted by their lowest edited layer and cut into chunks of at most ``max_rows`` rows per
        stacked batch (``max_rows // rows of the larger recorded batch`` trials, at least 1); ``schedule``:

        * ``join`` (default): one replay per chunk; a trial's rows join it at the trial's own lowest layer, so
          each row runs exactly the blocks its single replay runs (:meth:`RecordedBatch.run_copies`);
        * ``lowest``: every row of a chunk re-runs from the chunk's lowest layer;
        * ``grouped``: chunks hold trials of one lowest layer only.

        All give the same results; ``lowest`` and ``grouped`` are there to compare speed
        (``benchmarks/batched_trials.py``). Every trial is validated before anything runs; a baseline without
        recorded batches falls back to :meth:`evaluate` per trial. The model is unchanged afterwards, also
        when an exception is raised (the row edits are hooks removed on exit).

        Args:
            trials: trials of this baseline's fact (any mix of erase and update, rules and lambdas).
            locality_gold_tokens: as in :meth:`evaluate`.
            max_rows: the most sequence rows of one stacked batch (bounds memory: about ``max_rows x width x
                n_neurons`` activations per block).
            schedule: ``join``, ``lowest`` or ``grouped``.

        Returns:
            one :class:`TrialResult` per trial, in the order of ``trials``.

        Example:
            >>> results = base.evaluate_many([EditTrial(prompts, 0, "Paris", [(12, 345)]),
            ...                               EditTrial(prompts, 1, "Paris", [(20, 7)], "update", "Rome")])
        """
        lm = self._model()
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise KnowlocError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if schedule not in SCHEDULES:
            raise KnowlocError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        locality_gold_tokens = self._locality_tokens(locality_gold_tokens)
        trials = list(trials)
        edits = [self._prepare(trial) for trial in trials]  # validates every trial before anything runs
        if not self._replayable():
            return [self.evaluate(trial, locality_gold_tokens) for trial in trials]
        recorded: FactBatches = self.recorded  # type: ignore[assignment]
        measured: list = [None] * len(trials)
        rows: list[tuple[int, RowEdit]] = []
        for k, edit in enumerate(edits):
            row = edit.rows(lm)
            if row.start is None:
                measured[k] = recorded.measure(None)  # no neuron: the unedited model, as evaluate measures it
            else:
                rows.append((k, row))
        rows.sort(key=lambda item: item[1].start)  # type: ignore[arg-type, return-value]
        for chunk in _chunks(rows, max(1, max_rows // recorded.widest), schedule):
            starts = [row.start for _, row in chunk]
            if schedule == "lowest":
                starts = [starts[0]] * len(chunk)
            for (k, _), result in zip(chunk, recorded.measure_copies([row for _, row in chunk], starts)):
                measured[k] = result
        return [self._score(edit, trial.index, m, locality_gold_tokens)
                for trial, edit, m in zip(trials, edits, measured)]

    # --- the parts of a trial's measurement ---------------------------------------------------------------

    def _model(self) -> LanguageModel:
        if self.lm is None:
            raise KnowlocError("this baseline holds no model to edit: compute it with compute_baseline")
        return self.lm

    def _replayable(self) -> bool:
        return self.recorded is not None and self.recorded.lm is self.lm

    def _measure(self, start: int | None) -> tuple:
        """(probs, top1, locality probs, locality top1, log PPL of the texts) of the model as it is now, whose
        blocks below ``start`` are unchanged: the recorded batches re-run from ``start`` (None: the recorded
        outputs), or full forward passes for a baseline without recorded batches."""
        if self._replayable():
            return self.recorded.measure(start)  # type: ignore[union-attr]
        lm = self._model()
        probs, top1 = _distributions(lm, self.prompts)
        loc_probs, loc_top1 = _distributions(lm, self.locality_prompts)
        logppl_after = log_perplexity_of_texts(lm, self.neutral_texts) if self.neutral_texts else math.nan
        return probs, top1, loc_probs, loc_top1, logppl_after

    def _locality_tokens(self, locality_gold_tokens: Sequence[int] | None) -> tuple[int, ...] | None:
        """The locality gold tokens as a tuple, checked against the locality prompts and the vocabulary."""
        if locality_gold_tokens is None:
            return None
        locality_gold_tokens = tuple(locality_gold_tokens)
        vocab = self.probs.shape[1]
        if len(locality_gold_tokens) != len(self.locality_prompts):
            raise KnowlocError(f"{len(locality_gold_tokens)} locality gold tokens for "
                               f"{len(self.locality_prompts)} locality prompts")
        for t in locality_gold_tokens:
            if isinstance(t, bool) or not hasattr(t, "__index__") or not 0 <= int(t) < vocab:
                raise KnowlocError(f"locality gold token {t!r} is not a token id of the vocabulary")
        return locality_gold_tokens

    def _prepare(self, trial: EditTrial) -> NeuronEdit:
        """The trial's edit, checked (:func:`knowloc.editing.operations.neuron_edit`, the edit the ``kn`` editor
        makes too): gold and new first tokens, normalized neurons, their activations on the edited query
        (sign-aware rules, read from the baseline)."""
        lm = self._model()
        if self.prompts != trial.prompts:
            raise KnowlocError("the baseline was computed on other prompts than the trial's")
        sign_aware = trial.operation == "update" and trial.update_rule != "dai"
        if sign_aware and self.activations is None:
            raise KnowlocError(f"the {trial.update_rule!r} rule needs a baseline from compute_baseline")
        return neuron_edit(lm, trial.operation, trial.neurons, trial.gold, trial.new_object, trial.update_rule,
                           trial.lambda1, trial.lambda2,
                           self.activations[trial.index] if sign_aware else None)  # type: ignore[index]

    def _score(self, edit: NeuronEdit, i: int, measured: tuple, locality_gold_tokens: tuple[int, ...] | None,
               n_neurons: int | None = None) -> TrialResult:
        """The scores of an edit of query ``i`` from the edited model's measurements (probs, top1, locality probs,
        locality top1, log PPL of the texts): the core :meth:`evaluate`, :meth:`evaluate_many` and
        :meth:`evaluate_current` share."""
        probs, top1, loc_probs, loc_top1, logppl_after = measured
        gold, new, neurons = edit.old_token, edit.new_token, edit.neurons
        locality_prompts, neutral_texts = self.locality_prompts, self.neutral_texts
        ppl_after = _exp(logppl_after)

        success: list[bool] = []
        dprob: list[float] = []
        for j in range(len(self.prompts)):
            p_before = _prob(self.probs[j, gold])
            p_after = _prob(probs[j, gold])
            if edit.operation == "erase":
                ok = erase_success(p_before, p_after, top1[j] == gold)
            else:
                ok = update_success(_prob(probs[j, new]), p_after)
            success.append(bool(ok))
            dprob.append(float(relative_change(float(self.probs[j, gold]), float(probs[j, gold]))))

        others = [j for j in range(len(self.prompts)) if j != i]
        loc = (float(np.mean([locality_kept(b, a) for b, a in zip(self.locality_top1, loc_top1)]))
               if locality_prompts else math.nan)
        rel, gen, avg = edit_scores(success, i, loc)
        dprob_locality = math.nan
        if locality_gold_tokens:
            # on the CPU, where the baseline's and the measured probabilities are (results come back on the CPU)
            idx = torch.arange(len(locality_prompts), device=self.locality_probs.device)
            toks = torch.tensor([int(t) for t in locality_gold_tokens], device=self.locality_probs.device)
            dprob_locality = _nanmean(np.atleast_1d(relative_change(self.locality_probs[idx, toks],
                                                                    loc_probs[idx, toks])).tolist())
        dppl = float(delta_ppl(self.ppl, ppl_after)) if neutral_texts else math.nan
        dlogppl = float(delta_log_ppl(self.logppl, logppl_after)) if neutral_texts else math.nan
        return TrialResult(
            rel=rel, gen=gen, loc=loc, avg=avg, dppl=dppl, dlogppl=dlogppl,
            dprob_self=dprob[i], dprob_neighbors=_nanmean([dprob[j] for j in others]),
            operation=edit.operation,
            n_neurons=len(neurons) if n_neurons is None else n_neurons, success=tuple(success), dprob=tuple(dprob),
            dprob_locality=dprob_locality, ppl_before=self.ppl, ppl_after=ppl_after,
        )


SCHEDULES = ("join", "lowest", "grouped")


def _chunks(rows: list, size: int, schedule: str) -> list[list]:
    """`rows` (sorted by start) cut into chunks of at most `size`; `grouped`: a chunk never mixes starts."""
    groups = [rows]
    if schedule == "grouped":
        groups = []
        for item in rows:
            if groups and groups[-1][0][1].start == item[1].start:
                groups[-1].append(item)
            else:
                groups.append([item])
    return [group[i:i + size] for group in groups for i in range(0, len(group), size)]


class FactBatches:
    """The sequences a fact's trials measure, as recorded batches (:class:`knowloc.models.replay.RecordedBatch`):
    the fact's prompts with the locality prompts in one batch, the neutral texts in another (kept apart so that
    the short prompts are not padded to the texts' length). Under an edit of layers >= L both restart at
    block L; every measurement is read off the last block's output."""

    def __init__(self, lm: LanguageModel, prompts: tuple[str, ...], locality_prompts: tuple[str, ...],
                 neutral_texts: tuple[str, ...]):
        self.lm, self.n_prompts = lm, len(prompts)
        layers = list(range(lm.n_layers))
        with trace_activations(lm, layers) as acts:
            self.prompts = RecordedBatch(lm, [list(lm.encode(p).prompt_ids) for p in prompts + locality_prompts])
        rows = torch.arange(self.n_prompts, device=self.prompts.ids.device)
        last = torch.tensor(self.prompts.lengths[: self.n_prompts], device=rows.device) - 1
        # [n_prompts, n_layers, n_neurons] at each fact prompt's last position
        self.activations = torch.stack([acts[layer][rows, last].float().cpu() for layer in layers], dim=1)
        texts = [ids for ids in (_text_ids(lm, t) for t in neutral_texts) if len(ids) >= 2]
        self.texts = RecordedBatch(lm, texts) if texts else None
        self.has_texts = bool(neutral_texts)

    @torch.no_grad()
    def measure(self, start: int | None = None) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor,
                                                        tuple[int, ...], float]:
        """(probs, top1) of the fact's prompts, of the locality prompts, and the texts' log perplexity, with
        blocks >= `start` re-run (None: the recorded, unedited outputs)."""
        hidden = self.prompts.output if start is None else self.prompts.run(start)
        texts = None
        if self.texts is not None and self.has_texts:
            texts = self.texts.output if start is None else self.texts.run(start)
        return self._read(hidden, texts)

    @property
    def widest(self) -> int:
        """Rows of the larger recorded batch (what one stacked copy adds to a batch)."""
        return max(len(self.prompts.lengths), len(self.texts.lengths) if self.texts is not None else 0)

    @torch.no_grad()
    def measure_copies(self, edits: Sequence[RowEdit], starts: Sequence[int]) -> list[tuple]:
        """:meth:`measure` for several edits at once: copy ``c`` of each batch, edited by ``edits[c]`` in
        activation space (:func:`knowloc.editing.operations.rows_edited`), re-runs the blocks >= ``starts[c]``
        (non-decreasing, each at most its edit's lowest layer); one replay per batch."""
        n_prompts = len(self.prompts.lengths)
        with rows_edited(self.lm, edits, n_prompts):
            hidden = self.prompts.run_copies(starts)  # [copies * n_prompts, width, d_model]
        texts = None
        if self.texts is not None and self.has_texts:
            n_texts = len(self.texts.lengths)
            with rows_edited(self.lm, edits, n_texts):
                texts = self.texts.run_copies(starts)  # [copies * n_texts, width, d_model]
        out = []
        for c in range(len(edits)):
            out.append(self._read(hidden[c * n_prompts:(c + 1) * n_prompts],
                                  None if texts is None else texts[c * n_texts:(c + 1) * n_texts]))
        return out

    def _read(self, hidden: torch.Tensor, texts: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...],
                                                                           torch.Tensor, tuple[int, ...], float]:
        """The measurements off the last block's outputs of the prompts batch [n_rows, width, d_model] and of the
        texts batch (None: no texts)."""
        logits = self.lm.logits(self.prompts.last_positions(hidden).unsqueeze(1))[:, 0]
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        top1 = tuple(int(i) for i in torch.topk(probs, 1, dim=-1).indices[:, 0])
        n = self.n_prompts
        logppl = math.nan
        if self.has_texts:
            if texts is None:
                raise KnowlocError("the texts have no token to predict (each needs at least 2 tokens)")
            batch: RecordedBatch = self.texts  # type: ignore[assignment]
            nll_sum, n_tokens = _masked_nll(self.lm.logits(texts), batch.ids, batch.mask)
            logppl = float(log_perplexity(nll_sum, n_tokens))
        return probs[:n], top1[:n], probs[n:], top1[n:], logppl


@dataclass(frozen=True)
class TrialResult:
    """Scores of one trial (see the module docstring). ``success[j]`` is the rule's verdict on prompt j;
    ``dprob[j]`` the relative change of its gold first-token probability; ``dprob_locality`` the mean
    relative change of the locality prompts' gold-token probabilities (nan without gold tokens)."""

    rel: float
    gen: float
    loc: float
    avg: float
    dppl: float
    dprob_self: float
    dprob_neighbors: float
    operation: str
    n_neurons: int
    dlogppl: float = math.nan
    success: tuple[bool, ...] = field(default=())
    dprob: tuple[float, ...] = field(default=())
    dprob_locality: float = math.nan
    ppl_before: float = math.nan
    ppl_after: float = math.nan

    def as_row(self, index: int | None = None, generalize_on: Sequence[int] | None = None) -> dict:
        """The columns every stored editing row holds, in this order: ``rel, gen, loc, avg, dppl, dlogppl,
        dprob_self, dprob_neighbors``; callers add their own (editor, layer, seconds, ...).

        Args:
            index: None: the trial's own scores; else read them off ``success`` / ``dprob`` for query ``index``
                (a result measured for one query and reused for another whose edit is the same model,
                :class:`knowloc.editing.session.EditSession`): Rel on it, Gen and ``dprob_neighbors`` on
                ``generalize_on`` (default every other query), through
                :func:`knowloc.analysis.editing_metrics.edit_scores`.

        Example:
            >>> {"editor": "rome", **result.as_row(), "seconds": 1.2}
        """
        if index is None:
            return {"rel": self.rel, "gen": self.gen, "loc": self.loc, "avg": self.avg, "dppl": self.dppl,
                    "dlogppl": self.dlogppl, "dprob_self": self.dprob_self, "dprob_neighbors": self.dprob_neighbors}
        others = [j for j in range(len(self.success)) if j != index] if generalize_on is None else generalize_on
        loc = float(self.loc)
        rel, gen, avg = edit_scores(self.success, index, loc, others)
        neighbors = [self.dprob[j] for j in others if not np.isnan(self.dprob[j])]
        return {"rel": rel, "gen": gen, "loc": loc, "avg": avg, "dppl": float(self.dppl),
                "dlogppl": float(self.dlogppl), "dprob_self": float(self.dprob[index]),
                "dprob_neighbors": float(np.mean(neighbors)) if neighbors else float("nan")}


def _as_prompts(prompts: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(prompts, str):
        raise KnowlocError(f"{name} must be a list of strings, not one string")
    out = tuple(prompts)
    for p in out:
        if not isinstance(p, str):
            raise KnowlocError(f"{name} must be strings, got {type(p).__name__}")
    return out


def _distributions(lm: LanguageModel, prompts: tuple[str, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    if not prompts:
        vocab = lm.arch.unembed(lm.model).weight.shape[0]
        return torch.zeros((0, vocab)), ()  # on the CPU, as next_token_distributions' probabilities
    dists = next_token_distributions(lm, list(prompts), top_k=1)
    return torch.stack([d.probs for d in dists]), tuple(d.top_ids[0] for d in dists)


def compute_baseline(lm: LanguageModel, prompts: Sequence[str], locality_prompts: Sequence[str] = (),
                     neutral_texts: Sequence[str] = ()) -> Baseline:
    """Measure the unedited model once per fact: one batch for the fact's prompts, one for the locality
    prompts, one forward for the neutral-text perplexity."""
    prompts = _as_prompts(prompts, "prompts")
    if not prompts:
        raise KnowlocError("a baseline needs a non-empty list of prompts")
    locality_prompts = _as_prompts(locality_prompts, "locality_prompts")
    neutral_texts = _as_prompts(neutral_texts, "neutral_texts")
    recorded = FactBatches(lm, prompts, locality_prompts, neutral_texts)
    probs, top1, loc_probs, loc_top1, logppl = recorded.measure()
    return Baseline(model_name=lm.name, prompts=prompts, probs=probs, top1=top1,
                    locality_prompts=locality_prompts, locality_probs=loc_probs, locality_top1=loc_top1,
                    neutral_texts=neutral_texts, ppl=_exp(logppl), logppl=logppl,
                    activations=recorded.activations, recorded=recorded, lm=lm)


def _exp(x: float) -> float:
    """exp without an OverflowError (inf past float range, nan stays nan)."""
    return float(np.exp(np.float64(x))) if not math.isnan(x) else math.nan


def _prob(x: torch.Tensor) -> float:
    """A float32 softmax entry as a probability in [0, 1] (rounding can overshoot 1 by an ulp)."""
    return min(max(float(x), 0.0), 1.0)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan
