"""`knowloc bench study`: what the full built-in study would cost on a model and a device.

It is the dry run (:func:`knowloc.study.plan.print_plan`) of the full study's settings on the built-in facts
(methods ig and amig; experiments consistency, modification, cas, update-sweep, editors and tracing), with one
benchmark switch: every fact counts as known, so that a random-init model of a paper's shape (``random:llama3-8b``),
which knows none, is timed on every fact a trained model could study. It times one real unit of every kind on this
machine and device and ends with ``estimate_s=... device=... model=...``: the estimated wall time of the whole
study (on one process; with Ray workers the plan's lines say the share).
"""

from __future__ import annotations

import tempfile
from typing import Callable

from knowloc.models.loading import resolve_device
from knowloc.study.config import StudyConfig
from knowloc.study.plan import print_plan

FULL_STUDY = dict(data="builtin", methods=["ig", "amig"],
                  experiments=["consistency", "modification", "cas", "update-sweep", "editors", "tracing"])


def run_study_benchmark(model: str, *, device: str | None = None, dtype: str | None = None, facts: int | None = None,
                        echo: Callable[[str], None] = print) -> dict:
    """Print the full built-in study's plan on ``model`` and ``device`` and its estimated wall time.

    Args:
        model: a built-in name, a path or ``random:<shape>``; device, dtype: where and in what precision it runs;
            facts: study at most this many facts (default all 116).

    Returns:
        :func:`~knowloc.study.plan.print_plan`'s result with ``device`` added.

    Example:
        >>> run_study_benchmark("random:llama3-8b", device="cuda", dtype="bf16")["wall_s"]
    """
    with tempfile.TemporaryDirectory(prefix="knowloc-bench-study-") as tmp:
        config = StudyConfig(models=[model], device=device, compute_dtype=dtype or "fp32", facts=facts, out=tmp,
                             progress=False, attribution_cache="off", **FULL_STUDY)
        result = print_plan(config, echo=echo, every_fact_known=True)
    where = str(resolve_device(device))
    echo(f"estimate_s={result['wall_s']:.0f} device={where} model={model}")
    return {**result, "device": where}
