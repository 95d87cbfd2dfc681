"""The editing goal per model and data set, from finished studies (issue 21's 2 x 2 table).

Usage:
    python benchmarks/goal_table.py STUDY_DIR [STUDY_DIR ...]

Each STUDY_DIR is a finished `knowloc study` with the `modification` and `update-sweep` experiments (any models,
one data set each). Per study, model and method it prints

1. **erase N_i** over every studied fact (pooled over K_C and K_I; each fact the mean over its queries' trials):
   n, Loc, the median dlogPPL and the mean dprob_self with 95% bootstrap CIs over facts (the study's seed and
   --n-boot), and whether each meets the goal: Loc >= 0.85, median dlogPPL <= 0.05, mean dprob_self <= -0.3;
   then the same per group from summary.json's `modification` rows;
2. **the best update point** per rule: the lambda2 with the highest Rel among the points with Loc >= 0.8
   (group "all", summary.json's `update_sweep`), and whether its Rel >= 0.5; where no point of any rule meets
   both, the whole frontier (Rel / Loc at every lambda2) so the gap shows.

Nothing is written; the stores are opened read-only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, metric_stats, trial_key
from knowloc.study.store import Store

GOAL = {"loc": (">=", 0.85), "dlogppl_median": ("<=", 0.05), "dprob_self": ("<=", -0.3)}
UPDATE_LOC, UPDATE_REL = 0.8, 0.5


def _cell(row: dict, key: str, digits: int = 2) -> str:
    """value [low, high], signed for the changes (dlogPPL, dprob)."""
    value, low, high = row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if value is None:
        return "n/a"
    sign = "+" if key.startswith("d") else ""
    interval = f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" if low is not None and high is not None else ""
    return f"{value:{sign}.{digits}f}{interval}"


def _meets(row: dict, key: str) -> bool:
    op, bound = GOAL[key]
    value = row.get(key)
    return value is not None and (value >= bound if op == ">=" else value <= bound)


def _context(study: Path) -> StudyContext:
    summary = json.loads((study / "summary.json").read_text())
    saved = {k: v for k, v in summary["config"].items() if k in StudyConfig.__dataclass_fields__}
    cfg = StudyConfig(**{**saved, "out": str(study), "progress": False})
    ctx = StudyContext(config=cfg, store=Store(study / "results.sqlite", readonly=True), out=study,
                       echo=lambda _: None)
    ctx.refresh()
    ctx.summary = summary
    return ctx


def erase_rows(ctx: StudyContext) -> list[dict]:
    """Pooled erase-N_i rows per model and method (all studied facts with modification trials)."""
    trials = ctx.store.trials("modification")
    out = []
    for model in ctx.config.models:
        for method in ctx.config.methods:
            fact_trials = [trials[trial_key(model, method, f.fact_id)] for f in ctx.facts[model]
                           if trial_key(model, method, f.fact_id) in trials]
            row = {"model": model, "method": method, "group": "all"}
            row.update(metric_stats(fact_trials, ("rel", "loc", "dprob_self"), ctx.config, "rel",
                                    operation="erase", neurons="N_i"))
            out.append(row)
    return out


def print_study(study: Path) -> None:
    ctx = _context(study)
    summary = ctx.summary
    print(f"\n## {study}: data {ctx.config.data} (relations {', '.join(ctx.config.relations or ['all'])}), "
          f"specificity {ctx.config.specificity}, update rule {ctx.config.update.rule}\n")
    print("| model | method | group | n | Loc | dlogPPL median | dprob_self | goal met |")
    print("|---|---|---|---|---|---|---|---|")
    groups = [r for r in summary.get("modification", []) if r["operation"] == "erase" and r["neurons"] == "N_i"]
    for pooled in erase_rows(ctx):
        mine = [r for r in groups if (r["model"], r["method"]) == (pooled["model"], pooled["method"])]
        for row in [pooled, *mine]:
            met = [k for k in GOAL if _meets(row, k)]
            verdict = "yes" if len(met) == len(GOAL) else "no: " + ", ".join(k for k in GOAL if k not in met)
            print(f"| {row['model']} | {row['method']} | {row['group']} | {row.get('n', 0)} | {_cell(row, 'loc')} | "
                  f"{_cell(row, 'dlogppl_median', 3)} | {_cell(row, 'dprob_self')} | {verdict} |")
    sweep = [r for r in summary.get("update_sweep", []) if r["group"] == "all" and r.get("n")]
    if not sweep:
        print("\n(no update-sweep rows)")
        return
    print(f"\nBest update point per rule (highest Rel with Loc >= {UPDATE_LOC}; goal Rel >= {UPDATE_REL}):\n")
    print("| model | method | rule | lambda2 | n | Rel | Loc | dlogPPL median | goal met |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in sweep))
    for model, method in keys:
        rows = [r for r in sweep if (r["model"], r["method"]) == (model, method)]
        reached = False
        for rule in dict.fromkeys(r["rule"] for r in rows):
            cand = [r for r in rows if r["rule"] == rule and r["loc"] is not None and r["loc"] >= UPDATE_LOC]
            if not cand:
                print(f"| {model} | {method} | {rule} | - | - | - | no lambda2 keeps Loc >= {UPDATE_LOC} | - | no |")
                continue
            best = max(cand, key=lambda r: (r["rel"], r["loc"], -r["lambda2"]))
            ok = best["rel"] >= UPDATE_REL
            reached |= ok
            print(f"| {model} | {method} | {rule} | {best['lambda2']:g} | {best['n']} | {_cell(best, 'rel')} | "
                  f"{_cell(best, 'loc')} | {_cell(best, 'dlogppl_median', 3)} | {'yes' if ok else 'no'} |")
        if not reached:
            print(f"\nFrontier of {model}, {method} (no rule reaches Rel >= {UPDATE_REL} at Loc >= {UPDATE_LOC}): "
                  + "; ".join(f"{r['rule']} {r['lambda2']:g}: Rel {r['rel']:.2f} / Loc {r['loc']:.2f}"
                              for r in rows))
    ctx.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", type=Path, nargs="+")
    for study in parser.parse_args().studies:
        print_study(study)


if __name__ == "__main__":
    main()
