"""Typed settings: what a component's settings dataclass is made of, so that a study composes them.

A component (ROME, fine-tuning, the KN update rule, causal tracing, CAS, an experiment's grid) owns one settings
dataclass: its fields are :func:`setting` fields (a default, help text, a kind, extra flag spellings) and its
``__post_init__`` validates them once, with one-line :class:`~knowloc.errors.KnowlocError`\\ s naming the flag.
:class:`knowloc.study.config.StudyConfig` composes them as sections (``cfg.rome.steps``); each field is also a
flag of ``knowloc study`` and a TOML key, spelled from its path (``--rome-steps``, ``[rome] steps``) unless it
keeps an older name (``flat=``: ``--lambda1`` of the update rule).

Kinds (what a study directory does with a setting):

- ``identity``: determines stored values; a study directory keeps one set of them and refuses another;
- ``view``: what to look at and how to summarize it; a later run may change it and reuse everything;
- ``runtime``: where and how the study runs; changes neither stored values nor the summary.

Example:
    >>> @dataclass
    ... class NoiseSettings:
    ...     samples: int = setting(10, help="noise draws per query")
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any

from knowloc.errors import KnowlocError

KINDS = ("identity", "view", "runtime")


def setting(default: Any = MISSING, *, help: str, kind: str = "identity", factory: Any = MISSING,
            aliases: tuple[str, ...] = (), flat: str | None = None, study: bool = True) -> Any:
    """A settings field with its help text, kind (identity / view / runtime), extra flag spellings (``aliases``),
    the name it keeps in a study's flat view (``flat``: default ``<section>_<name>``) and whether a study sets it
    at all (``study=False``: e.g. a seed the study derives from its own)."""
    if kind not in KINDS:
        raise ValueError(f"setting kind must be one of {KINDS}, got {kind!r}")
    metadata = {"help": help, "kind": kind, "aliases": aliases, "flat": flat, "study": study}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(spec: Field) -> Any:
    """A field's default (its factory's value where it has one)."""
    return spec.default if spec.default is not MISSING else spec.default_factory()  # type: ignore[misc]


def settings_fields(cls: type) -> list[Field]:
    """The fields of a settings dataclass that a study sets (:func:`setting` with ``study=True``)."""
    return [f for f in fields(cls) if f.metadata.get("study", True)]


def chosen(given: str | list[str], allowed: tuple[str, ...], flag: str) -> list[str]:
    """The names a list setting chose (a list, or one comma-separated string), in ``allowed``'s order; one line
    naming ``flag`` when it names none or an unknown one.

    Example:
        >>> chosen("held_out,transductive", ("transductive", "held_out"), "--cas-protocols")
        ['transductive', 'held_out']
    """
    names = given.split(",") if isinstance(given, str) else list(given)
    if not names or set(names) - set(allowed):
        raise KnowlocError(f"{flag} must name some of {', '.join(allowed)}, got {','.join(names) or 'none'}")
    return [name for name in allowed if name in names]
