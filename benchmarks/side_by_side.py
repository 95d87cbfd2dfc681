"""Side-by-side table of a filtered and an unfiltered study (issue: editing evidence; docs/editing.md).

Usage:
    python benchmarks/side_by_side.py ON_DIR OFF_DIR

ON_DIR is a finished study with the default settings, OFF_DIR the same study with ``--specificity off``
(each holds summary.json, or the partial one of benchmarks/peek_summary.py). Printed as Markdown with the
study's own table renderer (knowloc.study.tables: 95% CIs, withheld below the minimum n), the two views in
adjacent rows (column "filter"):

1. consistency: K_I fraction (static and Otsu thresholds) and the null gap (CS2 minus the shuffled-pairs mean);
2. erase N_i and erase N_cap: Rel, Gen, Loc and median dlogPPL per K_C / K_I group;
3. update: each rule at its best frontier point of `update-sweep` (all facts): the largest Rel with Loc >= 0.8
   (the experiment's own `best_points`), or the largest Avg, marked, where no lambda2 keeps Loc >= 0.8;
4. CAS - N_i and CAS - N_g: the paired difference of Avg (transductive protocol), with the free budget (each
   selection as it comes) and the matched one (N_i and N_g cut to the |CAS| strongest neurons).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knowloc.study.experiments.update_sweep import LOC_FLOOR, best_points
from knowloc.study.tables import Column, Table, edit_columns, markdown_table

VIEWS = ("on", "off")
METHOD, FILTER, GROUP, N = (Column("method", "method"), Column("filter", "view"), Column("group", "group", "group"),
                            Column("n", "n", "int"))


def _rows(runs: dict, key: str, **match) -> list[dict]:
    """Both runs' rows of summary key `key` that match, each tagged with its view, in (method, ..., view) order."""
    rows = [{**r, "view": view} for view in VIEWS for r in runs[view].get(key, [])
            if all(r.get(k) == v for k, v in match.items())]
    return sorted(rows, key=lambda r: (r["method"], r.get("threshold_kind", ""), r.get("rule", ""),
                                       r.get("operation", ""), r.get("group", ""), r.get("baseline", ""),
                                       VIEWS.index(r["view"])))


def _best(runs: dict) -> list[dict]:
    out = []
    for view in VIEWS:
        rows = runs[view].get("update_sweep", [])
        for b in best_points(rows):
            best, note = b["best"], f"Loc >= {LOC_FLOOR}"
            if best is None:
                same = [r for r in rows if (r["model"], r["method"], r["rule"], r["group"])
                        == (b["model"], b["method"], b["rule"], "all") and r.get("avg") is not None]
                if not same:
                    continue  # the rule has no scored point yet (a partial study)
                best = max(same, key=lambda r: r["avg"])
                note = f"no lambda2 keeps Loc >= {LOC_FLOOR}: best Avg"
            out.append({**best, "method": b["method"], "rule": b["rule"], "view": view, "note": note})
    return sorted(out, key=lambda r: (r["method"], r["rule"], VIEWS.index(r["view"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("on", type=Path)
    parser.add_argument("off", type=Path)
    args = parser.parse_args()
    runs = {"on": json.loads((args.on / "summary.json").read_text()),
            "off": json.loads((args.off / "summary.json").read_text())}
    consistency = [r for r in _rows(runs, "consistency", score="cs2") if r.get("specificity") == r["view"]]
    tables = [
        (Table("consistency", title="Consistency (CS2)", columns=(
            METHOD, Column("threshold", "threshold_kind"), FILTER, Column("facts", "n_facts", "int"),
            Column("K_I fraction [95% CI]", "k_i_fraction", "ci", lo="k_i_ci_low", hi="k_i_ci_high", n_key="n_facts"),
            Column("null gap", "null_gap", "num", 3, signed=True), Column("null p", "null_p", "p"))), consistency)]
    for neurons in ("N_i", "N_cap"):
        tables.append((Table("modification", title=f"Erase {neurons}", columns=(
            METHOD, GROUP, FILTER, N, *edit_columns(), Column("dprob self", "dprob_self", "ci", signed=True))),
            _rows(runs, "modification", neurons=neurons, operation="erase")))
    tables.append((Table("update_sweep", title="Update N_i: each rule at its best frontier point (all facts)",
                         columns=(METHOD, Column("rule", "rule"), FILTER, Column("lambda2", "lambda2", "num", 2), N,
                                  *edit_columns(), Column("point", "note"))), _best(runs)))
    for budget in ("free", "matched"):
        tables.append((Table("cas_comparison", title=f"CAS minus baselines: paired difference of Avg (transductive, "
                             f"{budget} budget)", columns=(
            METHOD, Column("operation", "operation"), GROUP, Column("baseline", "baseline"), FILTER, N,
            Column("Avg(CAS) - Avg(baseline) [95% CI]", "avg_diff", "ci", 3, True, "ci_low", "ci_high"))),
            _rows(runs, "cas_comparison", protocol="transductive", budget=budget)))
    for table, rows in tables:
        print("\n".join(markdown_table(table, rows)))


if __name__ == "__main__":
    main()
