"""Download the official ParaRel files (for users with internet access).

:func:`download_pararel` fetches ParaRel (Elazar et al., 2021; github.com/yanaiela/pararel, MIT
licence) from GitHub raw at a pinned commit and writes the layout that
``load_facts("pararel:DIR")`` reads::

    DIR/patterns/P36.jsonl   <- data/pattern_data/graphs_json/P36.jsonl
    DIR/facts/P36.jsonl      <- data/trex_lms_vocab/P36.jsonl

Every file is checked against the sha256 recorded in ``knowloc/resources/pararel_manifest.json``
(computed from that commit).  Files are first downloaded into a hidden staging folder inside
``DIR`` and only moved into place (``os.replace``, atomic per file) once *all* of them have been
verified, so a network error or a checksum mismatch leaves ``DIR`` as it was.  Files already
present with the right checksum are not downloaded again.  Only ``urllib`` is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from knowloc.errors import KnowlocError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/yanaiela/pararel"
PINNED_COMMIT = "cb5554678457beb5ac163d888f1ce8cf174b3f0b"
MANIFEST_RESOURCE = "pararel_manifest.json"
# our sub-folder -> folder of the ParaRel repository
SOURCE_DIRS = {"patterns": "data/pattern_data/graphs_json", "facts": "data/trex_lms_vocab"}
_CHUNK = 1 << 16


def load_manifest() -> dict[str, Any]:
    """The shipped manifest: ``{"commit": ..., "files": {"patterns/P36.jsonl": sha256, ...}, ...}``."""
    text = (resources.files("knowloc") / "resources" / MANIFEST_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wanted_files(files: dict[str, str], relations: Sequence[str] | None) -> list[str]:
    if relations is None:
        return list(files)
    if isinstance(relations, str):
        relations = [relations]
    if not relations:
        raise KnowlocError("empty relation list; pass None to download every relation")
    available = [name[len("patterns/") : -len(".jsonl")] for name in files if name.startswith("patterns/")]
    available = [rel for rel in available if f"facts/{rel}.jsonl" in files]
    unknown = [rel for rel in relations if rel not in available]
    if unknown:
        raise KnowlocError(f"unknown ParaRel relation {unknown[0]!r}; available: {', '.join(available)}")
    wanted = dict.fromkeys(f"{sub}/{rel}.jsonl" for rel in relations for sub in ("patterns", "facts"))
    return list(wanted)


def _fetch(url: str, target: Path, timeout: float) -> str:
    """Stream ``url`` into ``target``; return its sha256."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "knowloc"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise KnowlocError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise KnowlocError(f"download failed: {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, connection resets, bad URLs
        raise KnowlocError(f"download failed: {url}: {exc}") from None
    return digest.hexdigest()


def download_pararel(
    dest_dir: str | os.PathLike[str],
    base_url: str = DEFAULT_BASE_URL,
    commit: str = PINNED_COMMIT,
    relations: Sequence[str] | None = None,
    verify: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ParaRel into ``dest_dir`` (``patterns/`` and ``facts/``) and return its path.

    ``base_url`` + ``/<commit>/<path in the repository>`` is fetched for each file of the
    manifest (or only the patterns and facts files of ``relations``).  With ``verify`` (default)
    each file's sha256 must match the manifest, which exists for :data:`PINNED_COMMIT` only;
    another ``commit`` needs ``verify=False``.  Raises :class:`KnowlocError` on an unknown
    relation, a download error or a checksum mismatch; then nothing in ``dest_dir`` is changed.
    """
    manifest = load_manifest()
    files: dict[str, str] = manifest["files"]
    if verify and commit != manifest["commit"]:
        raise KnowlocError(
            f"no checksums for ParaRel commit {commit!r} (the manifest is for {manifest['commit']}); "
            "pass verify=False to download it unchecked"
        )
    names = _wanted_files(files, relations)
    dest = Path(dest_dir).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise KnowlocError(f"download destination {dest} exists and is not a directory")
    created_dest = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KnowlocError(f"cannot create {dest}: {exc.strerror or exc}") from None

    todo = [n for n in names if not (verify and (dest / n).is_file() and _sha256(dest / n) == files[n])]
    staging = Path(tempfile.mkdtemp(prefix=".pararel-download-", dir=dest))
    ok = False
    try:
        for name in todo:
            sub, filename = name.split("/", 1)
            url = f"{base_url.rstrip('/')}/{commit}/{SOURCE_DIRS[sub]}/{filename}"
            staged = staging / name
            staged.parent.mkdir(exist_ok=True)
            got = _fetch(url, staged, timeout)
            if verify and got != files[name]:
                raise KnowlocError(
                    f"checksum mismatch for {url}: expected sha256 {files[name]}, got {got}; nothing was written"
                )
        for name in todo:  # everything verified: move into place
            (dest / name).parent.mkdir(exist_ok=True)
            os.replace(staging / name, dest / name)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created_dest:
            try:
                dest.rmdir()  # only succeeds if we left it empty
            except OSError:
                pass
    return dest
