"""Seconds of one study unit of each experiment, as a Ray worker runs it (one thread, after a warm-up unit).

Usage:
    python benchmarks/unit_times.py STUDY_DIR [--experiments modification,cas,update-sweep,editors]
        [--method ig] [--repeats 3] [--threads 1]

STUDY_DIR is a finished study (its summary.json and results.sqlite: the probe, the facts' attributions and the
specificity reference); its store is copied to a temporary directory and never written. The unit is the study
fact with the median number of neighbor queries, as in the dry run; each experiment's unit runs once untimed, then
``--repeats`` times, and the fastest is printed (the run-to-run spread under shared cores is a few percent). An
experiment the study did not run is timed as well (its settings are the study's). Last line:
``<experiment>=<seconds> ...`` for the table in docs/performance.md, run once on the commit before a change (a git
worktree, with ``PYTHONPATH=<worktree>/src``) and once after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import knowloc
from knowloc.study.context import StudyContext
from knowloc.study.reader import stored_config
from knowloc.study.store import Store
from knowloc.study.units import Unit, execute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--experiments", default="modification,cas,update-sweep,editors")
    parser.add_argument("--method", default="ig")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = Path(args.study)
    kinds = [k.strip() for k in args.experiments.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="knowloc-units-") as tmp:
        for name in ("results.sqlite", "summary.json"):
            shutil.copy(source / name, Path(tmp) / name)
        cfg = stored_config(json.loads((source / "summary.json").read_text()))
        cfg = replace(cfg, out=tmp, progress=False, attribution_cache="off",
                      experiments=tuple(dict.fromkeys((*cfg.experiments, *kinds))))
        ctx = StudyContext(config=cfg, store=Store(Path(tmp) / "results.sqlite"), out=Path(tmp), echo=lambda _: None)
        model = cfg.models[0]
        ctx.load_facts(model)
        facts = sorted(ctx.facts[model], key=lambda f: len(f.prompts))
        fact = facts[(len(facts) - 1) // 2]
        print(f"knowloc {Path(knowloc.__file__).parent}; {model}, {args.method}, fact {fact.fact_id} "
              f"({len(fact.prompts)} queries), {args.threads} thread(s), best of {args.repeats}")
        times = {}
        for kind in kinds:
            unit = Unit(kind, model, args.method, fact.fact_id)
            execute(ctx, unit)  # warm: the first unit pays one-off costs (and a worker's cached profile)
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                execute(ctx, unit)
                runs.append(time.perf_counter() - start)
            times[kind] = min(runs)
            print(f"  {kind}: {min(runs):.2f} s (runs {', '.join(f'{r:.2f}' for r in runs)})")
        ctx.store.close()
    print(" ".join(f"{k}={v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
