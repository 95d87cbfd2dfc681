"""Measuring one editing trial: Rel / Gen / Loc / Avg, ΔPPL and gold-probability changes.

A trial edits the model for query ``q_i`` of a fact (an editor of :mod:`knowloc.editing.editors`: a KN erasure or
update, ROME, fine-tuning; applied and measured by :mod:`knowloc.editing.trials`) and measures, with the edit
applied:

* ``rel``  -- success on ``q_i`` itself (0 or 1);
* ``gen``  -- mean success over the fact's other neighbor queries ``q_j, j != i`` (nan if none);
* ``loc``  -- share of locality (unrelated) prompts whose argmax next token is unchanged (nan if none);
* ``avg``  -- mean of the available parts of rel, gen, loc (:func:`knowloc.analysis.avg_score`; rel, gen and
  avg all come from :func:`knowloc.analysis.editing_metrics.edit_scores`);
* ``dlogppl`` -- ``log(PPL_after / PPL_before)`` on the neutral texts (nan if none): the change of the mean
  token NLL, exactly 0 for an unchanged model and finite even when PPL itself overflows;
* ``dppl`` -- perplexity after minus before (raw; heavy-tailed, kept for the CSV tables only);
* ``dprob_self`` / ``dprob_neighbors`` -- relative change ``(after - before) / before`` of the gold
  first-token probability on ``q_i`` / mean over the neighbors;
* for an update, CounterFact's scores (Meng et al. 2022; :mod:`knowloc.analysis.editing_metrics`) on first
  tokens: ``efficacy_score`` / ``efficacy_magnitude`` on ``q_i`` (``[P(o') > P(o)]``, ``P(o') - P(o)``),
  ``paraphrase_score`` / ``paraphrase_magnitude`` the same averaged over the neighbors, ``neighborhood_score`` the
  share of locality prompts whose own answer stays more probable than ``o'`` (:meth:`TrialResult.counterfact_row`).

Success rules (:mod:`knowloc.analysis.editing_metrics`): erasure succeeds on a query when the gold first
token is no longer the argmax AND its probability fell by at least 50% relative; update succeeds when the
new object's first token ``o'`` is strictly more probable than the gold one ``o``.

Everything that does not depend on the edit is computed once per fact in a :class:`Baseline`, which also
records the fact's batches block by block and measures the edited model (:meth:`Baseline.measure`): a trial
re-runs only the blocks from its lowest edited layer up (:mod:`knowloc.models.replay`), for the fact and locality
prompts in one batch and the neutral texts in another. :meth:`Baseline.measure_rows` measures several edits of the
fact in one replay, each edit applied to its own copy of the batches in activation space (equal up to float
rounding); :meth:`Baseline.score` turns a measurement into a :class:`TrialResult`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from knowloc.analysis.editing_metrics import (
    delta_log_ppl,
    delta_ppl,
    edit_scores,
    erase_success,
    generation_entropy,
    generation_hit,
    locality_kept,
    log_perplexity,
    neighborhood_score,
    preference,
    relative_change,
    update_success,
)
from knowloc.editing.operations import OPERATIONS, RowEdit, rows_edited
from knowloc.errors import KnowlocError
from knowloc.models.hooks import trace_activations
from knowloc.models.lm import LanguageModel
from knowloc.models.replay import RecordedBatch
from knowloc.models.scoring import greedy_continuations, next_token_distributions, pad_right

__all__ = [
    "Baseline",
    "TrialResult",
    "compute_baseline",
    "generation_scores",
    "text_nll",
    "perplexity_of_texts",
]

UNEMBED_ELEMENTS = 2**26  # logits of the neutral texts computed at once in a batched measurement (256 MB in float32)


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


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token NLLs in nats, ``NLL = logsumexp(z) - z[target]`` per row of ``logits`` [N, V] (computed in
    float32; equal to cross-entropy up to float rounding, without writing the [N, V] log-softmax)."""
    z = logits.float()
    return torch.logsumexp(z, dim=-1) - z.gather(-1, targets[:, None])[:, 0]


