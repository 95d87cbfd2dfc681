"""User-facing errors: the CLI prints them as one line and exits with code 2.

:class:`Interrupted` is what the CLI's SIGINT / SIGTERM handlers raise in the main thread (it derives from
``BaseException``, as KeyboardInterrupt does, so that no ``except Exception`` swallows it); the CLI prints it as
one line and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal


class KnowlocError(Exception):
    """Bad input or an impossible request; the message names the problem in one line."""

    exit_code = 2


class Interrupted(BaseException):
    """A run ended by a signal. ``units`` is ``(stored, planned)`` when a study was running: the units this run
    stored and those it had planned so far (set by :func:`knowloc.study.runner.run_study` on the way out)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)
        self.units: tuple[int, int] | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        if self.units is None:
            return "interrupted"
        stored, planned = self.units
        if planned == 0:  # still probing (or loading the model): no unit planned yet
            return "interrupted before the first unit; rerun to resume"
        return f"interrupted; {stored} of {planned} units stored; rerun to resume"
