"""MEMIT and AlphaEdit: many facts written at once over a range of layers (Meng et al. 2023, "Mass-Editing Memory
in a Transformer"; Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models").

For a batch of requests ``i`` (subject ``s_i``, query, new object ``o_i``) and a range of layers ``l_1 < ... < l_L``
(:func:`default_layers`), with the MLP output projection of each layer read as a memory ``v = W k`` (ROME's view,
:mod:`knowloc.editing.editors.rome`):

1. **Targets.** ``z_i = h^L_i + delta_i``: ``h^L_i`` the residual stream after block ``l_L`` at the subject's last
   token of the bare query, ``delta_i`` ROME's optimized addition at that layer and token (steps 1-2 of ROME, over
   the same seeded context prefixes and KL prompt: :meth:`Rome._fit_batch`, ``fit_batch`` requests at a time).
2. **Spread over the layers**, lowest first, each on the model the layers before it left: keys ``K_l`` ``[n,
   n_neurons]`` (each request's key at the subject's last token, averaged over its contexts), the residual
   ``R_l = (Z - H^L) / (L - j)`` (``H^L`` recomputed with the edits so far, ``j`` the layer's index in the range),
   and the update

   * MEMIT:  ``dW_l = R_l^T K_l (lambda C_l + K_l^T K_l)^-1``  (``C_l = E[k k^T]`` of ROME's text sample,
     ``lambda`` = ``update_weight``, MEMIT's ``mom2_update_weight``: GPT-J's 15000 scaled by the MLP's width,
     :func:`default_update_weight`);
   * AlphaEdit: ``dW_l = R_l^T K_l P (K_p^T K_p P + K_l^T K_l P + I)^-1`` with ``P`` the projector onto the null
     space of ``C_l`` (eigenvectors of eigenvalue below ``null_threshold``; the preserved keys ``K_0`` span the
     rest, so ``dW_l K_0 = 0``) and ``K_p`` the keys of the edits made before in a sequence
     (:meth:`~knowloc.editing.editors.base.Editor.sequential`), so later edits leave earlier ones alone.

   MEMIT's solve is done as ``C^-1 K^T (lambda I + K C^-1 K^T)^-1`` (the same matrix; ``n x n`` instead of
   ``n_neurons x n_neurons``, well conditioned for small ``lambda``), in float64 on the CPU where C is, with ROME's
   ridge on C. With one request and one layer and ``lambda -> 0`` it is ROME's update.

The weight changes go through :func:`knowloc.models.hooks.edit_weights`: restored bit-exactly on exit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from knowloc.editing.editors.base import AppliedEdit, EditRequest, as_batch, check_positive, subject_last_index
from knowloc.editing.editors.rome import Rome
from knowloc.errors import KnowlocError
from knowloc.models.hooks import edit_weights, hook_module, trace_activations
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import pad_right

SPAN = 5  # MEMIT edits five consecutive layers (GPT-J: 3-8; GPT-2 XL: 13-17)
GPTJ_WEIGHT, GPTJ_NEURONS = 15000.0, 16384  # MEMIT's mom2_update_weight for GPT-J, and GPT-J's MLP width


def default_update_weight(n_neurons: int) -> float:
    """MEMIT's ``lambda`` for a model whose MLP has ``n_neurons`` neurons: GPT-J's 15000 scaled by the width.

    One request's update writes ``s / (1 + s)`` of its residual at its key, ``s = k^T (lambda C)^-1 k``, and
    ``E[k^T C^-1 k] = n_neurons`` for a key drawn like C's: the same share as MEMIT's on GPT-J (about half) needs
    ``lambda`` proportional to the width. 15000 on SmolLM2's 1536 neurons writes about a tenth of it.
    """
    return GPTJ_WEIGHT * n_neurons / GPTJ_NEURONS


def default_layers(n_layers: int) -> tuple[int, ...]:
    """MEMIT's range by a rule for any depth: the ``SPAN`` consecutive layers ending at ROME's middle layer
    ``n_layers // 2`` (30 layers: 11-15), cut at layer 0."""
    last = n_layers // 2
    return tuple(range(max(0, last - SPAN + 1), last + 1))


