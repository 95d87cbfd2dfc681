"""Process-wide tuning that only an entry point may switch on (the library never does).

:func:`tune_allocator` asks glibc to keep freed memory for reuse instead of returning it to the OS after every
attribution: each query allocates about 1 GB of short-lived activations, and with the default trim / mmap
heuristics the pages go back to the OS and are faulted in again on the next query (10-15% of a query's time on
CPU). `knowloc`'s command line calls it at start-up, and its Ray workers do when the driver did. It changes
no result; it is a no-op off glibc. A program using knowloc as a library may call it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_state = {"tuned": False}


def tune_allocator() -> bool:
    """Keep freed heap memory (glibc ``mallopt`` M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD 32 MiB); returns
    whether it took effect. Idempotent."""
    if not _state["tuned"]:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _state["tuned"] = bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20))
        except (OSError, AttributeError):
            return False
    return _state["tuned"]


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` took effect in this process."""
    return _state["tuned"]
