"""The attribution cache: attributions kept on disk and shared by every study and process, content-addressed.

An entry is one :class:`~knowloc.attribution.result.Attribution` (its float32 scores bit-exact, its prob,
prediction and settings), stored under the SHA-256 of its key (:func:`attribution_key`):

    key = (format version, the model's weights fingerprint (knowloc.models.fingerprint), hook site,
           compute dtype, attributed token (the gold target or the model's own next token), method,
           effective steps, objective, baselines (SIG's baseline token, AMIG's reference prompts' text),
           attributed layers, prompt, target, and the device type where it is not the CPU)

so any change of weights, setting, prompt or target is another key and an entry is never stale. A GPU's result
agrees with the CPU's to rounding (1.7e-6 relative, measured on an H200), which can move a neuron across the KN
threshold, so a study on a GPU never reads a CPU's entries (the shipped reference included) and the reverse. Settings that
do not change the result (batch size, memory budget, progress) are not part of it.

Safety:

* **kill -9 / full disk**: an entry is written to a temporary file and moved into place with ``os.replace``, and
  its header records the length and SHA-256 of its payload; a reader that finds a short, damaged or foreign file
  treats it as a miss and removes it, so a torn entry is never read.
* **concurrent studies**: two processes computing the same key write the same name; the last rename wins and
  either entry is the same attribution, so there is one entry per key.
* **size**: ``max_bytes`` bounds the directory; a hit refreshes the entry's modification time and a write that
  takes the cache over its bound removes the least recently used entries until it is at 90% of it.

``--attribution-cache DIR`` of `knowloc study` chooses the directory (default :func:`default_cache_dir`: the
``KNOWLOC_ATTRIBUTION_CACHE`` environment variable, else ``$KNOWLOC_CACHE/attributions``, else
``~/.cache/knowloc/attributions``); ``off`` disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from knowloc.attribution.methods import MethodConfig, reference_prompts
from knowloc.attribution.result import Attribution
from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.fingerprint import weights_hash
from knowloc.models.loading import cache_dir
from knowloc.models.lm import LanguageModel

__all__ = ["AttributionCache", "attribution_key", "default_cache_dir", "DEFAULT_MAX_GB"]

FORMAT = 1  # part of every key: a change of the engine's results or of the file format bumps it
MAGIC = b"KNOWLOC-ATTR\x00\x01"
DEFAULT_MAX_GB = 4.0
_FIELDS = ("method", "steps", "baseline", "prompt", "target", "objective", "prob", "extra", "p_first", "top_k",
           "target_rank")


def default_cache_dir() -> Path:
    """``$KNOWLOC_ATTRIBUTION_CACHE``, else ``attributions`` in knowloc's cache directory (``$KNOWLOC_CACHE``, else
    ``~/.cache/knowloc``, where the dequantized models live too)."""
    if os.environ.get("KNOWLOC_ATTRIBUTION_CACHE"):
        return Path(os.environ["KNOWLOC_ATTRIBUTION_CACHE"]).expanduser()
    return cache_dir() / "attributions"


def attribution_key(lm: LanguageModel, config: MethodConfig, prompt: str, target: str | None,
                    layers: list[int] | None = None) -> str:
    """The content address of one attribution (the module docstring lists what it covers).

    Args:
        lm: the model (its weights are fingerprinted; remembered until a weight changes).
        config: the method's settings; prompt: the prompt as given to ``attribute``; target: the gold object, or
            None for :func:`~knowloc.attribution.api.attribute_next_token` (the model's own next token).
        layers: the attributed layers (None: all).

    Returns:
        64 hex digits.
    """
    baseline: object = None
    if config.method == "sig":
        baseline = config.baseline_token
    elif config.method == "amig":
        baseline = list(reference_prompts(config))
    fields = {"format": FORMAT, "weights": weights_hash(lm), "site": lm.site, "dtype": str(lm.dtype),
              "kind": "target" if target is not None else "next_token", "method": config.method,
              "steps": config.effective_steps, "objective": config.objective, "baseline": baseline,
              "layers": None if layers is None else sorted(set(layers)), "prompt": prompt, "target": target}
    if lm.device.type != "cpu":  # a GPU's kernels round otherwise; CPU keys (and the shipped reference) unchanged
        fields["device"] = lm.device.type
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AttributionCache:
    """A directory of attribution entries (see the module docstring).

    Args:
        directory: where the entries live (created on the first write).
        max_bytes: the size bound (default :data:`DEFAULT_MAX_GB` GiB).

    Example:
        >>> cache = AttributionCache("~/.cache/knowloc/attributions")
        >>> attribute(lm, "The capital of France is", "Paris", cache=cache)   # computed and stored
        >>> attribute(lm, "The capital of France is", "Paris", cache=cache)   # read back, bit-exact
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None):
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise KnowlocError(f"attribution cache {self.directory} exists and is not a directory")
        self.max_bytes = int(DEFAULT_MAX_GB * 2**30) if max_bytes is None else int(max_bytes)
        if self.max_bytes <= 0:
            raise KnowlocError(f"the attribution cache's size bound must be positive, got {self.max_bytes} bytes")
        self._size: int | None = None  # this process's running estimate of the directory's size
        self.hits = self.misses = 0
        self._warned = False

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.attr"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Attribution | None:
        """The stored attribution of ``key``, or None (a missing, short or damaged entry: removed)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        result = _decode(blob, key)
        if result is None:
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        try:
            os.utime(path)  # least recently used = oldest modification time
        except OSError:
            pass
        self.hits += 1
        return result

    def put(self, key: str, attr: Attribution) -> None:
        """Store ``attr`` under ``key`` (atomically), then keep the cache within its bound."""
        blob = _encode(key, attr)
        try:
            atomic_write(self.path(key), blob)
        except KnowlocError as exc:  # a cache that cannot be written (full disk, read-only) costs speed only
            if not self._warned:
                warnings.warn(f"attribution cache: {exc}; continuing without storing", RuntimeWarning, stacklevel=2)
                self._warned = True
            return
        if self._size is None:
            self._size = self.size_bytes()
        else:
            self._size += len(blob)
        if self._size > self.max_bytes:
            self.evict()

    def entries(self) -> list[Path]:
        return sorted(self.directory.glob("??/*.attr")) if self.directory.is_dir() else []

    def size_bytes(self) -> int:
        total = 0
        for path in self.entries():
            try:
                total += path.stat().st_size
            except OSError:  # removed by another process meanwhile
                pass
        return total

    def evict(self, target: float = 0.9) -> int:
        """Remove least recently used entries until the cache holds at most ``target`` x its bound; returns how
        many were removed."""
        stats = []
        for path in self.entries():
            try:
                st = path.stat()
            except OSError:
                continue
            stats.append((st.st_mtime, st.st_size, path))
        stats.sort()
        total = sum(size for _, size, _ in stats)
        removed = 0
        for _, size, path in stats:
            if total <= target * self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        self._size = total
        return removed


def _encode(key: str, attr: Attribution) -> bytes:
    scores = attr.scores.detach().to(torch.float32).cpu().contiguous().numpy()
    payload = scores.tobytes()
    meta = {"key": key, "shape": list(scores.shape), "sha256": hashlib.sha256(payload).hexdigest(),
            "length": len(payload), **{name: getattr(attr, name) for name in _FIELDS}}
    header = json.dumps(meta, allow_nan=True).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def _decode(blob: bytes, key: str) -> Attribution | None:
    start = len(MAGIC) + 4
    if len(blob) < start or not blob.startswith(MAGIC):
        return None
    (n_header,) = struct.unpack("<I", blob[len(MAGIC):start])
    try:
        meta = json.loads(blob[start:start + n_header])
    except ValueError:
        return None
    payload = blob[start + n_header:]
    if (not isinstance(meta, dict) or meta.get("key") != key or meta.get("length") != len(payload)
            or hashlib.sha256(payload).hexdigest() != meta.get("sha256")):
        return None
    scores = torch.from_numpy(np.frombuffer(payload, dtype=np.float32).reshape(meta["shape"]).copy())
    return Attribution(scores=scores, **{name: meta[name] for name in _FIELDS})