@dataclass
class Memit(Rome):
    """The ``memit`` editor (module docstring): ``apply(lm, requests)`` writes a batch at once over ``layers``
    (None: :func:`default_layers`); ``request.layers`` is not read (the range is the editor's). Its targets are
    ROME's fit, so it takes ROME's settings (:class:`Rome`: steps, lr, stop, prefixes, sample, covariance, seed,
    ridge) besides its own.

    Args:
        layers: the edited range; update_weight: ``lambda`` of the update (None: :func:`default_update_weight`);
        fit_batch: how many requests' targets are fitted together in one batch (:meth:`Rome._fit_batch`: the same
            targets up to float rounding; memory grows with it, the fits' speed too, most on a GPU).

    Example:
        >>> with Memit().apply(lm, requests) as applied:  # every request's fact written at once
        ...     applied.start
    """

    layers: tuple[int, ...] | None = None
    update_weight: float | None = None
    fit_batch: int = 16

    name = "memit"
    uses_layer = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.fit_batch, bool) or not isinstance(self.fit_batch, int) or self.fit_batch < 1:
            raise KnowlocError(f"{self.name} fit batch must be an integer >= 1, got {self.fit_batch!r}")
        if self.update_weight is not None:
            check_positive(self.update_weight, f"{self.name} update weight", allow_zero=True)
        if self.layers is not None:
            self.layers = tuple(sorted({int(layer) for layer in self.layers}))
            if not self.layers:
                raise KnowlocError(f"{self.name} needs at least one layer")

    def range_of(self, lm: LanguageModel) -> tuple[int, ...]:
        layers = self.layers if self.layers is not None else default_layers(lm.n_layers)
        for layer in layers:
            if not 0 <= layer < lm.n_layers:
                raise KnowlocError(f"{self.name} layer {layer} out of range: the model has {lm.n_layers} layers")
        return layers

    def edit(self, lm: LanguageModel, request: EditRequest):
        return self.apply(lm, request)

    def edit_after(self, lm: LanguageModel, request: EditRequest, earlier: list):
        """One edit of a sequence, keeping each layer's keys for the next (AlphaEdit's ``K_p``; MEMIT's solve
        does not read them)."""
        return self._applied(lm, [request.checked(lm)], earlier)

    @contextmanager
    def apply(self, lm: LanguageModel, requests: EditRequest | Sequence[EditRequest]) -> Iterator[AppliedEdit]:
        """The model with every request written at once (module docstring); restored bit-exactly on exit."""
        with self._applied(lm, [r.checked(lm) for r in as_batch(requests)], []) as applied:
            yield applied

    @contextmanager
    def _applied(self, lm: LanguageModel, batch: list[EditRequest], previous: list) -> Iterator[AppliedEdit]:
        with edit_weights(lm) as weights:
            yield self._write(lm, weights, batch, previous)

    def _write(self, lm: LanguageModel, weights, batch: list[EditRequest], previous: list) -> AppliedEdit:
        """Steps 1-2 of the module docstring, applied through ``weights``; ``previous``: the keys of the edits
        made before in a sequence, per layer (AlphaEdit reads them; each call appends its own)."""
        layers = self.range_of(lm)
        if lm.arch.mlp_tail is not None:
            warnings.warn(f"{self.name}: this model's MLP output passes through a post-feedforward norm before the "
                          "residual stream, which MEMIT's residual-space targets do not model: its edits may not take "
                          "(docs/editing.md, 'MEMIT and AlphaEdit on Gemma-3')", RuntimeWarning, stacklevel=3)
        last = layers[-1]
        at_last = [EditRequest(r.prompt, r.subject, r.gold, r.new_object, layers=(last,)) for r in batch]
        # step 1: ROME's delta at the last layer, on the unedited model; requests of similar length fitted together
        # (less padding in each batch), each result put back in its request's place
        order = sorted(range(len(batch)), key=lambda i: len(lm.encode(batch[i].prompt).prompt_ids))
        fits: list = [None] * len(batch)
        for start in range(0, len(batch), self.fit_batch):
            chunk = order[start:start + self.fit_batch]
            for i, fit in zip(chunk, self._fit_batch(lm, [at_last[i] for i in chunk])):
                fits[i] = fit
        deltas, infos = [fit[2] for fit in fits], [fit[3] for fit in fits]
        contexts = [self.contexts(lm, request) for request in batch]
        current = torch.stack(self._hidden(lm, batch, last))  # H^L on the unedited model [n, d_model] float64
        targets = current + torch.stack(deltas)
        n_weights = 0
        mine: dict[int, torch.Tensor] = {}
        for j, layer in enumerate(layers):  # step 2, lowest layer first, on the model edited so far
            keys = self._keys(lm, batch, contexts, layer)  # [n, n_neurons] float64
            if j:  # H^L under the edits of the layers below (at the first layer: the unedited one, above)
                current = torch.stack(self._hidden(lm, batch, last))
            resid = (targets - current) / (len(layers) - j)  # [n, d_model]
            c = self.covariance.get(lm, layer, self.sample)  # float64 on the CPU
            before = [p[layer] for p in previous if layer in p]
            delta_w = self._update(c, keys, resid, torch.cat(before) if before else None)  # [d_model, n_neurons]
            weights.add_matrix(layer, delta_w)
            n_weights += delta_w.numel()
            mine[layer] = keys
        previous.append(mine)
        return AppliedEdit(start=layers[0], n_weights=n_weights, info={"layers": list(layers), "fits": infos})

    def _update(self, c: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor,
                previous: torch.Tensor | None) -> torch.Tensor:
        """MEMIT's ``dW = R^T (C^-1 K^T (lambda I + K C^-1 K^T)^-1)^T`` ``[d_model, n_neurons]`` float64."""
        c = c.double()
        eye = torch.eye(c.shape[0], dtype=c.dtype)  # on the CPU, where C and the solve are
        c = c + self.ridge * c.diagonal().mean().clamp_min(1e-30) * eye if self.ridge else c
        c_inv_k = torch.linalg.solve(c, keys.T)  # [n_neurons, n]
        weight = default_update_weight(c.shape[0]) if self.update_weight is None else self.update_weight
        gram = keys @ c_inv_k + weight * torch.eye(len(keys), dtype=c.dtype)  # [n, n] on the cpu
        adj = torch.linalg.solve(gram, c_inv_k.T).T  # [n_neurons, n] = C^-1 K^T (lambda I + K C^-1 K^T)^-1
        return resid.T @ adj.T

    @torch.no_grad()
    def _hidden(self, lm: LanguageModel, batch: list[EditRequest], layer: int) -> list[torch.Tensor]:
        """Each request's residual stream after block ``layer`` at its subject's last token (bare query), float64
        on the CPU; the queries run as padded batches (:func:`padded_passes`)."""
        positions = [subject_last_index(lm, r.prompt, r.subject) for r in batch]
        out: list[torch.Tensor] = []
        seen: dict = {}

        def record(output) -> None:
            seen["h"] = (output[0] if isinstance(output, tuple) else output).detach()
        with hook_module(lm.blocks[layer], "output", record):
            for rows in padded_passes(lm, [r.prompt for r in batch]):
                out += [seen["h"][i, positions[r]].double().cpu() for i, r in enumerate(rows)]
        return out

    @torch.no_grad()
    def _keys(self, lm: LanguageModel, batch: list[EditRequest], contexts: list[list[str]],
              layer: int) -> torch.Tensor:
        """Each request's key at ``layer`` (the neuron activations at the subject's last token), averaged over its
        contexts ``[n, n_neurons]``, float64 on the CPU; every context of every request in padded batches."""
        texts = [text for texts in contexts for text in texts]
        owners = [i for i, texts in enumerate(contexts) for _ in texts]
        positions = [subject_last_index(lm, text, batch[i].subject) for text, i in zip(texts, owners)]
        sums = torch.zeros(len(batch), lm.n_neurons, dtype=torch.float64)  # cpu: the solve's side
        with trace_activations(lm, [layer]) as acts:
            for rows in padded_passes(lm, texts):
                for i, r in enumerate(rows):
                    sums[owners[r]] += acts[layer][i, positions[r]].double().cpu()
        counts = torch.tensor([len(texts) for texts in contexts], dtype=torch.float64)  # cpu: as sums
        return sums / counts[:, None]


