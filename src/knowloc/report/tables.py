"""HTML of the study's table specs (:mod:`knowloc.study.tables`): cells, spec tables, key / value tables.

summary.md renders the same :class:`~knowloc.study.tables.Table` / :class:`~knowloc.study.tables.Column` specs
as Markdown; here they become escaped HTML. Every piece of data-derived text goes through :func:`esc`.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from knowloc.analysis import GROUPS
from knowloc.study.tables import DASH, Column, Table, cell_parts, missing

NUMERIC_KINDS = ("num", "int", "ci", "p", "sig", "dlogppl", "yesno")  # right-aligned, not wrapped


def esc(value: Any) -> str:
    """`value` as text, HTML-escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def cell_html(column: Column, row: dict) -> str:
    """One cell of a spec column (:mod:`knowloc.study.tables`) as escaped HTML."""
    if column.kind == "group":
        g = column.raw(row)
        return f'<span class="g-{esc(g)}">{esc(g)}</span>' if g in GROUPS else esc(DASH if missing(g) else g)
    main, interval = cell_parts(column, row)
    if column.kind == "star":
        return '<span class="star">*</span>' if main else ""
    return esc(main) + (f' <span class="ci">{esc(interval)}</span>' if interval else "")


def _cell_class(column: Column) -> str:
    if column.wrap:
        return "wrap"
    return "num" if column.kind in NUMERIC_KINDS else ""


def render_table(rows: list[dict], columns: Iterable[Column]) -> str:
    """An HTML table of rows with spec columns (headers are escaped)."""
    if not rows:
        return '<p class="muted">No rows.</p>'
    columns = list(columns)
    head = "".join(f"<th>{esc(c.header)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = "".join(f'<td class="{cls}">{cell_html(c, r)}</td>' if (cls := _cell_class(c))
                        else f"<td>{cell_html(c, r)}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def spec_table(table: Table, summary: dict) -> str:
    """An experiment's table (title, rows, note) from summary.json."""
    parts = [f"<h3>{esc(table.title)}</h3>"] if table.title else []
    parts.append(render_table(table.select(list(summary.get(table.key, []))), table.columns))
    if table.note:
        parts.append(f'<p class="muted">{esc(table.note)}</p>')
    return "\n".join(parts)


def kv_table(items: Iterable[tuple[str, str]], per_row: int = 1) -> str:
    """Key / value pairs, `per_row` pairs in a row (filled column by column); values are escaped HTML."""
    items = list(items)
    n_rows = max(1, math.ceil(len(items) / per_row))
    body = []
    for r in range(n_rows):
        cells = [items[c * n_rows + r] for c in range(per_row) if c * n_rows + r < len(items)]
        body.append("<tr>" + "".join(f'<td class="k">{esc(k)}</td><td>{v}</td>' for k, v in cells) + "</tr>")
    return f'<div class="tablewrap"><table class="kv"><tbody>{"".join(body)}</tbody></table></div>'
