"""The study's PNG figures in the report: which experiment each belongs to, and each embedded as a data URI."""

from __future__ import annotations

import base64
from pathlib import Path

from knowloc.report.tables import esc
from knowloc.study.registry import Experiment

FIGURE_SCALE = 2 / 3  # figures are shown at this share of their pixel width (capped at the page width)


def _png_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, None when `raw` is no PNG."""
    if len(raw) < 24 or raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _figure_html(path: Path) -> str:
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    name = esc(path.name)
    size = _png_size(raw)
    # shown at FIGURE_SCALE of their pixel size (the figures are drawn at 120 dpi), at most the page width
    width = f' width="{round(size[0] * FIGURE_SCALE)}"' if size else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{name}"{width}>'
            f"<figcaption>{name}</figcaption></figure>")


def figures_html(paths: list[Path]) -> str:
    """The figures side by side, each with its file name as caption; "" for none."""
    if not paths:
        return ""
    return '<div class="figs">' + "".join(_figure_html(p) for p in paths) + "</div>"


def assign_figures(figures_dir: Path, summary: dict, experiments: list[Experiment]) -> dict[str, list[Path]]:
    """PNG figures by experiment, as summary.json ``figures`` records them; any other PNG in the directory (left
    by an earlier run, or a summary that predates the record) under "other"."""
    out: dict[str, list[Path]] = {e.name: [] for e in experiments}
    out["other"] = []
    if not figures_dir.is_dir():
        return out
    owner = {name: experiment for experiment, names in (summary.get("figures") or {}).items() for name in names
             if experiment in out}
    for path in sorted(figures_dir.glob("*.png"), key=lambda p: p.name):
        if path.is_file():
            out[owner.get(path.name, "other")].append(path)
    return out
