"""Shipped reference attributions: the specificity reference of the built-in models, computed once and packaged.

A study's specificity profile (knowloc.study.neuron_sets) attributes about a hundred fact-free prompts and
reference queries per method before it can filter anything; on 2 CPU cores that is most of a small first
study. ``knowloc/resources/reference/<model>.json.gz`` (or the packs in ``$KNOWLOC_REFERENCE_DIR``) holds those
attributions for the built-in models, each under its attribution-cache key
(:func:`knowloc.attribution.disk_cache.attribution_key`: the model's weights fingerprint, method, steps,
baselines, prompt and target), so an entry can only serve the exact attribution it was computed as, on
bit-identical weights. What is kept per entry:

* the objective ``prob``, the attributed token id and text;
* the score map (rounded to float16, as a study's store keeps it) at every neuron whose score is at least
  ``floor x max`` (FLOOR = 0.1), all other neurons 0.

For any relative KN threshold ``t >= floor`` the KN set of the kept map equals that of the full map (Dai et al.'s
rule ``score > t x max`` cannot pick a neuron below ``floor x max``, and the maximum is kept); a study with
``--threshold`` below the floor computes its reference as before. ``knowloc reference build`` regenerates a file
(tests/attribution/test_shipped_reference.py recomputes a sample of the shipped entries and compares).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import torch

from knowloc.attribution.disk_cache import attribution_key
from knowloc.attribution.methods import MethodConfig
from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.lm import LanguageModel

__all__ = ["FLOOR", "ShippedEntry", "shipped_entry", "encode_entry", "write_pack", "pack_folder"]

FLOOR = 0.1
FOLDER = "reference"


class ShippedEntry(dict):
    """``{"prob", "token", "token_text", "shape", "neurons": [[layer, index, score], ...]}`` of one entry."""

    def scores(self) -> torch.Tensor:
        """The kept score map ``[n_layers, n_neurons]`` (float32 holding float16 values; 0 below the floor)."""
        out = torch.zeros(self["shape"], dtype=torch.float32)  # a score map: float32 on the CPU, like Attribution's
        for layer, index, score in self["neurons"]:
            out[layer, index] = score
        return out


def pack_folder() -> Path:
    """Where packs are read from: ``$KNOWLOC_REFERENCE_DIR`` when set, else the packaged
    ``knowloc/resources/reference``."""
    override = os.environ.get("KNOWLOC_REFERENCE_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "resources" / FOLDER


@functools.lru_cache(maxsize=4)
def _entries_in(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if not folder.is_dir():
        return out
    for item in sorted(folder.glob("*.json.gz")):
        try:
            out.update(json.loads(gzip.decompress(item.read_bytes()))["entries"])
        except (OSError, ValueError, KeyError) as exc:
            raise KnowlocError(f"shipped reference {item} is damaged ({exc}); rerun `knowloc reference build`")
    return out


def _entries() -> dict[str, dict]:
    return _entries_in(pack_folder())


def shipped_entry(lm: LanguageModel, method: str, steps: int, prompt: str, target: str | None,
                  threshold: float) -> ShippedEntry | None:
    """The shipped attribution of (prompt, target) on this model, method and steps, when one is shipped and
    serves the KN threshold (``threshold >= FLOOR``); else None.

    Args:
        lm: the model (its weights fingerprint is part of the key); method, steps: the attribution's settings.
        prompt, target: as given to ``attribute`` (``target`` None: the model's own next token, as
            ``attribute_next_token``).
        threshold: the relative KN threshold the caller selects with.
    """
    if threshold < FLOOR or not _entries():
        return None
    entry = _entries().get(attribution_key(lm, MethodConfig(method, steps), prompt, target))
    return None if entry is None else ShippedEntry(entry)


def encode_entry(scores: torch.Tensor, prob: float, token: int, token_text: str, *, method: str, steps: int,
                 prompt: str, target: str | None) -> dict:
    """One entry from a full score map (rounded to float16 first, as a study's store does), with what it
    attributes (so that a test can recompute it)."""
    rounded = scores.to(torch.float16).float()
    peak = float(rounded.max())
    kept = (rounded >= FLOOR * peak).nonzero().tolist() if peak > 0 else []
    return {"method": method, "steps": steps, "prompt": prompt, "target": target, "prob": float(prob),
            "token": int(token), "token_text": token_text, "shape": list(rounded.shape),
            "neurons": [[int(l), int(i), float(rounded[l, i])] for l, i in kept]}


def write_pack(path: str | Path, model: str, entries: dict[str, dict]) -> Path:
    """Write a pack file (gzip JSON ``{"model", "floor", "entries": {key: entry}}``), keys sorted."""
    if not entries:
        raise KnowlocError("no reference entries to write")
    body = json.dumps({"model": model, "floor": FLOOR, "entries": dict(sorted(entries.items()))},
                      separators=(",", ":"))
    path = atomic_write(path, gzip.compress(body.encode(), mtime=0))
    _entries_in.cache_clear()
    return path