def _masked_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token NLLs (nats) over the unpadded positions of a right-padded batch, and their count."""
    keep = mask[:, 1:].bool()
    return float(token_nll(logits[:, :-1][keep], ids[:, 1:][keep]).double().sum()), int(keep.sum())


def perplexity_of_texts(lm: LanguageModel, texts: Sequence[str], batch_size: int = 64) -> float:
    """``exp(sum of token NLLs / number of predicted tokens)`` over all texts (see :func:`text_nll`)."""
    return float(np.exp(log_perplexity_of_texts(lm, texts, batch_size)))


# --------------------------------------------------------------------------------------------------------
# trials


def check_index(index: object, n_prompts: int) -> None:
    """``index`` is a query of ``n_prompts`` prompts (one line otherwise)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_prompts:
        raise KnowlocError(f"index {index!r} out of range for {n_prompts} prompts")


@dataclass(frozen=True)
class Baseline:
    """Unedited measurements of one fact, computed once (:func:`compute_baseline`) and reused by its trials.

    probs: next-token distributions ``[n_prompts, vocab]`` of the fact's prompts;
    locality_probs / locality_top1: distributions ``[n_locality, vocab]`` and argmax tokens of the locality
    prompts; ppl / logppl: perplexity of the neutral texts and its log (nan when there are none);
    activations: neuron activations ``[n_prompts, n_layers, n_neurons]`` at each fact prompt's last position
    (what the sign-aware update rules read); recorded: the fact's batches block by block; lm: the model, which
    the edits measured with it edit (:mod:`knowloc.editing.trials`). A baseline only measures: the model as it
    is now (:meth:`measure`), under activation-space edits (:meth:`measure_rows`), and the scores of a
    measurement (:meth:`score`).
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

    def model(self) -> LanguageModel:
        """The baseline's model (one line when it holds none: a baseline not from :func:`compute_baseline`)."""
        if self.lm is None:
            raise KnowlocError("this baseline holds no model to edit: compute it with compute_baseline")
        return self.lm

    def check_query(self, index: int, prompt: str) -> None:
        """``index`` is one of the baseline's queries and ``prompt`` is it (one line otherwise)."""
        check_index(index, len(self.prompts))
        if self.prompts[index].rstrip() != str(prompt).rstrip():
            raise KnowlocError("the request's prompt is not the baseline's query at that index")

    def replayable(self) -> bool:
        """Whether the baseline holds its model's recorded batches (what :meth:`measure_rows` replays)."""
        return self.recorded is not None and self.recorded.lm is self.lm

    def measure(self, start: int | None) -> tuple:
        """(probs, top1, locality probs, locality top1, log PPL of the texts) of the model as it is now, whose
        blocks below ``start`` are unchanged: the recorded batches re-run from ``start`` (None: the recorded
        outputs; exact, see :mod:`knowloc.models.replay`), or full forward passes for a baseline without recorded
        batches."""
        if start is not None and not (isinstance(start, int) and 0 <= start < self.model().n_layers):
            raise KnowlocError(f"start layer {start!r} out of range for {self.model().n_layers} layers")
        if self.replayable():
            return self.recorded.measure(start)  # type: ignore[union-attr]
        lm = self.model()
        probs, top1 = _distributions(lm, self.prompts)
        loc_probs, loc_top1 = _distributions(lm, self.locality_prompts)
        logppl_after = log_perplexity_of_texts(lm, self.neutral_texts) if self.neutral_texts else math.nan
        return probs, top1, loc_probs, loc_top1, logppl_after

    def measure_rows(self, edits: Sequence[RowEdit], *, max_rows: int = 256, schedule: str = "join") -> list[tuple]:
        """:meth:`measure` of the model under each of ``edits`` (activation-space edits), in batched replays:
        the fact's recorded batches are stacked once per edit and each edit is applied to its own rows, the
        weights never change (:func:`knowloc.editing.operations.rows_edited`); a baseline without recorded
        batches raises (use the weights: :func:`knowloc.editing.trials.measure_edit`).

        Edits are sorted by their lowest edited layer and cut into chunks of at most ``max_rows`` rows per
        stacked batch (``max_rows // rows of the larger recorded batch`` edits, at least 1); ``schedule``:

        * ``join`` (default): one replay per chunk; an edit's rows join it at the edit's own lowest layer, so
          each row runs exactly the blocks its single replay runs (:meth:`RecordedBatch.run_copies`);
        * ``lowest``: every row of a chunk re-runs from the chunk's lowest layer;
        * ``grouped``: chunks hold edits of one lowest layer only.

        All give the same results; ``lowest`` and ``grouped`` are there to compare speed
        (``benchmarks/batched_trials.py``).
        """
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise KnowlocError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if schedule not in SCHEDULES:
            raise KnowlocError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        if not self.replayable():
            raise KnowlocError("this baseline holds no recorded batches to replay")
        recorded: FactBatches = self.recorded  # type: ignore[assignment]
        measured: list = [None] * len(edits)
        rows: list[tuple[int, RowEdit]] = []
        for k, row in enumerate(edits):
            if row.start is None:
                measured[k] = recorded.measure(None)  # no neuron: the unedited model
            else:
                rows.append((k, row))
        rows.sort(key=lambda item: item[1].start)  # type: ignore[arg-type, return-value]
        for chunk in _chunks(rows, max(1, max_rows // recorded.widest), schedule):
            starts = [row.start for _, row in chunk]
            if schedule == "lowest":
                starts = [starts[0]] * len(chunk)
            for (k, _), result in zip(chunk, recorded.measure_copies([row for _, row in chunk], starts)):
                measured[k] = result
        return measured

    def locality_tokens(self, locality_gold_tokens: Sequence[int] | None) -> tuple[int, ...] | None:
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

    def score(self, measured: tuple, i: int, operation: str, gold: int, new: int | None, n_neurons: int = 0,
              locality_gold_tokens: Sequence[int] | None = None) -> TrialResult:
        """The scores of an edit of query ``i`` (module docstring) from the edited model's measurements
        (:meth:`measure`, :meth:`measure_rows`): ``operation`` ``erase`` (gold token ``gold`` should be gone) or
        ``update`` (token ``new`` should beat ``gold``); ``n_neurons`` is reported as the result's.

        Example:
            >>> with Rome().apply(lm, request) as applied:
            ...     result = base.score(base.measure(applied.start), 0, "update", gold_token, new_token)
        """
        check_index(i, len(self.prompts))
        if operation not in OPERATIONS:
            raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
        locality_gold_tokens = self.locality_tokens(locality_gold_tokens)
        probs, top1, loc_probs, loc_top1, logppl_after = measured
        locality_prompts, neutral_texts = self.locality_prompts, self.neutral_texts
        ppl_after = _exp(logppl_after)

        success: list[bool] = []
        dprob: list[float] = []
        for j in range(len(self.prompts)):
            p_before = _prob(self.probs[j, gold])
            p_after = _prob(probs[j, gold])
            if operation == "erase":
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
        counterfact = {}
        if operation == "update":
            counterfact = _counterfact(probs, i, others, gold, new, loc_probs, locality_gold_tokens)
        return TrialResult(
            rel=rel, gen=gen, loc=loc, avg=avg, dppl=dppl, dlogppl=dlogppl,
            dprob_self=dprob[i], dprob_neighbors=_nanmean([dprob[j] for j in others]),
            operation=operation, n_neurons=n_neurons, success=tuple(success), dprob=tuple(dprob),
            dprob_locality=dprob_locality, ppl_before=self.ppl, ppl_after=ppl_after, **counterfact,
        )


def _counterfact(probs: torch.Tensor, i: int, others: list[int], gold: int, new: int, loc_probs: torch.Tensor,
                 loc_gold: tuple[int, ...] | None) -> dict:
    """An update's CounterFact scores (module docstring) from the edited model's first-token distributions."""
    es, em = preference(probs[i, new], probs[i, gold])
    ps, pm = preference(probs[others, new], probs[others, gold])
    ns = math.nan
    if loc_gold:
        rows = torch.arange(len(loc_gold), device=loc_probs.device)
        toks = torch.tensor([int(t) for t in loc_gold], device=loc_probs.device)
        ns = neighborhood_score(loc_probs[rows, toks], loc_probs[:, new])
    return {"efficacy_score": es, "efficacy_magnitude": em, "paraphrase_score": ps, "paraphrase_magnitude": pm,
            "neighborhood_score": ns}


SCHEDULES = ("join", "lowest", "grouped")
COUNTERFACT = ("efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
               "neighborhood_score")


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
        return self._read_copies(hidden, texts, len(edits))

    def _read(self, hidden: torch.Tensor, texts: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...],
                                                                           torch.Tensor, tuple[int, ...], float]:
        """The measurements off the last block's outputs of the prompts batch [n_rows, width, d_model] and of the
        texts batch (None: no texts)."""
        return self._read_copies(hidden, texts, 1)[0]

    def _read_copies(self, hidden: torch.Tensor, texts: torch.Tensor | None, copies: int) -> list[tuple]:
        """:meth:`_read` of each of ``copies`` stacked copies (``hidden`` [copies * n_rows, width, d_model],
        ``texts`` [copies * n_texts, width, d_model]): every copy's rows go through the unembedding together, so
        its weights are read once per batch of copies rather than once per copy (equal up to float rounding).
        Of the texts only the rows that predict a token are unembedded, at most UNEMBED_ELEMENTS logits at once."""
        n_rows = len(self.prompts.lengths)
        rows = torch.arange(copies * n_rows, device=hidden.device)
        last = torch.tensor(self.prompts.lengths, device=hidden.device).repeat(copies) - 1
        logits = self.lm.logits(hidden[rows, last].unsqueeze(1))[:, 0]  # [copies * n_rows, vocab]
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        top1 = [int(i) for i in torch.topk(probs, 1, dim=-1).indices[:, 0]]
        logppl = [math.nan] * copies
        if self.has_texts:
            if texts is None:
                raise KnowlocError("the texts have no token to predict (each needs at least 2 tokens)")
            batch: RecordedBatch = self.texts  # type: ignore[assignment]
            keep = batch.mask[:, 1:].bool()
            per_copy = int(keep.sum())
            predicting = texts[:, :-1][keep.repeat(copies, 1)]  # [copies * per_copy, d_model]
            targets = batch.ids[:, 1:][keep].repeat(copies)
            step = max(1, UNEMBED_ELEMENTS // probs.shape[-1])
            nll = torch.cat([token_nll(self.lm.logits(h.unsqueeze(0))[0], t)
                             for h, t in zip(predicting.split(step), targets.split(step))])
            sums = nll.view(copies, per_copy).double().sum(dim=1).tolist()
            logppl = [float(log_perplexity(total, per_copy)) for total in sums]
        n = self.n_prompts
        out = []
        for c in range(copies):
            p, t = probs[c * n_rows:(c + 1) * n_rows], tuple(top1[c * n_rows:(c + 1) * n_rows])
            out.append((p[:n], t[:n], p[n:], t[n:], logppl[c]))
        return out


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
    efficacy_score: float = math.nan
    efficacy_magnitude: float = math.nan
    paraphrase_score: float = math.nan
    paraphrase_magnitude: float = math.nan
    neighborhood_score: float = math.nan

    def counterfact_row(self) -> dict:
        """An update's CounterFact scores (module docstring; nan for an erasure): ``efficacy_score,
        efficacy_magnitude, paraphrase_score, paraphrase_magnitude, neighborhood_score``."""
        return {name: float(getattr(self, name)) for name in COUNTERFACT}

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


def generation_scores(lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], n_tokens: int = 20
                      ) -> list[dict]:
    """What the model as it is now generates after each prompt: the greedy continuation of ``n_tokens`` tokens,
    whether it names its target (``generation_hit``: the new object of an update) and its fluency
    (``generation_entropy``, Meng et al. 2022; :mod:`knowloc.analysis.editing_metrics`).

    Args:
        lm: the (edited) model; prompts: the queries; targets: one object per prompt; n_tokens: tokens generated.

    Returns:
        One dict per prompt: ``generated`` (the continuation), ``generation_hit`` (1.0 or 0.0) and
        ``generation_entropy`` (bits).

    Example:
        >>> with Rome().apply(lm, request):
        ...     generation_scores(lm, [request.prompt], [request.new_object])[0]["generation_hit"]
    """
    prompts, targets = _as_prompts(prompts, "prompts"), _as_prompts(targets, "targets")
    if len(prompts) != len(targets):
        raise KnowlocError(f"{len(targets)} targets for {len(prompts)} prompts")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise KnowlocError(f"n_tokens must be an integer >= 1, got {n_tokens!r}")
    texts = greedy_continuations(lm, list(prompts), n_tokens) if prompts else []
    return [{"generated": text, "generation_hit": float(generation_hit(text, target)),
             "generation_entropy": generation_entropy(text)} for text, target in zip(texts, targets)]


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
