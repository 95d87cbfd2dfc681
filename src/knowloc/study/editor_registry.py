"""The editors a study can run (``--editors``), each one line: its name and how it is built from the study's
settings (docs/extending.md, "Adding an editor").

An editor's class lives in :mod:`knowloc.editing.editors` (one module) and its settings section, if it has one,
in that module too; a new editor is that module plus one line of :data:`BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from knowloc.editing.editors import CovarianceStore, Editor, shared_store
from knowloc.editing.editors.memit import AlphaEdit, Memit
from knowloc.errors import KnowlocError

if TYPE_CHECKING:
    from knowloc.study.config import StudyConfig

SAMPLE_LENGTH = 64  # tokens per sample of ROME's text sample of C

# name -> the editor with the study's settings (the covariance store holds ROME's C)
BUILDERS: dict[str, Callable[[StudyConfig, CovarianceStore], Editor]] = {
    "kn": lambda cfg, covariance: cfg.update.editor(),
    "kn-ft": lambda cfg, covariance: cfg.ft.editor(neurons=True),
    "ft": lambda cfg, covariance: cfg.ft.editor(),
    "rome": lambda cfg, covariance: cfg.rome.editor(covariance, cfg.seed, SAMPLE_LENGTH),
    "memit": lambda cfg, covariance: Memit(**cfg.rome.arguments(covariance, cfg.seed, SAMPLE_LENGTH)),
    "alphaedit": lambda cfg, covariance: AlphaEdit(**cfg.rome.arguments(covariance, cfg.seed, SAMPLE_LENGTH)),
}
EDITORS = tuple(BUILDERS)


def check_editors(names) -> list[str]:
    """Distinct editor names from a list or a comma-separated string (one-line error for an unknown one)."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in items if n]
    unknown = [n for n in items if n not in BUILDERS]
    if unknown:
        raise KnowlocError(f"unknown editor {unknown[0]!r}; choose from {', '.join(EDITORS)}")
    if not items or len(set(items)) != len(items):
        raise KnowlocError(f"--editors must be distinct editors from {', '.join(EDITORS)}, got {names!r}")
    return items


def make_editor(name: str, cfg: StudyConfig, covariance: CovarianceStore | None = None,
                calibrated: dict | None = None) -> Editor:
    """The editor ``name`` with the study's settings (ROME's C from ``covariance``, default the shared store;
    ``calibrated``: a model's calibrated settings, ``{"ft_bound": b}``, needed for ft / kn-ft with
    ``--ft-bound auto``).

    Example:
        >>> make_editor("rome", StudyConfig(rome_steps=10)).steps
        10
    """
    check_editors([name])
    if calibrated and "ft_bound" in calibrated:  # the model's bound in place of 'auto'
        cfg = replace(cfg, ft=replace(cfg.ft, bound=calibrated["ft_bound"]))
    return BUILDERS[name](cfg, covariance or shared_store())
