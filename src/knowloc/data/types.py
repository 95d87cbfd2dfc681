"""Core data types: facts, prompt templates and the queries built from them.

A *template* is a sentence with two markers: ``[X]`` for the subject and ``[Y]`` for the object,
e.g. ``"The capital of [X] is [Y]."``.  For a causal LM the object must be the last thing in the
sentence, so only templates whose ``[Y]`` is followed by nothing, ``"."`` or ``" ."`` are usable
(:func:`is_causal_template`).  The *prompt* of a template for a subject is the template with
``[X]`` replaced by the subject, cut right before ``[Y]`` and right-stripped, e.g.
``"The capital of France is"``; the model is expected to continue it with ``" Paris"``.

A :class:`Query` is one prompt for one :class:`Fact`; the queries of a fact over all its (kept)
templates are its *neighbor queries* (paraphrases of the same fact), built by :func:`queries_for`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from knowloc.errors import KnowlocError

X_MARK = "[X]"
Y_MARK = "[Y]"

# What may follow [Y] in a causal template (after right-stripping the template).
_CAUSAL_TAIL = re.compile(r"(?: ?\.)?")


def _one_line(text: str, limit: int = 80) -> str:
    """A short, single-line rendering of ``text`` for error messages."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _check_markers(template: str) -> None:
    if not isinstance(template, str):
        raise KnowlocError(f"template must be a string, got {type(template).__name__}")
    missing = [m for m in (X_MARK, Y_MARK) if m not in template]
    if missing:
        raise KnowlocError(f"template {_one_line(template)!r} lacks {' and '.join(missing)}")


def is_causal_template(template: str) -> bool:
    """True when ``template`` can be used with a causal LM.

    That is: it contains ``[X]`` and exactly one ``[Y]``, ``[X]`` occurs before ``[Y]``, and
    after ``[Y]`` there is nothing but an optional ``"."`` or ``" ."`` (trailing whitespace of the
    template is ignored).  Templates lacking a marker are simply not causal (no error).
    """
    if not isinstance(template, str) or template.count(Y_MARK) != 1:
        return False
    head, tail = template.rstrip().split(Y_MARK)
    return X_MARK in head and _CAUSAL_TAIL.fullmatch(tail) is not None


def make_prompt(template: str, subject: str) -> str:
    """The prompt of ``template`` for ``subject``.

    ``[X]`` (every occurrence) is replaced by ``subject``, the text is cut right before ``[Y]``
    and right-stripped, so a prompt never ends with whitespace:
    ``make_prompt("The capital of [X] is [Y].", "France") == "The capital of France is"``.

    Raises :class:`KnowlocError` if the template lacks ``[X]`` or ``[Y]``, if it is not a causal
    template (see :func:`is_causal_template`) or if the subject is empty.
    """
    _check_markers(template)
    if not is_causal_template(template):
        raise KnowlocError(
            f"template {_one_line(template)!r} is not usable with a causal LM: "
            "[Y] must end the sentence (only '.' or ' .' may follow it) and come after [X]"
        )
    if not isinstance(subject, str) or not subject.strip():
        raise KnowlocError(f"empty subject for template {_one_line(template)!r}")
    head = template[: template.index(Y_MARK)]
    return head.replace(X_MARK, subject).rstrip()


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple, e.g. ``Fact("P36:0", "P36", "France", "Paris")``.

    ``id`` is unique within a dataset; ``relation`` is a relation id such as ``"P36"``.
    """

    id: str
    relation: str
    subject: str
    object: str

    def __post_init__(self) -> None:
        for name in ("id", "relation", "subject", "object"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise KnowlocError(f"fact {name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise KnowlocError(f"fact {self.id!r}: empty {name}")


@dataclass(frozen=True)
class Query:
    """One prompt for one fact.

    ``text`` is the prompt (see :func:`make_prompt`); the expected continuation is
    ``" " + fact.object``.  Build queries with :func:`make_query` / :func:`queries_for`.
    """

    fact: Fact
    template: str
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise KnowlocError(f"fact {self.fact.id!r}: empty query text")
        if self.text != self.text.rstrip():
            raise KnowlocError(f"fact {self.fact.id!r}: query text {self.text!r} ends with whitespace")
        if self.fact.subject not in self.text:
            raise KnowlocError(
                f"fact {self.fact.id!r}: query text {_one_line(self.text)!r} "
                f"does not contain the subject {self.fact.subject!r}"
            )

    @property
    def subject_span(self) -> tuple[int, int]:
        """``(start, end)`` character offsets of the subject in ``text``:
        ``text[start:end] == fact.subject`` (the first occurrence when ``[X]`` repeats)."""
        subject = self.fact.subject
        if X_MARK in self.template and Y_MARK in self.template:
            head = self.template[: self.template.index(Y_MARK)]
            if X_MARK in head:
                start = head.index(X_MARK)
                if self.text[start : start + len(subject)] == subject:
                    return start, start + len(subject)
        start = self.text.index(subject)  # text built some other way: first occurrence
        return start, start + len(subject)


def make_query(fact: Fact, template: str) -> Query:
    """The :class:`Query` of ``fact`` for one causal ``template``."""
    return Query(fact=fact, template=template, text=make_prompt(template, fact.subject))


def queries_for(fact: Fact, templates: Iterable[str]) -> list[Query]:
    """The neighbor queries of ``fact``: one per template, in template order.

    Templates giving a prompt already produced by an earlier template (e.g. ``"... [Y]."`` and
    ``"... [Y] ."``) are skipped, so the prompts are distinct.  Every template must be causal
    (:class:`KnowlocError` otherwise).
    """
    queries: list[Query] = []
    seen: set[str] = set()
    for template in templates:
        query = make_query(fact, template)
        if query.text not in seen:
            seen.add(query.text)
            queries.append(query)
    return queries
