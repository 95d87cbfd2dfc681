"""One read-only way into a study directory, for the report and the CLI: its ``summary.json``, the configuration
stored there (:func:`stored_config`) and the results store, opened read-only on first use and closed with the
reader. Nothing is recomputed and nothing written; a missing or unreadable part is a one-line
:class:`~knowloc.errors.KnowlocError` naming the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from knowloc.errors import KnowlocError
from knowloc.study.config import FLAT, RUNTIME_KEYS, StudyConfig
from knowloc.study.store import Store

SUMMARY, STORE = "summary.json", "results.sqlite"


def stored_config(summary: dict) -> StudyConfig:
    """The study's configuration rebuilt (and validated) from summary.json's ``config``.

    A setting the stored config lacks (a summary written before the setting existed) takes
    :meth:`StudyConfig.defaults`: an identity setting its legacy value (what such a study was computed with), any
    other its default. Keys StudyConfig does not know (settings since removed) and runtime keys (where and how
    the study ran) are ignored. Raises :class:`KnowlocError` when the summary holds no config or the stored
    settings are not a valid configuration.
    """
    stored = summary.get("config")
    if not isinstance(stored, dict):
        raise KnowlocError("summary.json holds no study configuration (`config`)")
    settings = set(FLAT) - RUNTIME_KEYS  # flat names, as summary.json stores them
    values = {**StudyConfig.defaults(), **{k: v for k, v in stored.items() if k in settings}}
    try:
        return StudyConfig(**values)
    except (KnowlocError, TypeError, ValueError) as exc:
        raise KnowlocError(f"summary.json's stored configuration is not valid: {exc}") from None


class StudyReader:
    """A study directory, read-only (a context manager that closes the store it opened).

    Example:
        >>> with StudyReader(Path("runs/study")) as study:
        ...     study.config().models, study.store().probed_models()
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._summary: dict | None = None
        self._store: Store | None = None

    def __enter__(self) -> StudyReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def has_store(self) -> bool:
        return (self.directory / STORE).is_file()

    @property
    def has_summary(self) -> bool:
        return (self.directory / SUMMARY).is_file()

    def summary(self) -> dict:
        """summary.json (read once; one line when it is missing or not JSON)."""
        if self._summary is None:
            path = self.directory / SUMMARY
            try:
                self._summary = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise KnowlocError(f"{self.directory} holds no {SUMMARY}; run `knowloc study --out "
                                   f"{self.directory}` first") from None
            except (OSError, ValueError) as exc:
                raise KnowlocError(f"{path} is not valid JSON: {exc}") from None
        return self._summary

    def config(self) -> StudyConfig:
        """The configuration summary.json stores (:func:`stored_config`)."""
        return stored_config(self.summary())

    def store(self) -> Store:
        """The results store, opened read-only once (one line when the directory has none)."""
        if self._store is None:
            if not self.has_store:
                raise KnowlocError(f"{self.directory} is not a study directory (no {STORE})")
            self._store = Store(self.directory / STORE, readonly=True)
        return self._store
