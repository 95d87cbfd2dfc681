"""Atomic file writing: the one place knowloc writes a result file.

A file is written to a temporary name beside its destination and moved into place with ``os.replace``, so a
reader (or a crash) never sees half a file. The temporary file is created with ``open(..., "xb")``, which
honours the umask: results come out with the same mode as any other file the user creates (0644 under the
usual umask 022), not the 0600 of ``tempfile``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from knowloc.errors import KnowlocError

Content = str | bytes | Callable[[BinaryIO], None]


def atomic_write(path: str | os.PathLike[str], content: Content, encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` atomically and return the path.

    Args:
        path: destination; its directory is created if needed.
        content: text (encoded with ``encoding``), bytes, or a function that writes to a binary file object.

    Raises:
        KnowlocError: the file cannot be written (one line naming it and the reason); no temporary file is
            left behind.

    Example:
        >>> atomic_write("runs/s1/summary.md", "# knowloc study\\n")
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                handle = open(tmp, "xb")  # noqa: SIM115 - closed below
            except FileExistsError:
                continue
            break
        with handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode(encoding) if isinstance(content, str) else content)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise KnowlocError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path
