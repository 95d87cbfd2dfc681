"""How far the dry run's estimate is from the real run (issue: "a dry run worth trusting", within 2x).

Usage:
    python benchmarks/dry_run.py demo  [--out DIR]    # the `make demo` settings (knowloc.demo.demo_config)
    python benchmarks/dry_run.py cas20 [--out DIR]    # a 20-fact CAS study: --experiments cas --facts 20 --methods ig

For the chosen preset the script runs the dry run (``knowloc.study.plan.print_plan``, exactly what
``knowloc study --dry-run`` / ``knowloc demo --dry-run`` print), then the study itself into a fresh --out
(default: a temporary directory), and prints the estimate, the measured wall time and their ratio. The study
runs in this process with torch's default threads, as ``knowloc study`` does. Run it on an otherwise idle
machine: the estimate times units now, the study runs after it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from knowloc.demo import demo_config
from knowloc.study.config import StudyConfig
from knowloc.study.plan import print_plan
from knowloc.study.runner import run_study


def _config(preset: str, out: Path) -> StudyConfig:
    if preset == "demo":
        return demo_config(out)
    return StudyConfig(models=["smollm2-135m"], data="builtin", methods=["ig"], experiments=["cas"], facts=20,
                       out=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=["demo", "cas20"])
    parser.add_argument("--out", type=Path, default=None, help="study directory (must not exist)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=f"knowloc-{args.preset}-")) / "study"
    if out.exists():
        raise SystemExit(f"--out {out} exists; the measurement needs a fresh study")
    config = _config(args.preset, out)
    start = time.perf_counter()
    plan = print_plan(config)
    dry_s = time.perf_counter() - start
    start = time.perf_counter()
    run_study(config, echo=print)
    real_s = time.perf_counter() - start
    ratio = real_s / plan["wall_s"] if plan["wall_s"] else float("nan")
    print(f"preset={args.preset} estimate_s={plan['wall_s']:.0f} real_s={real_s:.0f} ratio_real_over_estimate="
          f"{ratio:.2f} within_2x={0.5 <= ratio <= 2.0} dry_run_s={dry_s:.0f}")
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
