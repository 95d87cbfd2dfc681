"""Side-by-side table of a filtered and an unfiltered study (issue: editing evidence; docs/editing.md).

Usage:
    python benchmarks/side_by_side.py ON_DIR OFF_DIR

ON_DIR is a finished study with the default settings, OFF_DIR the same study with ``--specificity off``
(each holds summary.json). Printed as Markdown, every cell "estimate [95% CI] (n facts)":

1. consistency: K_I fraction (static and Otsu thresholds) and the null gap (CS2 minus the shuffled-pairs mean);
2. erase N_i and erase N_cap: Rel, Gen, Loc and median dlogPPL per K_C / K_I group;
3. update: each rule at its best frontier point of `update-sweep` (all facts): the largest Rel with Loc >= 0.8,
   or the largest Avg where no lambda2 keeps Loc >= 0.8;
4. CAS - N_i and CAS - N_g: the paired difference of Avg (transductive protocol, free budget).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LOC_FLOOR = 0.8


def _cell(row: dict | None, key: str, digits: int = 2) -> str:
    if row is None or row.get(key) is None:
        return "-"
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{row[key]:.{digits}f}{ci}"


def _find(rows: list[dict], **match) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else None


def _frontier(rows: list[dict]) -> dict | None:
    local = [r for r in rows if r.get("loc") is not None and r["loc"] >= LOC_FLOOR and r.get("rel") is not None]
    if local:
        return max(local, key=lambda r: (r["rel"], r["loc"]))
    scored = [r for r in rows if r.get("avg") is not None]
    return max(scored, key=lambda r: r["avg"]) if scored else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("on", type=Path)
    parser.add_argument("off", type=Path)
    args = parser.parse_args()
    runs = {"on": json.loads((args.on / "summary.json").read_text()),
            "off": json.loads((args.off / "summary.json").read_text())}
    methods = sorted({r["method"] for r in runs["on"].get("consistency", [])})

    print("## Consistency (CS2)\n")
    print("| method | threshold | K_I fraction on | K_I fraction off | null gap on | null gap off |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        for kind in ("static", "otsu"):
            cells = []
            for value in ("K_I", "gap"):
                for view in ("on", "off"):
                    row = _find(runs[view]["consistency"], method=method, threshold_kind=kind, score="cs2",
                                specificity=view)
                    if value == "K_I" and row is not None:
                        ci = ("" if row.get("k_i_ci_low") is None
                              else f" [{row['k_i_ci_low']:.2f}, {row['k_i_ci_high']:.2f}]")
                        cells.append(f"{row['k_i_fraction']:.2f}{ci} (n={row['n_facts']})")
                    elif value == "K_I":
                        cells.append("-")
                    else:
                        cells.append("-" if row is None or row.get("null_gap") is None else
                                     f"{row['null_gap']:+.3f} (p={row['null_p']:.4f})")
            print(f"| {method} | {kind} | " + " | ".join(cells) + " |")

    for neurons in ("N_i", "N_cap"):
        print(f"\n## Erase {neurons}\n")
        print("| method | group | view | n | Rel | Gen | Loc | median dlogPPL | dprob_self |")
        print("|---|---|---|---|---|---|---|---|---|")
        for method in methods:
            for group in ("K_C", "K_I"):
                for view in ("on", "off"):
                    row = _find(runs[view].get("modification", []), method=method, group=group, neurons=neurons,
                                operation="erase")
                    if row is None:
                        continue
                    print(f"| {method} | {group} | {view} | {row['n']} | {_cell(row, 'rel')} | {_cell(row, 'gen')} | "
                          f"{_cell(row, 'loc')} | {_cell(row, 'dlogppl_median', 3)} | {_cell(row, 'dprob_self')} |")

    print(f"\n## Update N_i: each rule at its best frontier point (largest Rel with Loc >= {LOC_FLOOR}; all facts)\n")
    print("| method | rule | view | lambda2 | n | Rel | Gen | Loc | median dlogPPL | point |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        for rule in ("dai", "signed", "calibrated"):
            for view in ("on", "off"):
                rows = [r for r in runs[view].get("update_sweep", []) if r["method"] == method
                        and r["rule"] == rule and r["group"] == "all"]
                best = _frontier(rows)
                if best is None:
                    continue
                print(f"| {method} | {rule} | {view} | {best['lambda2']:g} | {best['n']} | {_cell(best, 'rel')} | "
                      f"{_cell(best, 'gen')} | {_cell(best, 'loc')} | {_cell(best, 'dlogppl_median', 3)} | "
                      + ("Loc >= 0.8 |" if best["loc"] >= LOC_FLOOR else "no lambda2 keeps Loc >= 0.8: best Avg |"))

    print("\n## CAS minus baselines: paired difference of Avg (transductive, free budget)\n")
    print("| method | operation | group | view | CAS - N_i | CAS - N_g |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        for operation in ("erase", "update"):
            for group in ("K_C", "K_I"):
                for view in ("on", "off"):
                    cells = []
                    for baseline in ("N_i", "N_g"):
                        row = _find(runs[view].get("cas_comparison", []), method=method, operation=operation,
                                    group=group, baseline=baseline, protocol="transductive", budget="free")
                        if row is None:
                            cells.append("-")
                            continue
                        ci = (f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if row.get("ci_low") is not None
                              else " (no CI)")
                        cells.append(f"{row['avg_diff']:+.2f}{ci} (n={row['n']})")
                    if cells != ["-", "-"]:
                        print(f"| {method} | {operation} | {group} | {view} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
