"""`knowloc bench tracing`: what tracing one query costs (3 kinds x every layer x its tokens x the noise draws).

On the first query of ``queries`` built-in facts, one relation after another (its first fact, then each relation's
second, ...: the prompts' lengths differ by relation, 6 to 10 tokens on SmolLM2): the seconds of
:func:`knowloc.tracing.trace` per query (median), the rows it ran (tokens from the subject on x layers x draws, per
kind), P_clean, P_corrupted and where each kind's IE peaks. By default with a study's default settings: a study's
``--trace-*`` defaults are :class:`~knowloc.tracing.trace.TraceSettings`' own, so the benchmark times what studies run.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from knowloc.data import load_facts
from knowloc.models import load_model
from knowloc.models.loading import resolve_device
from knowloc.tracing.trace import KINDS, TraceSettings, trace


def run_tracing_benchmark(model: str = "smollm2-135m", *, queries: int = 7, settings: TraceSettings = TraceSettings(),
                          device=None, echo: Callable[[str], None] = print) -> dict:
    """Print and return the figures of the module docstring.

    Returns:
        ``{"median_s", "seconds": [per query], "restorations": [per query]}``.

    Example:
        >>> run_tracing_benchmark("smollm2-135m", queries=7)["median_s"]  # doctest: +SKIP
    """
    lm = load_model(model, device=device)
    echo(f"{model} on {resolve_device(device)} with {torch.get_num_threads()} threads; {settings.samples} noise "
         f"draws, window {settings.window}, {lm.n_layers} layers")
    seconds, restorations = [], []
    for fact, items in load_facts("builtin").across_relations()[:queries]:
        start = time.perf_counter()
        result = trace(lm, items[0].text, fact.subject, fact.object, settings=settings)
        seconds.append(time.perf_counter() - start)
        traced = len(result.tokens) - result.subject[0]
        restorations.append(len(KINDS) * traced * lm.n_layers * settings.samples)
        peaks = ", ".join(f"{k} {result.ie[k].max():.2f} at (token {t}, layer {l})" for k in KINDS
                          for t, l in [np.unravel_index(result.ie[k].argmax(), result.ie[k].shape)])
        echo(f"  {items[0].text!r}: {seconds[-1]:.1f} s, {restorations[-1]} restorations ({len(result.tokens)} "
             f"tokens, {traced} from the subject on); P clean {result.p_clean:.3f}, corrupted "
             f"{result.p_corrupted:.3f}; peaks {peaks}")
    median = statistics.median(seconds)
    echo(f"tracing: {median:.1f} s per query (median of {len(seconds)}; goal <= 30 s on 2 cores)")
    return {"median_s": median, "seconds": seconds, "restorations": restorations}
