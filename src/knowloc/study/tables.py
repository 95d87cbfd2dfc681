"""Results tables as column specs: one declaration, rendered to Markdown (summary.md) and HTML (report.html).

An experiment lists its tables (:class:`Table`) in its spec; each column says which row keys it shows and how
(:data:`KINDS`). :func:`markdown_table` renders them here; :mod:`knowloc.report.html` renders the same specs as
HTML, so a table is written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from knowloc.analysis import MIN_N

DASH = "\u2013"  # shown for nan / missing values
WRECKED_LOG = math.log(1000.0)  # a perplexity ratio above 1000x is shown as "> 1000x", never as a float

# how a column shows its value: text | num (digits, signed) | int | ci (value [low, high]) | p (2 significant
# digits) | sig (significant digits) | dlogppl (signed, "> 1000x" past a 1000-fold perplexity, with its CI when
# the row has one) | group (K_C / K_I) | star ("*" when true) | yesno
KINDS = ("text", "num", "int", "ci", "p", "sig", "dlogppl", "group", "star", "yesno")


@dataclass(frozen=True)
class Column:
    """One column: ``header`` (plain text), the row ``key`` it shows, its ``kind`` and number format.

    ``lo`` / ``hi`` name the interval keys of ``ci`` and ``dlogppl`` columns (default ``key_ci_low`` /
    ``key_ci_high``); ``value`` computes the shown value from the whole row instead of ``row[key]``.
    """

    header: str
    key: str
    kind: str = "text"
    digits: int = 2
    signed: bool = False
    lo: str | None = None
    hi: str | None = None
    value: Callable[[dict], Any] | None = None
    wrap: bool = False
    n_key: str = "n"  # the row's number of facts: an interval withheld below MIN_N says so

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown column kind {self.kind!r}; choose from {', '.join(KINDS)}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The row keys this column shows."""
        if self.kind in ("ci", "dlogppl"):
            return self.key, self.low_key, self.high_key
        return (self.key,)

    @property
    def low_key(self) -> str:
        return self.lo or f"{self.key}_ci_low"

    @property
    def high_key(self) -> str:
        return self.hi or f"{self.key}_ci_high"

    def raw(self, row: dict) -> Any:
        return self.value(row) if self.value is not None else row.get(self.key)


@dataclass(frozen=True)
class Table:
    """A summary.json key's rows as a table: ``title`` (may be empty), its columns and an optional note."""

    key: str
    columns: tuple[Column, ...]
    title: str = ""
    note: str = ""
    rows: Callable[[list[dict]], list[dict]] | None = None  # which rows to show (default: all)

    def select(self, rows: list[dict]) -> list[dict]:
        return self.rows(rows) if self.rows is not None else rows


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number as text: fixed digits, optional sign, never "-0.00"; nan / None as "–"; ±inf as "∞"."""
    if missing(x):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
        if text.lstrip("+-").strip("0.") == "":
            text = ("+" if signed else "") + text.lstrip("+-")
        return text
    return str(x)


def fmt_dlogppl(value: Any, digits: int = 3) -> str:
    """dlogPPL = log(PPL after / before): signed, nan as "–", past a 1000-fold change "> 1000x" / "< 0.001x"."""
    if missing(value):
        return DASH
    if value > WRECKED_LOG:
        return "> 1000x"
    if value < -WRECKED_LOG:
        return "< 0.001x"
    return f"{value:+.{digits}f}"


def fmt_p(x: Any) -> str:
    return DASH if missing(x) else f"{float(x):.2g}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    return DASH if missing(x) else f"{float(x):.{digits}g}"


def cell_parts(column: Column, row: dict) -> tuple[str, str | None]:
    """(main text, interval text or None) of one cell, as plain text."""
    kind, x = column.kind, column.raw(row)
    if kind in ("ci", "dlogppl"):
        show = fmt_dlogppl if kind == "dlogppl" else (lambda v: fmt_num(v, column.digits, column.signed))
        lo, hi = row.get(column.low_key), row.get(column.high_key)
        interval = None if missing(lo) and missing(hi) else f"[{show(lo)}, {show(hi)}]"
        n = row.get(column.n_key)
        if interval is None and not missing(x) and isinstance(n, int) and n < MIN_N:
            interval = f"(n={n} < {MIN_N}: no CI)"
        return show(x), interval
    if kind == "num":
        return fmt_num(x, column.digits, column.signed), None
    if kind == "int":
        return (DASH if missing(x) else str(int(x))), None
    if kind == "p":
        return fmt_p(x), None
    if kind == "sig":
        return fmt_sig(x, column.digits), None
    if kind == "star":
        return ("*" if x else ""), None
    if kind == "yesno":
        return (DASH if missing(x) else "yes" if x else "no"), None
    return (DASH if missing(x) else str(x)), None


def markdown_table(table: Table, rows: Sequence[dict]) -> list[str]:
    """The table as Markdown lines (title, header, rows, note); "No rows." when there are none."""
    out = [f"### {table.title}", ""] if table.title else []
    shown = table.select(list(rows))
    if not shown:
        return out + ["No rows.", ""]
    out += ["| " + " | ".join(c.header for c in table.columns) + " |",
            "|" + "---|" * len(table.columns)]
    for row in shown:
        cells = []
        for column in table.columns:
            main, interval = cell_parts(column, row)
            cells.append((f"{main} {interval}" if interval else main).replace("|", "\\|"))
        out.append("| " + " | ".join(cells) + " |")
    if table.note:
        out += ["", table.note]
    return out + [""]


# columns every editing table shares
def edit_columns() -> tuple[Column, ...]:
    """Rel, Gen, Loc, Avg (with 95% CIs) and the median dlogPPL (raw dPPL, heavy-tailed, is in the CSVs)."""
    return (Column("Rel", "rel", "ci"), Column("Gen", "gen", "ci"), Column("Loc", "loc", "ci"),
            Column("Avg", "avg", "ci"), Column("dlogPPL (median)", "dlogppl_median", "dlogppl"))
