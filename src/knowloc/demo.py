"""`make demo`: the main job on the embedded default model."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def run_demo(out: Path, model: str = "smollm2-135m", echo: Callable[[str], None] = print) -> Path:
    """Probe the built-in facts, then localize the knowledge neurons of the best-known query."""
    from knowloc.attribution import attribute
    from knowloc.data import load_facts
    from knowloc.data.filtering import known_facts, probe_facts
    from knowloc.models import load_model

    start = time.perf_counter()
    lm = load_model(model)
    dataset = load_facts("builtin")
    probes = probe_facts(lm, list(dataset))
    usable = known_facts(probes)
    relations = {}
    for relation in dataset.relations:
        queries = [q for p in probes if p.fact.relation == relation for q in p.queries]
        relations[relation] = {"queries": len(queries), "top1": sum(q.top1 for q in queries) / len(queries)}
    best = max((q for p in probes for q in p.queries), key=lambda q: q.prob)
    result = attribute(lm, best.query, method="ig", steps=20)
    neurons = result.neurons(0.2)
    summary = {
        "model": model, "facts": len(dataset), "usable_facts": len(usable), "relations": relations,
        "example": {"prompt": result.prompt, "target": result.target, "prob": result.prob,
                    "knowledge_neurons": [[l, i] for l, i in neurons[:50]]},
        "seconds": time.perf_counter() - start,
    }
    path = Path(out) / "probe.json"
    _write_json_atomic(path, summary)
    echo(f"{len(usable)}/{len(dataset)} built-in facts usable (answered in >= 2 paraphrases)")
    echo(f"example: {result.prompt!r} -> {result.target!r}: {len(neurons)} knowledge neurons, top "
         f"{[f'L{l}#{i}' for l, i in neurons[:5]]}")
    return path
