"""`make demo`: the whole study on the embedded default model, then the HTML report.

Sized to finish within 20 minutes on 2 CPU cores: every experiment, methods IG and AMIG, on a seeded sample of
10 of the built-in facts SmolLM2-135M-Instruct knows, with 5 locality prompts and 3 neutral sentences per edit,
a specificity profile from 24 neutral prompts and 4 queries per relation, and the update frontier on one edited
query per fact. The consistency section shows the filtered and unfiltered views side by side. Rerunning
resumes; `knowloc study` runs the same pipeline at any size.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

from knowloc.report.html import build_report, environment_info
from knowloc.study.config import StudyConfig
from knowloc.study.registry import names as experiment_names
from knowloc.study.runner import run_study

DEMO_FACTS = 10
DEMO_METHODS = ["ig", "amig"]


def run_demo(out: Path, model: str = "smollm2-135m", facts: int = DEMO_FACTS, methods: list[str] | None = None,
             echo: Callable[[str], None] = print) -> Path:
    start = time.perf_counter()
    config = StudyConfig(models=[model], data="builtin", methods=methods or DEMO_METHODS,
                         experiments=list(experiment_names()), facts=facts, out=str(out), n_boot=1000, locality=5,
                         ppl_texts=3, specificity_prompts=24, specificity_queries=4, update_sweep_queries=1)
    run_study(config, echo=echo)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = build_report(Path(out), environment_info(device="cpu", wall_s=wall, peak_rss_mb=peak_mb))
    echo(f"demo finished in {wall / 60:.1f} min, peak memory {peak_mb:.0f} MB")
    return report
