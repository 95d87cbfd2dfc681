"""Compare two studies' summary.json value by value: how a refactor shows that behaviour is unchanged.

    python benchmarks/compare_summaries.py runs/before/summary.json runs/after/summary.json [--rtol 1e-4]
        [--ignore seconds,seconds_ci_low,seconds_ci_high]

Every value of the first file must be in the second and equal (exact ==); with ``--rtol R`` two floats count as
equal when ``|a - b| <= R * max(|a|, |b|)`` (or ``<= --atol``, default 0): a change that reorders float sums is
shown equal up to that stated tolerance, and the largest relative difference is printed. Keys only the second
has (new outputs, e.g. finding ids) are listed, not counted as differences; keys named in ``--ignore`` (wall
times such as the editors' seconds per edit) are skipped wherever they are. Exits 1 when a value differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _equal(a, b, rtol: float, atol: float) -> bool:
    if a == b:
        return True
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def differences(old, new, path: str = "", out: list[str] | None = None, counted: list | None = None,
                rtol: float = 0.0, atol: float = 0.0, ignore: frozenset = frozenset()):
    """(differences as 'path: old vs new' lines, number of leaf values compared, values not exactly equal,
    the largest relative difference among those within tolerance)."""
    out = [] if out is None else out
    counted = [0, 0, 0.0] if counted is None else counted
    if isinstance(old, dict):
        for key, value in old.items():
            if key in ignore:
                continue
            if key not in new:
                out.append(f"{path}/{key} missing")
            else:
                differences(value, new[key], f"{path}/{key}", out, counted, rtol, atol, ignore)
    elif isinstance(old, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} vs {len(new)} rows")
        else:
            for i, (a, b) in enumerate(zip(old, new)):
                differences(a, b, f"{path}[{i}]", out, counted, rtol, atol, ignore)
    else:
        counted[0] += 1
        if old != new:
            if _equal(old, new, rtol, atol):
                counted[1] += 1
                counted[2] = max(counted[2], abs(old - new) / max(abs(old), abs(new)))
            else:
                out.append(f"{path}: {old!r} vs {new!r}")
    return out, counted[0], counted[1], counted[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0)")
    parser.add_argument("--ignore", default="", help="comma-separated keys not compared (e.g. wall times)")
    args = parser.parse_args()
    old, new = (json.load(open(path, encoding="utf-8")) for path in (args.old, args.new))
    ignore = frozenset(k.strip() for k in args.ignore.split(",") if k.strip())
    diffs, n, close, largest = differences(old, new, rtol=args.rtol, atol=args.atol, ignore=ignore)
    within = (f"; {close} not exactly equal but within rtol {args.rtol:g} / atol {args.atol:g} (largest relative "
              f"difference {largest:.2g})" if close else "")
    print(f"{n} values compared, {len(diffs)} differ{within}; keys only in the second: {sorted(set(new) - set(old))}")
    for line in diffs[:30]:
        print("  " + line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
