"""Summaries of a study that is still running (or was stopped), from a read-only view of its store.

Usage:
    python benchmarks/peek_summary.py STUDY_DIR EXPERIMENTS [SETTINGS_JSON] > partial/summary.json

EXPERIMENTS is a comma-separated list (e.g. consistency,modification,update-sweep); SETTINGS_JSON holds the
study's non-default settings (e.g. '{"specificity": 1.0}'; models default to smollm2-135m, methods to
ig,amig). Each experiment's `summarize` runs on the
trials stored so far (figures go to a temporary directory; nothing is written to STUDY_DIR), and the merged
summary is printed as strict JSON, so `benchmarks/side_by_side.py` can read a partial study.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import knowloc.study.experiments  # noqa: F401  (registers the built-in experiments)
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.registry import get
from knowloc.study.runner import strict_json
from knowloc.study.store import Store


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2].split(",")
    settings = {"models": ["smollm2-135m"], "methods": ["ig", "amig"],
                **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})}
    summary: dict = {}
    with tempfile.TemporaryDirectory() as scratch:  # the figures summarize draws are not kept
        tmp = Path(scratch)
        cfg = StudyConfig(experiments=["consistency"], out=str(tmp), progress=False, **settings)
        store = Store(out / "results.sqlite", readonly=True)
        ctx = StudyContext(config=cfg, store=store, out=tmp, echo=lambda _: None)
        for model in cfg.models:
            ctx.load_facts(model)
        for name in names:
            summary.update(get(name).summarize(ctx).summary)
        store.close()
    print(json.dumps(strict_json(summary)))

if __name__ == "__main__":
    main()
