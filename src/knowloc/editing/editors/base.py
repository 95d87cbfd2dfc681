"""What every editor shares: the edit request, the applied edit, and the gradient machinery of the learned edits.

An editor (:class:`Editor`) makes the model answer ``new_object`` instead of ``gold`` on a query
(:class:`EditRequest`), for one request or a batch of them. Its :meth:`~Editor.apply` is a context manager:
inside, the model's weights carry the edit (through :func:`knowloc.models.hooks.edit_weights`, so they are
restored bit-exactly on exit, also on an exception); it yields an :class:`AppliedEdit` that says from which block
on the model changed, which is what :func:`knowloc.editing.trials.measure_edit` re-runs to measure it.

The learned edits (ROME's value vector, ``ft``, ``kn-ft``) are optimized without touching the weights: a forward
hook on the edited layer's MLP output projection adds a trainable tensor's contribution (:class:`Teacher`
re-runs the blocks from the edited layer up on recorded inputs, :mod:`knowloc.models.replay`, with autograd on),
and the weights change once, when the result is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F

from knowloc.editing.operations import RowEdit
from knowloc.errors import KnowlocError
from knowloc.models.hooks import hook_input_output, trace_activations
from knowloc.models.lm import LanguageModel
from knowloc.models.replay import RecordedBatch
from knowloc.models.spans import subject_span


@dataclass(frozen=True)
class EditRequest:
    """One edit: ``prompt`` (a query about ``subject``) should be answered ``new_object`` instead of ``gold`` (an
    erasure: ``gold`` should no longer be answered; ``new_object`` None).

    layers: the layers an editor that edits chosen layers writes (``rome`` / ``ft``: exactly one; a multi-layer
    editor such as MEMIT several; an int is one layer); neurons: the query's KN set N_i ``[(layer, index), ...]``
    (``kn`` / ``kn-erase`` / ``kn-ft``); activations: N_i's activations at the query's last position (what the
    sign-aware update rules read; :func:`knowloc.editing.trials.measure_edit` fills them from the baseline when
    they are missing).

    Example:
        >>> EditRequest("The capital of France is", "France", "Paris", "Rome", layers=4).layer
        4
    """

    prompt: str
    subject: str
    gold: str
    new_object: str | None = None
    layers: tuple[int, ...] = ()
    neurons: tuple[tuple[int, int], ...] = ()
    activations: Mapping[tuple[int, int], float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        layers = self.layers
        if layers is None:
            layers = ()
        elif isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        elif isinstance(layers, (list, tuple)):
            layers = tuple(layers)
        else:
            raise KnowlocError(f"an edit's layers must be an integer or a list of integers, got {layers!r}")
        object.__setattr__(self, "layers", layers)
        try:
            neurons = tuple(tuple(n) for n in self.neurons)
        except TypeError:
            raise KnowlocError(f"an edit's neurons must be (layer, index) pairs, got {self.neurons!r}") from None
        object.__setattr__(self, "neurons", neurons)

    @property
    def layer(self) -> int:
        """The one edited layer of a single-layer editor (one-line error when the request names none or several)."""
        if len(self.layers) != 1:
            raise KnowlocError(f"this editor edits one layer; the request names {len(self.layers)}: "
                               f"{list(self.layers)}")
        return self.layers[0]

    def checked(self, lm: LanguageModel, *, needs_layer: bool = False, needs_neurons: bool = False,
                operation: str = "update") -> EditRequest:
        """The request checked against the model (one-line :class:`KnowlocError` naming what is wrong): an
        update needs a new object whose first token differs from gold's; ``needs_layer``: exactly one layer in
        range; ``needs_neurons``: a non-empty KN set."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise KnowlocError("an edit needs a non-empty prompt")
        for name in ("gold", "new_object") if operation == "update" else ("gold",):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise KnowlocError(f"an edit needs a non-empty {name}")
        if operation == "update" and lm.first_target_token(self.gold) == lm.first_target_token(self.new_object):
            raise KnowlocError(f"new object {self.new_object!r} starts with the same token as {self.gold!r}")
        if needs_layer:
            check_layer(lm, self.layer)
        for layer in self.layers:
            check_layer(lm, layer)
        if needs_neurons and not self.neurons:
            raise KnowlocError("this editor needs the query's KN set (empty)")
        return self


