"""A sqlite connection proxy whose writes raise after a number of successful ones (full disk, interrupts)."""

from __future__ import annotations


class FailingWrites:
    """Wraps a real connection; the `ok + 1`-th `executemany` runs and then raises `error()` (after=True), or
    raises instead of running (after=False)."""

    def __init__(self, real, ok: int, error, after: bool = False):
        self.real, self.ok, self.error, self.after = real, ok, error, after

    def executemany(self, *args):
        self.ok -= 1
        if self.ok < 0 and not self.after:
            raise self.error()
        result = self.real.executemany(*args)
        if self.ok < 0:
            raise self.error()
        return result

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self.real.__enter__()

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)