PASS_ROWS = 64  # texts per padded pass of the keys and hidden states


def padded_passes(lm: LanguageModel, texts: list[str], rows: int = PASS_ROWS) -> Iterator[list[int]]:
    """Run the model's backbone (no unembedding) on ``texts`` in right-padded batches of ``rows``, yielding each
    batch's text indices after its pass (what the caller's hooks, set around the loop, recorded is that batch's,
    row ``i`` the text ``indices[i]``): exact for a causal model at every text's own positions
    (:func:`knowloc.models.scoring.pad_right`), up to the float rounding of the batch."""
    seqs = [list(lm.encode(text).prompt_ids) for text in texts]
    for start in range(0, len(seqs), rows):
        chunk = list(range(start, min(start + rows, len(seqs))))
        ids, mask = pad_right(lm, [seqs[r] for r in chunk])
        lm.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        yield chunk


@dataclass
class AlphaEdit(Memit):
    """The ``alphaedit`` editor (module docstring): MEMIT's range and targets, each update projected onto the null
    space of the preserved keys' C; in :meth:`sequential` each edit also keeps the keys of the ones before
    (:meth:`Memit.edit_after`).

    Args:
        null_threshold: eigenvalues of C below it span the null space (AlphaEdit's code: 1e-2); alpha: the
            identity's weight in the solve (AlphaEdit's ``L2``, 1); the rest as :class:`Memit`.

    Example:
        >>> AlphaEdit().sequential(lm, requests, lambda k, applied: measure(applied.start))
    """

    null_threshold: float = 1e-2
    alpha: float = 1.0

    name = "alphaedit"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.null_threshold, "alphaedit null threshold", allow_zero=True)
        check_positive(self.alpha, "alphaedit alpha")
        self._projectors: list[tuple[torch.Tensor, torch.Tensor]] = []  # (C, P) of the Cs seen: one eigh per C

    def projector(self, c: torch.Tensor) -> torch.Tensor:
        """``P``: the projector onto the eigenvectors of C with eigenvalue below ``null_threshold`` (float64),
        computed once per C (the same tensor, as the covariance store hands it out: a sequence of edits reuses it)."""
        for seen, p in self._projectors:
            if seen is c:
                return p
        values, vectors = torch.linalg.eigh(c.double())
        null = vectors[:, values < self.null_threshold]  # [n_neurons, m]
        self._projectors.append((c, null @ null.T))
        return self._projectors[-1][1]

    def _update(self, c: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor,
                previous: torch.Tensor | None) -> torch.Tensor:
        """AlphaEdit's ``dW = R^T K P (K_p^T K_p P + K^T K P + alpha I)^-1`` ``[d_model, n_neurons]`` float64."""
        p = self.projector(c)
        eye = torch.eye(p.shape[0], dtype=p.dtype)  # on the CPU, where C and the solve are
        system = keys.T @ keys @ p + self.alpha * eye
        if previous is not None:
            system = system + previous.T @ previous @ p
        right = resid.T @ keys @ p  # [d_model, n_neurons]
        return torch.linalg.solve(system.T, right.T).T  # right @ system^-1