def check_layer(lm: LanguageModel, layer: object) -> int:
    """``layer`` as a layer index of the model (one-line error otherwise)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise KnowlocError(f"the edit layer must be an integer, got {layer!r}")
    if not 0 <= layer < lm.n_layers:
        raise KnowlocError(f"edit layer {layer} out of range: the model has {lm.n_layers} layers (0-{lm.n_layers - 1})")
    return layer


def check_steps(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KnowlocError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def check_positive(value: object, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KnowlocError(f"{name} must be a number, got {value!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v == float("inf"):
        raise KnowlocError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


@dataclass(frozen=True)
class AppliedEdit:
    """What an editor changed: ``start``, the lowest layer whose weights changed (None: nothing changed), the
    number of weights changed, and editor-specific figures (e.g. the final loss, the change's norm)."""

    start: int | None
    n_weights: int
    info: dict = field(default_factory=dict)

    @staticmethod
    def combined(edits: Sequence[AppliedEdit]) -> AppliedEdit:
        """Several edits applied together: the lowest start, the weights counted per edit, ``info["edits"]`` the
        parts' infos in order."""
        starts = [e.start for e in edits if e.start is not None]
        return AppliedEdit(start=min(starts) if starts else None, n_weights=sum(e.n_weights for e in edits),
                           info={"edits": [e.info for e in edits]})


def as_batch(requests: EditRequest | Sequence[EditRequest]) -> list[EditRequest]:
    """One request or a sequence of them, as a non-empty list (one line otherwise)."""
    batch = [requests] if isinstance(requests, EditRequest) else list(requests)
    if not batch or not all(isinstance(r, EditRequest) for r in batch):
        raise KnowlocError("an edit needs one EditRequest or a non-empty list of them")
    return batch


class Editor:
    """What every editor is (docs/extending.md, "Adding an editor"): a settings dataclass with

    * ``name`` (the ``--editors`` name), ``operation`` (how its trials are scored: ``update``: the new object
      beats the old; ``erase``: the old is gone), ``uses_layer`` / ``uses_neurons`` (what a request must name);
    * :meth:`edit`, the one method a new editor writes: a context manager with one request's edit in the
      weights (through :func:`knowloc.models.hooks.edit_weights`, restored bit-exactly on exit), yielding an
      :class:`AppliedEdit`.

    What it gets: :meth:`apply` over a batch of requests (by default each edited on top of the ones before; a
    batch editor such as MEMIT overrides it to solve for all at once), :meth:`sequential` (edit after edit,
    measured as it goes), :meth:`model_key` (what a session memoizes a measured edit by) and, for editors whose
    edit is an activation-space row edit, :meth:`rows` (the batched replay of :func:`knowloc.editing.trials.
    measure_edits`; None: not offered).

    Example:
        >>> with Rome(steps=20).apply(lm, [request_a, request_b]) as applied:  # both edits in the weights
        ...     applied.start
    """

    name: ClassVar[str] = ""
    operation: ClassVar[str] = "update"
    uses_layer: ClassVar[bool] = False
    uses_neurons: ClassVar[bool] = False

    def edit(self, lm: LanguageModel, request: EditRequest) -> AbstractContextManager[AppliedEdit]:
        raise NotImplementedError(f"{type(self).__name__} must define edit(lm, request)")

    @contextmanager
    def apply(self, lm: LanguageModel, requests: EditRequest | Sequence[EditRequest]) -> Iterator[AppliedEdit]:
        """The model with every request's edit applied (one request: :meth:`edit`; several: each edited on the
        model the ones before it left), restored bit-exactly on exit, also on an exception; yields the
        (combined, :meth:`AppliedEdit.combined`) applied edit."""
        batch = as_batch(requests)
        if len(batch) == 1:
            with self.edit(lm, batch[0]) as applied:
                yield applied
            return
        with ExitStack() as stack:
            yield AppliedEdit.combined([stack.enter_context(self.edit(lm, r)) for r in batch])

    def sequential(self, lm: LanguageModel, requests: Sequence[EditRequest],
                   after: Callable[[int, AppliedEdit], T]) -> list[T]:
        """Sequential editing: request after request, each edited on top of the ones before, ``after(k,
        applied)`` called once the first ``k + 1`` are in the weights (``applied`` combines them); every edit
        is undone at the end, also on an exception. Returns ``after``'s results in order.

        Example:
            >>> rels = Rome().sequential(lm, requests, lambda k, applied: measure(applied.start))
        """
        batch = as_batch(requests)
        out: list[T] = []
        earlier: list = []  # what the edits before leave for the next (edit_after)
        with ExitStack() as stack:
            applied: list[AppliedEdit] = []
            for k, request in enumerate(batch):
                applied.append(stack.enter_context(self.edit_after(lm, request, earlier)))
                out.append(after(k, AppliedEdit.combined(applied) if k else applied[0]))
        return out

    def edit_after(self, lm: LanguageModel, request: EditRequest,
                   earlier: list) -> AbstractContextManager[AppliedEdit]:
        """One edit of a :meth:`sequential` sequence; ``earlier`` holds what the edits before it left (an editor
        that keeps them appends its own: AlphaEdit's keys). By default :meth:`edit`, which reads nothing."""
        return self.edit(lm, request)

    def settings(self) -> tuple:
        """The editor's name and settings (its dataclass fields but the stores it reads), hashable."""
        values = tuple((f.name, getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                       if f.name not in NOT_SETTINGS)
        return (self.name, values)

    def model_key(self, lm: LanguageModel, request: EditRequest) -> Hashable:
        """What identifies the model this editor makes of ``request`` (a session measures each key once): the
        settings and the request (KN editors: only the neuron edit, the same whichever query chose it)."""
        return (self.settings(), request)

    def rows(self, lm: LanguageModel, request: EditRequest) -> RowEdit | None:
        """The edit as an activation-space row edit for a batched replay (None: this editor has none)."""
        return None


NOT_SETTINGS = ("covariance", "fit_batch")  # what an editor reads, or how it batches its work: not how it edits
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------
# teacher-forced batches, re-run from the edited layer with autograd on


def subject_last_index(lm: LanguageModel, text: str, subject: str) -> int:
    """Position of the subject's last token in ``text`` as the model reads it (special tokens included; ROME's
    rule, :func:`knowloc.models.spans.subject_span`); the text's last token when the subject does not occur in it."""
    span = subject_span(lm, text, subject)
    return len(lm.tokenizer(text.rstrip())["input_ids"]) - 1 if span is None else span[1]


@dataclass
class Teacher:
    """A batch of prompts, each with the target it should predict (teacher-forced: the model reads prompt +
    target[:-1]), recorded once unedited so that the blocks from ``start`` up can be re-run with autograd on.

    Args:
        lm: the model; prompts / targets: one target string per prompt (None: the row only carries a
            distribution, e.g. ROME's KL prompt); start: the first re-run block; trace: also record the neuron
            activations of these layers (``self.activations[layer]`` ``[rows, width, n_neurons]``).
    """

    lm: LanguageModel
    prompts: Sequence[str]
    targets: Sequence[str | None]
    start: int
    trace: Sequence[int] = ()

    def __post_init__(self) -> None:
        encodings = [self.lm.encode(p, t) if t is not None else self.lm.encode(p)
                     for p, t in zip(self.prompts, self.targets)]
        self.encodings = encodings
        self.last = [e.last_pos for e in encodings]  # the prompt's last position of each row
        with trace_activations(self.lm, list(self.trace)) as acts:
            self.batch = RecordedBatch(self.lm, [e.input_ids for e in encodings])
        self.activations = dict(acts)
        rows, positions, tokens = [], [], []
        for r, e in enumerate(encodings):
            for t, token in enumerate(e.target_ids):
                rows.append(r)
                positions.append(e.last_pos + t)
                tokens.append(token)
        device = self.batch.ids.device
        self._rows = torch.tensor(rows, dtype=torch.long, device=device)
        self._positions = torch.tensor(positions, dtype=torch.long, device=device)
        self._tokens = torch.tensor(tokens, dtype=torch.long, device=device)

    def run(self) -> torch.Tensor:
        """The last block's output ``[rows, width, d_model]``, blocks >= start re-run with autograd on."""
        return self.batch.run(self.start, grad=True)

    def row_nll(self, hidden: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Each of ``rows``' mean NLL of its target tokens ``[len(rows)]`` with its graph (only the target
        positions of those rows are unembedded); one line when a row has no target."""
        wanted = torch.tensor(list(rows), dtype=torch.long, device=hidden.device)
        keep = torch.isin(self._rows, wanted)
        row_of = self._rows[keep]
        logits = self.lm.logits(hidden[row_of, self._positions[keep]]).float()  # [k, vocab]
        nll = F.cross_entropy(logits, self._tokens[keep], reduction="none")  # [k]
        sums = torch.zeros(len(self.encodings), device=hidden.device).index_add(0, row_of, nll)
        counts = torch.zeros(len(self.encodings), device=hidden.device).index_add(0, row_of, torch.ones_like(nll))
        if not bool((counts[wanted] > 0).all()):
            raise KnowlocError("no target token to fit")
        return sums[wanted] / counts[wanted]

    def target_nll(self, hidden: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Mean over ``rows`` of each row's mean NLL of its target tokens (a scalar with its graph)."""
        return self.row_nll(hidden, sorted(set(rows))).mean()

    def last_log_probs(self, hidden: torch.Tensor, rows: int | Sequence[int]) -> torch.Tensor:
        """log-softmax of the next-token logits at the last prompt position of row ``rows`` ``[vocab]`` (a list
        of rows: ``[len(rows), vocab]``)."""
        many = not isinstance(rows, int)
        picked = list(rows) if many else [rows]  # type: ignore[arg-type]
        index = torch.tensor(picked, dtype=torch.long, device=hidden.device)
        at = torch.tensor([self.last[r] for r in picked], dtype=torch.long, device=hidden.device)
        out = torch.log_softmax(self.lm.logits(hidden[index, at]).float(), dim=-1)
        return out if many else out[0]

    def unedited(self) -> torch.Tensor:
        """The recorded (unedited) last block output ``[rows, width, d_model]``."""
        return self.batch.output


@contextmanager
def added_to_output(lm: LanguageModel, additions: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]
                    ) -> Iterator[None]:
    """Run the body with ``additions[layer](a)`` added to the output of that layer's MLP output projection,
    ``a`` its input (the neuron activations ``[rows, width, n_neurons]``); hooks removed on exit."""
    def adder(fn):
        def add(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return out + fn(x).to(out.dtype)
        return add
    with ExitStack() as stack:
        for layer, fn in additions.items():
            stack.enter_context(hook_input_output(lm.mlp_out(layer), adder(fn)))
        yield


def adam_steps(params: list[torch.Tensor], loss: Callable[[], torch.Tensor], steps: int, lr: float,
               after_step: Callable[[], None] | None = None, stop_below: float = 0.0) -> tuple[float, int]:
    """At most ``steps`` Adam steps on ``params`` (leaf tensors with ``requires_grad``) minimizing ``loss()``,
    calling ``after_step`` (e.g. a projection onto the constraint set) after each; they end early once the loss
    is below ``stop_below`` (ROME's 5e-2; 0: never). Returns (the last loss (nan: none), the steps taken)."""
    last = float("nan")
    if steps == 0:
        return last, 0
    optimizer = torch.optim.Adam(params, lr=lr)
    taken = 0
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            value = loss()
            if float(value.detach()) < stop_below:
                return float(value.detach()), taken
            taken += 1
            value.backward()
            optimizer.step()
            last = float(value.detach())
            if after_step is not None:
                with torch.no_grad():
                    after_step()
    return last, taken


def adam_rows(param: torch.Tensor, losses: Callable[[], torch.Tensor], steps: int, lr: float,
              after_step: Callable[[], None] | None = None, stop_below: float = 0.0
              ) -> tuple[list[float], list[int]]:
    """:func:`adam_steps` for ``n`` independent problems fitted together: ``param`` ``[n, ...]`` (a leaf with
    ``requires_grad``), ``losses()`` ``[n]`` (row ``i``'s loss depends on ``param[i]`` only). Adam is elementwise, so
    minimizing the sum takes each row the steps :func:`adam_steps` would take it alone; a row whose loss is below
    ``stop_below`` stops there (its value kept), as :func:`adam_steps` would. Returns (each row's last loss (nan:
    none), its steps taken)."""
    n = param.shape[0]
    last, taken = [float("nan")] * n, [0] * n
    if steps == 0:
        return last, taken
    optimizer = torch.optim.Adam([param], lr=lr)
    active = torch.ones(n, dtype=torch.bool, device=param.device)
    kept = param.detach().clone()  # the stopped rows' values
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            values = losses()
            now = values.detach().float().cpu()
            for i in torch.nonzero(active.cpu() & (now < stop_below)).flatten().tolist():
                last[i] = float(now[i])
                active[i] = False
                kept[i] = param.detach()[i]
            if not bool(active.any()):
                break
            values[active].sum().backward()
            optimizer.step()
            with torch.no_grad():
                param[~active] = kept[~active]
                if after_step is not None:
                    after_step()
            for i in torch.nonzero(active.cpu()).flatten().tolist():
                last[i] = float(now[i])
                taken[i] += 1
    return last, taken
