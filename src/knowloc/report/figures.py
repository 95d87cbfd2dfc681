"""The study's PNG figures in the report: which experiment each belongs to, and each embedded as a data URI;
for a study of 2+ models, a section's figures side by side per model (one column each)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from knowloc.report.tables import esc
from knowloc.study.context import slug
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


def _row(paths: list[Path]) -> str:
    return '<div class="figs">' + "".join(_figure_html(p) for p in paths) + "</div>"


def figure_model(name: str, models: list[str]) -> str | None:
    """The model a figure belongs to: the one whose slug (:func:`knowloc.study.context.slug`) appears in its file
    name as a whole part (after the start or "_", before "_", "." or the end; the longest such slug when
    several do); None for a figure of no one model."""
    found = [m for m in models if re.search(rf"(?:^|_){re.escape(slug(m))}(?=[_.]|$)", name)]
    return max(found, key=lambda m: len(slug(m))) if found else None


def figures_html(paths: list[Path], models: list[str] | None = None) -> str:
    """The figures side by side, each with its file name as caption; "" for none. With 2+ `models`, one column
    per model holding the figures that belong to it (:func:`figure_model`), then the others in a shared row."""
    if not paths:
        return ""
    if not models or len(models) < 2:
        return _row(paths)
    owned: dict[str, list[Path]] = {m: [] for m in models}
    shared = []
    for path in paths:
        model = figure_model(path.name, models)
        (owned[model] if model is not None else shared).append(path)
    if not any(owned.values()):
        return _row(shared)
    columns = "".join(f'<div class="model-figs"><h4>{esc(m)}</h4>'
                      + (_row(owned[m]) if owned[m] else '<p class="muted">No figures.</p>') + "</div>"
                      for m in models)
    out = f'<div class="figs-by-model">{columns}</div>'
    if shared:
        out += '<p class="muted">Figures of no one model:</p>' + _row(shared)
    return out


def assign_figures(figures_dir: Path, summary: dict, experiments: list[Experiment]) -> dict[str, list[Path]]:
    """PNG figures by experiment, as summary.json ``figures`` records them (the findings' forest plot under
    "findings", the specification curves of ``knowloc robustness`` under "robustness"); any other PNG in the directory (left by an earlier run, or a summary that predates the record)
    under "other"."""
    out: dict[str, list[Path]] = {e.name: [] for e in experiments}
    out["findings"], out["robustness"], out["other"] = [], [], []
    if not figures_dir.is_dir():
        return out
    owner = {name: experiment for experiment, names in (summary.get("figures") or {}).items() for name in names
             if experiment in out}
    for path in sorted(figures_dir.glob("*.png"), key=lambda p: p.name):
        if path.is_file():
            out[owner.get(path.name, "other")].append(path)
    return out
