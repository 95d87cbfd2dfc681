"""`knowloc bench knockout`: what the attention knockout of one query costs (3 edge sets x every layer, batched).

On the first query of ``queries`` built-in facts, one relation after another (as `knowloc bench tracing` picks
them): the seconds of :func:`knowloc.attention.knockout.knockout_effects` plus
:func:`~knowloc.attention.knockout.extraction_hits` per query (median; what the `knockout` experiment does per fact
besides reading the attention rows), P(answer) and the layer where blocking the subject hurts most. The window is a
study's default (a fifth of the layers) unless given.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from knowloc.attention.knockout import extraction_hits, knockout_effects
from knowloc.data import load_facts
from knowloc.models import load_model
from knowloc.models.loading import resolve_device


def run_knockout_benchmark(model: str = "smollm2-135m", *, queries: int = 7, window: int | None = None,
                           device=None, echo: Callable[[str], None] = print) -> dict:
    """Print and return the figures of the module docstring; the last line is ``key=value`` pairs.

    Returns:
        ``{"median_s", "seconds": [per query]}``.

    Example:
        >>> run_knockout_benchmark("smollm2-135m", queries=7)["median_s"]  # doctest: +SKIP
    """
    lm = load_model(model, device=device)
    echo(f"{model} on {resolve_device(device)} with {torch.get_num_threads()} threads; {lm.n_layers} layers")
    seconds = []
    for fact, items in load_facts("builtin").across_relations()[:queries]:
        start = time.perf_counter()
        result = knockout_effects(lm, items[0].text, fact.subject, fact.object, window=window)
        extraction_hits(lm, items[0].text, fact.subject, fact.object)
        seconds.append(time.perf_counter() - start)
        subject = np.array(result.drop["subject"])
        echo(f"  {items[0].text!r}: {seconds[-1]:.1f} s; P(answer) {result.p_clean:.3f}; blocking the subject hurts "
             f"most at layer {int(subject.argmax())} (drop {subject.max():.2f}, window {result.window})")
    median = statistics.median(seconds)
    echo(f"knockout: {median:.1f} s per query (median of {len(seconds)}; goal <= 5 s on 2 cores)")
    echo(f"median_s={median:.3f} queries={len(seconds)} model={model} device={resolve_device(device)}")
    return {"median_s": median, "seconds": seconds}
