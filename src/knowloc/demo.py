"""`make demo`: a study designed to decide the paper's questions on the embedded default model, then the report.

Sized toward 15 minutes on 2 CPU cores from a fresh clone (19.4 min measured on a slow day, docs/performance.md) and
to give each finding it runs the facts it needs: 25 of the built-in facts SmolLM2-135M-Instruct knows (the study's
seeded sample, so three or four per relation: the null baseline swaps templates between facts of one relation; with
K_C about a third of the facts (SmolLM2, IG, the demo's settings), K_C reaches the 5 facts an interval needs), IG
(the paper's first method) on two 1-thread Ray workers (the local executor when Ray is missing), and every
experiment that can answer its question at this size: consistency, modification, query-mapping, attention, knockout,
cas (its transductive protocol and free budget, the paper's and the finding's; the held-out and matched-budget
checks are left to full studies), causal tracing of each fact's first query with 3 noise draws (10 in a study) and
Hase et al.'s localization-vs-editing test reduced to ROME at 4 layers spread over the model (every9: 0, 9, 18, 27
of SmolLM2's 30) on the first 12 facts (ROME's key statistics over 32 samples of the model's own text, 2 context
prefixes); 5 locality prompts and 3 neutral sentences per edit, a specificity profile from 16 neutral prompts and 2
queries per relation (shipped for the embedded model, knowloc.attribution.shipped).

Left out, and said so at the top of the report with the command that runs everything: the methods SIG and AMIG,
the two sweeps that feed no finding (cas-sweep, update-sweep), the editors experiment (its two findings need about
40 paired facts: at 25 they could not decide, docs/performance.md) and mass-editing (edits that accumulate).
Choosing facts by their K_C / K_I outcome would bias the findings, so the sample is the study's own; the reduced
test's layers were chosen on this sample and checked on another (seed 1), docs/performance.md. Rerunning resumes;
`knowloc study` runs the same pipeline at any size.
"""

from __future__ import annotations

import importlib.util
import resource
import time
from pathlib import Path
from typing import Callable

from knowloc.models.loading import resolve_device
from knowloc.report.html import build_report, environment_info
from knowloc.study.config import StudyConfig
from knowloc.study.registry import names as experiment_names
from knowloc.study.runner import run_study

DEMO_FACTS = 25  # minutes from a fresh clone and the findings it decides: docs/performance.md
DEMO_SETTINGS = dict(n_boot=1000, locality=5, ppl_texts=3, specificity_prompts=16, specificity_queries=2,
                     cas_protocols=["transductive"], cas_budgets=["free"], rome_samples=32, rome_prefixes=2,
                     trace_samples=3, lve_facts=12, lve_layers=["every9"], lve_editors=["rome"])
# sweeps that feed no finding; findings that need more facts than the demo has time for; edits that accumulate
DEMO_SKIPS = ("cas-sweep", "update-sweep", "editors", "mass-editing")
DEMO_METHODS = ["ig"]


def demo_executor() -> dict:
    """Two 1-thread Ray workers when Ray is installed (`make install` installs it; on 2 cores they keep both busier
    than one 2-thread process, docs/study.md), else the local executor."""
    return {"executor": "ray", "workers": 2} if importlib.util.find_spec("ray") is not None else {"executor": "local"}


def demo_config(out: Path, model: str = "smollm2-135m", facts: int = DEMO_FACTS,
                methods: list[str] | None = None, executor: dict | None = None) -> StudyConfig:
    """The demo's study settings (``knowloc demo --dry-run`` prints their plan and estimated time); ``executor``:
    StudyConfig's executor settings (default :func:`demo_executor`)."""
    return StudyConfig(models=[model], data="builtin", methods=methods or DEMO_METHODS,
                       experiments=[e for e in experiment_names() if e not in DEMO_SKIPS], facts=facts, out=str(out),
                       **DEMO_SETTINGS,
                       **(demo_executor() if executor is None else executor))


def run_demo(out: Path, model: str = "smollm2-135m", facts: int = DEMO_FACTS, methods: list[str] | None = None,
             echo: Callable[[str], None] = print, executor: dict | None = None) -> Path:
    """Run the demo study into ``out`` (resuming), then write ``out/report.html``; returns the report's path.

    The report's environment records the device the study's models ran on: the config's device as
    :func:`knowloc.models.load_model` resolves it (the demo sets none, so cuda when available, else cpu).
    """
    config = demo_config(out, model, facts, methods, executor)
    device = str(resolve_device(config.device))
    start = time.perf_counter()
    run_study(config, echo=echo)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = build_report(Path(out), environment_info(device=device, wall_s=wall, peak_rss_mb=peak_mb))
    echo(f"demo finished in {wall / 60:.1f} min, peak memory {peak_mb:.0f} MB")
    return report
