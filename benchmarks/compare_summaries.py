"""Compare two studies' summary.json value by value (exact ==): how a refactor shows that behaviour is unchanged.

    python benchmarks/compare_summaries.py runs/before/summary.json runs/after/summary.json

Every value of the first file must be in the second and equal; keys only the second has (new outputs, e.g.
finding ids) are listed, not counted as differences. Exits 1 when a value differs.
"""

from __future__ import annotations

import json
import sys


def differences(old, new, path: str = "", out: list[str] | None = None, counted: list[int] | None = None):
    """(differences as 'path: old vs new' lines, number of leaf values compared)."""
    out = [] if out is None else out
    counted = [0] if counted is None else counted
    if isinstance(old, dict):
        for key, value in old.items():
            if key not in new:
                out.append(f"{path}/{key} missing")
            else:
                differences(value, new[key], f"{path}/{key}", out, counted)
    elif isinstance(old, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} vs {len(new)} rows")
        else:
            for i, (a, b) in enumerate(zip(old, new)):
                differences(a, b, f"{path}[{i}]", out, counted)
    else:
        counted[0] += 1
        if old != new:
            out.append(f"{path}: {old!r} vs {new!r}")
    return out, counted[0]


def main() -> int:
    old, new = (json.load(open(path, encoding="utf-8")) for path in sys.argv[1:3])
    diffs, n = differences(old, new)
    print(f"{n} values compared, {len(diffs)} differ; keys only in the second: {sorted(set(new) - set(old))}")
    for line in diffs[:30]:
        print("  " + line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
