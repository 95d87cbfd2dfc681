"""Static PNG figures for knowloc reports (headless matplotlib, Agg backend).

Every function takes plain Python / numpy data, draws one figure with a fixed style and a
deterministic size (it depends only on the shape of the input), writes it atomically as a PNG
(temp file in the target directory, then ``os.replace``), closes the figure and returns the
path. Bad input raises :class:`knowloc.errors.KnowlocError` with a one-line message.

The figures follow Chen et al. (ICLR 2025), "Knowledge Localization: Mission Not Accomplished?
Enter Query Localization!": consistency scores (CS) of knowledge-neuron sets split facts into
consistent (K_C) and inconsistent (K_I) knowledge.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from knowloc.errors import KnowlocError  # noqa: E402
from knowloc.fileio import atomic_write  # noqa: E402

__all__ = ["activation_heatmaps", "findings_forest", "frontier_plot", "grouped_bars", "heatmap_grid", "not_written",
           "specification_curve", "specificity_scatter", "tracing_panels", "violin_cs"]

DPI = 120
PathLike = str | os.PathLike[str]

# A fixed style, applied with rc_context so that the user's rcParams cannot change the output.
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.grid": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
    "image.interpolation": "nearest",
    "text.parse_math": False,  # prompts may contain "$": draw them literally, never as mathtext
}
_PALETTE = matplotlib.colormaps["tab10"].colors
_TITLE_WIDTH = 90  # characters per line of a figure title


# --------------------------------------------------------------------------- helpers


def _wrap(text: str, width: int) -> str:
    """Wrap ``text`` into lines of at most ``width`` characters (long words are broken)."""
    text = " ".join(str(text).split())
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=True)) if text else ""


def _one_line(value: Any, limit: int = 60) -> str:
    """A short single-line repr of ``value`` for error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_path(path: PathLike) -> Path:
    try:
        out = Path(os.fspath(path))
    except TypeError:
        raise KnowlocError(f"figure path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not out.name or out.is_dir():
        raise KnowlocError(f"figure path {str(out)!r} is a directory, expected a .png file path")
    return out


_WRITING = [True]  # False inside not_written()


@contextmanager
def not_written() -> Iterator[None]:
    """Inside, the figure functions draw nothing to disk: each returns its path unwritten (for a caller that wants
    a summary's numbers only, e.g. the robustness grid re-deriving every summary at every grid point)."""
    _WRITING.append(False)
    try:
        yield
    finally:
        _WRITING.pop()


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (:func:`knowloc.fileio.atomic_write`); always closed
    (not written inside :func:`not_written`)."""
    if not _WRITING[-1]:
        plt.close(fig)
        return path
    try:
        return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    except KnowlocError as exc:
        raise KnowlocError(f"cannot write figure {str(path)!r}: {str(exc).split(': ', 1)[-1]}") from None
    finally:
        plt.close(fig)


def _finite_float(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise KnowlocError(f"{what} must be a number, got {_one_line(value)}") from None
    if not math.isfinite(out):
        raise KnowlocError(f"{what} must be finite, got {out}")
    return out


def _float_or_nan(value: Any, what: str) -> float:
    """``value`` as float; ``None`` and nan become nan; anything non-numeric raises."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise KnowlocError(f"{what} must be a number or nan, got {_one_line(value)}") from None


def _matrix(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise KnowlocError(f"{what} must be a 2-D numeric array") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise KnowlocError(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise KnowlocError(f"{what} contains infinite values")
    return arr


def _labels(labels: Any, n: int, what: str) -> list[str]:
    if labels is None or isinstance(labels, str | bytes):
        raise KnowlocError(f"{what} must be a sequence of {n} labels, got {_one_line(labels)}")
    out = [str(label) for label in labels]
    if len(out) != n:
        raise KnowlocError(f"{what} has {len(out)} labels but the matrix has {n}")
    return out


def _text_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = rgba[:3]
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if luminance > 0.5 else "white"


def _tick_step(n: int, max_ticks: int) -> int:
    return max(1, math.ceil(n / max_ticks))


def _color_limits(
    arrays: Sequence[np.ndarray], what: str, anchor_zero: bool
) -> tuple[float, float, str]:
    """Shared (vmin, vmax, cmap): symmetric diverging map when values have both signs.

    With one sign, a sequential map spans the data range, extended to 0 if ``anchor_zero``.
    """
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if finite.size == 0:
        raise KnowlocError(f"{what}: every value is nan, nothing to draw")
    lo, hi = float(finite.min()), float(finite.max())
    if lo < 0.0 < hi:
        bound = max(-lo, hi)
        return -bound, bound, "RdBu_r"
    if lo == hi:  # constant data: widen so the colour map is defined
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    if not anchor_zero:
        return lo, hi, "viridis"
    if lo >= 0.0:
        return 0.0, hi, "viridis"
    return lo, 0.0, "viridis_r"


# --------------------------------------------------------------------------- 1. violin_cs


def violin_cs(
    values_by_relation: Mapping[str, Sequence[float]],
    static_tau: float,
    otsu_tau: float,
    path: PathLike,
    title: str,
) -> Path:
    """Violin plot of consistency scores (CS) per relation, with the K_C / K_I thresholds.

    Args:
        values_by_relation: relation id (e.g. ``"P101"``) -> CS values in [0, 1], one per fact;
            drawn in the mapping's order. A relation with one value (or only identical values)
            is drawn as points, since a violin needs a spread; an empty list is shown as ``n=0``.
        static_tau: the static threshold (paper: 0.3), drawn as a dashed line "static τ=0.30".
        otsu_tau: the Otsu threshold over all CS values, drawn as a dash-dot line "Otsu τ=0.xx".
        path: where to write the PNG.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no relations, a value or threshold that is not a finite number in [0, 1].
    """
    out = _check_path(path)
    if not isinstance(values_by_relation, Mapping) or not values_by_relation:
        raise KnowlocError("violin_cs needs a non-empty mapping relation -> CS values")
    taus = {}
    for name, tau in (("static_tau", static_tau), ("otsu_tau", otsu_tau)):
        val = _finite_float(tau, name)
        if not 0.0 <= val <= 1.0:
            raise KnowlocError(f"{name} must lie in [0, 1], got {val}")
        taus[name] = val
    relations = [str(r) for r in values_by_relation]
    data: list[np.ndarray] = []
    for rel, values in zip(relations, values_by_relation.values(), strict=True):
        try:
            arr = np.asarray(list(values), dtype=float).ravel()
        except (TypeError, ValueError):
            raise KnowlocError(f"CS values of relation {rel!r} must be numbers") from None
        if not np.isfinite(arr).all():
            raise KnowlocError(f"CS values of relation {rel!r} contain nan or inf")
        if ((arr < -1e-9) | (arr > 1.0 + 1e-9)).any():
            raise KnowlocError(f"CS values of relation {rel!r} must lie in [0, 1]")
        data.append(np.clip(arr, 0.0, 1.0))

    n_rel = len(relations)
    rotate = n_rel > 8 or max(len(r) for r in relations) > 10
    width = float(np.clip(2.2 + 0.45 * n_rel, 6.5, 22.0))
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(width, 4.8), layout="constrained")
        color = _PALETTE[0]
        spread = [i for i, a in enumerate(data) if a.size >= 2 and np.ptp(a) > 0]
        if spread:
            parts = ax.violinplot(
                [data[i] for i in spread],
                positions=spread,
                widths=0.8,
                showmedians=True,
                showextrema=True,
            )
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_edgecolor("black")
                body.set_linewidth(0.6)
                body.set_alpha(0.55)
            for key in ("cmedians", "cmins", "cmaxes", "cbars"):
                if key in parts:
                    parts[key].set_color("black")
                    parts[key].set_linewidth(0.8)
        points = [i for i, a in enumerate(data) if a.size and i not in spread]
        for j, i in enumerate(points):
            ax.scatter(
                np.full(data[i].size, i),
                data[i],
                s=28,
                color=color,
                edgecolor="black",
                linewidth=0.6,
                zorder=3,
                label="single value / no spread" if j == 0 else None,
            )
        ax.axhline(taus["static_tau"], color="0.35", linestyle="--", linewidth=1.3,
                   label=f"static τ={taus['static_tau']:.2f}", zorder=2)
        ax.axhline(taus["otsu_tau"], color="tab:red", linestyle="-.", linewidth=1.3,
                   label=f"Otsu τ={taus['otsu_tau']:.2f}", zorder=2)
        ax.set_xticks(range(n_rel))
        ax.set_xticklabels(
            [f"{r}{' ' if rotate else chr(10)}(n={a.size})" for r, a in zip(relations, data, strict=True)],
            rotation=60 if rotate else 0,
            ha="right" if rotate else "center",
            rotation_mode="anchor",
        )
        ax.set_xlim(-0.6, n_rel - 0.4)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("relation")
        ax.set_ylabel("consistency score (CS)")
        ax.yaxis.grid(True, color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_title(_wrap(title, _TITLE_WIDTH))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.0)
    return _save(fig, out)


# --------------------------------------------------------------------------- 2. activation_heatmaps


def activation_heatmaps(panels: Sequence[Mapping[str, Any]], path: PathLike, title: str) -> Path:
    """Side-by-side heatmaps of neuron activations / attributions, one panel per query.

    As in the paper's first figure: two neighbour queries of a K_C fact (same neurons light up)
    next to two of a K_I fact (different neurons). Panels share one colour scale and one
    colorbar; values of both signs use a diverging map centred on 0. nan cells are left blank.

    Args:
        panels: 1 to 4 dicts, each with ``title`` (the prompt; wrapped), ``matrix`` (2-D,
            layers x neurons), ``row_labels`` (layer ids, one per row) and ``col_labels``
            (neuron ids such as ``"L12#345"``, one per column). Up to 3 panels are drawn in one
            row, 4 panels as a 2 x 2 grid.
        path: where to write the PNG.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no panel or more than 4, a missing key, a matrix that is not 2-D or is all
            nan, or label counts that do not match the matrix shape.
    """
    out = _check_path(path)
    if isinstance(panels, Mapping) or not isinstance(panels, Sequence) or not 1 <= len(panels) <= 4:
        count = len(panels) if isinstance(panels, Sequence) and not isinstance(panels, Mapping) else "?"
        raise KnowlocError(f"activation_heatmaps needs a list of 1 to 4 panels, got {count}")
    parsed = []
    for k, panel in enumerate(panels):
        if not isinstance(panel, Mapping):
            raise KnowlocError(f"panel {k} must be a dict, got {type(panel).__name__}")
        missing = [key for key in ("title", "matrix", "row_labels", "col_labels") if key not in panel]
        if missing:
            raise KnowlocError(f"panel {k} lacks key(s) {', '.join(missing)}")
        mat = _matrix(panel["matrix"], f"panel {k} matrix")
        rows = _labels(panel["row_labels"], mat.shape[0], f"panel {k} row_labels")
        cols = _labels(panel["col_labels"], mat.shape[1], f"panel {k} col_labels")
        parsed.append((str(panel["title"]), mat, rows, cols))
    vmin, vmax, cmap_name = _color_limits([p[1] for p in parsed], "activation_heatmaps", anchor_zero=True)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.92")

    n = len(parsed)
    nrows, ncols = (2, 2) if n == 4 else (1, n)
    max_r = max(p[1].shape[0] for p in parsed)
    max_c = max(p[1].shape[1] for p in parsed)
    longest_col = max(len(c) for p in parsed for c in p[3])
    panel_w = float(np.clip(1.6 + 0.3 * min(max_c, 40), 3.4, 9.0))
    panel_h = float(np.clip(1.4 + 0.3 * min(max_r, 40) + 0.07 * min(longest_col, 14), 3.0, 9.0))
    wrap_width = max(24, int(panel_w * 9))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(panel_w * ncols + 1.2, panel_h * nrows + 0.8),
            layout="constrained",
            squeeze=False,
        )
        image = None
        for ax, (ptitle, mat, rows, cols) in zip(axes.flat, parsed, strict=True):
            image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            ystep = _tick_step(len(rows), 30)
            xstep = _tick_step(len(cols), 40)
            ax.set_yticks(range(0, len(rows), ystep))
            ax.set_yticklabels(rows[::ystep])
            ax.set_xticks(range(0, len(cols), xstep))
            ax.set_xticklabels(cols[::xstep], rotation=90, fontsize=8 if len(cols) > 12 else 9)
            ax.set_xlabel("neuron")
            ax.set_ylabel("layer")
            ax.set_title(_wrap(ptitle, wrap_width), fontsize=10)
            for spine in ax.spines.values():
                spine.set_visible(True)
        cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)
        cbar.set_label("activation / attribution")
        fig.suptitle(_wrap(title, _TITLE_WIDTH))
    return _save(fig, out)


# --------------------------------------------------------------------------- 3. grouped_bars


def _ordered(values: list[Any]) -> list[Any]:
    """Distinct values in order of first appearance."""
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def grouped_bars(
    rows: Sequence[Mapping[str, Any]],
    path: PathLike,
    title: str,
    x: str,
    hue: str,
    value: str,
    low: str,
    high: str,
    facet: str | None = None,
    ylabel: str = "",
) -> Path:
    """Grouped bar chart with asymmetric confidence-interval error bars.

    Args:
        rows: one dict per bar (a "long" table). Categories (``x``, ``hue``, ``facet``) are
            ordered by first appearance. A bar whose value is nan/None is left out; its error bar
            is skipped where ``low`` or ``high`` is nan/None.
        path: where to write the PNG.
        title: figure title.
        x: column giving the position on the x axis (e.g. the metric).
        hue: column giving the bar colour within an x group (e.g. the neuron set).
        value: column with the bar height.
        low: column with the lower CI bound (a bound, not a half-width).
        high: column with the upper CI bound. A bound on the wrong side of the value draws no
            whisker on that side.
        facet: optional column splitting the chart into side-by-side subplots with a shared y
            axis (e.g. ``"group"`` with values K_C / K_I). A facet without any finite value
            shows "no data".
        ylabel: y-axis label (defaults to ``value``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no rows, a row missing a column, a non-numeric value, or two rows for the
            same (facet, x, hue) cell.
    """
    out = _check_path(path)
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise KnowlocError("grouped_bars needs a non-empty list of row dicts")
    columns = [x, hue, value, low, high] + ([facet] if facet is not None else [])
    cells: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    xs, hues, facets = [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise KnowlocError(f"row {i} must be a dict, got {type(row).__name__}")
        missing = [c for c in columns if c not in row]
        if missing:
            raise KnowlocError(f"row {i} lacks column(s) {', '.join(map(str, missing))}")
        fv = str(row[facet]) if facet is not None else ""
        xv, hv = str(row[x]), str(row[hue])
        key = (fv, xv, hv)
        if key in cells:
            where = f"{facet}={fv}, " if facet is not None else ""
            raise KnowlocError(f"two rows for the same bar ({where}{x}={xv}, {hue}={hv})")
        v = _float_or_nan(row[value], f"row {i} column {value!r}")
        lo = _float_or_nan(row[low], f"row {i} column {low!r}")
        hi = _float_or_nan(row[high], f"row {i} column {high!r}")
        if math.isinf(v):
            raise KnowlocError(f"row {i} column {value!r} is infinite")
        cells[key] = (v, lo, hi)
        xs.append(xv)
        hues.append(hv)
        facets.append(fv)
    x_order, hue_order, facet_order = _ordered(xs), _ordered(hues), _ordered(facets)

    n_x, n_h, n_f = len(x_order), len(hue_order), len(facet_order)
    rotate = n_x * max(1, n_h) > 12 or max(len(s) for s in x_order) > 12
    facet_w = float(np.clip(1.2 + 0.28 * n_x * n_h + 0.2 * n_x, 3.5, 10.0))
    width = float(min(facet_w * n_f + 2.2, 26.0))
    height = 4.8 if rotate else 4.4
    bar_w = 0.8 / n_h
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, n_f, figsize=(width, height), layout="constrained",
                                 sharey=True, squeeze=False)
        handles: dict[str, Any] = {}
        any_finite = False
        for ax, fv in zip(axes[0], facet_order, strict=True):
            drawn = False
            for h, hv in enumerate(hue_order):
                color = _PALETTE[h % len(_PALETTE)]
                for j, xv in enumerate(x_order):
                    cell = cells.get((fv, xv, hv))
                    if cell is None or not math.isfinite(cell[0]):
                        continue
                    v, lo, hi = cell
                    pos = j - 0.4 + bar_w * (h + 0.5)
                    bars = ax.bar(pos, v, width=bar_w * 0.95, color=color, edgecolor="black",
                                  linewidth=0.5, zorder=2)
                    handles.setdefault(hv, bars[0])
                    drawn = True
                    if math.isfinite(lo) and math.isfinite(hi):
                        yerr = [[max(0.0, v - lo)], [max(0.0, hi - v)]]
                        ax.errorbar(pos, v, yerr=yerr, fmt="none", ecolor="black",
                                    elinewidth=1.0, capsize=3, zorder=3)
            any_finite = any_finite or drawn
            if not drawn:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                        color="0.4", fontsize=11)
            ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
            ax.set_xticks(range(n_x))
            ax.set_xticklabels(x_order, rotation=35 if rotate else 0,
                               ha="right" if rotate else "center", rotation_mode="anchor")
            ax.set_xlim(-0.6, n_x - 0.4)
            ax.set_xlabel(x)
            ax.yaxis.grid(True, color="0.9", linewidth=0.8)
            ax.set_axisbelow(True)
            if facet is not None:
                ax.set_title(f"{facet} = {fv}")
        axes[0][0].set_ylabel(ylabel or value)
        if not any_finite:
            axes[0][0].set_ylim(0.0, 1.0)
        if handles:
            fig.legend([handles[h] for h in hue_order if h in handles],
                       [h for h in hue_order if h in handles],
                       title=hue, loc="outside right upper", frameon=False)
        fig.suptitle(_wrap(title, max(30, int(width * 9))))
    return _save(fig, out)


# --------------------------------------------------------------------------- 4. heatmap_grid


def heatmap_grid(
    matrix: Any,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    path: PathLike,
    title: str,
    xlabel: str,
    ylabel: str,
    fmt: str = "{:.2f}",
) -> Path:
    """One annotated heatmap, e.g. a metric over a sweep of two parameters.

    Each cell shows its value formatted with ``fmt`` (nan cells are grey and show "–"); values
    are not annotated when the grid has more than 400 cells.

    Args:
        matrix: 2-D array, rows x columns.
        row_labels: one label per row (y axis, top to bottom).
        col_labels: one label per column (x axis).
        path: where to write the PNG.
        title: figure title.
        xlabel: x-axis label (the column parameter).
        ylabel: y-axis label (the row parameter).
        fmt: ``str.format`` pattern for one float, e.g. ``"{:.1%}"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: a matrix that is not 2-D or is all nan, label counts that do not match,
            or a ``fmt`` that cannot format a float.
    """
    out = _check_path(path)
    mat = _matrix(matrix, "heatmap_grid matrix")
    rows = _labels(row_labels, mat.shape[0], "row_labels")
    cols = _labels(col_labels, mat.shape[1], "col_labels")
    try:
        fmt.format(0.5)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        raise KnowlocError(f"fmt {fmt!r} cannot format a number (use e.g. '{{:.2f}}')") from None
    vmin, vmax, cmap_name = _color_limits([mat], "heatmap_grid", anchor_zero=False)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.85")

    n_r, n_c = mat.shape
    annotate = n_r * n_c <= 400
    longest_col = max(len(c) for c in cols)
    rotate = n_c > 6 and longest_col > 4 or longest_col > 10
    cell_w = 0.75 if annotate else 0.35
    width = float(np.clip(2.6 + cell_w * n_c, 5.0, 16.0))
    height = float(np.clip(1.8 + 0.5 * n_r + (0.06 * min(longest_col, 16) if rotate else 0), 3.5, 12.0))
    font = 9 if n_r * n_c <= 100 else 7
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        if annotate:
            norm = image.norm
            for i in range(n_r):
                for j in range(n_c):
                    v = mat[i, j]
                    if math.isfinite(v):
                        text, rgba = fmt.format(v), cmap(norm(v))
                    else:
                        text, rgba = "–", to_rgba("0.85")
                    ax.text(j, i, text, ha="center", va="center", fontsize=font,
                            color=_text_color(rgba))
        ystep, xstep = _tick_step(n_r, 40), _tick_step(n_c, 40)
        ax.set_yticks(range(0, n_r, ystep))
        ax.set_yticklabels(rows[::ystep])
        ax.set_xticks(range(0, n_c, xstep))
        ax.set_xticklabels(cols[::xstep], rotation=45 if rotate else 0,
                           ha="right" if rotate else "center", rotation_mode="anchor")
        for spine in ax.spines.values():
            spine.set_visible(True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(_wrap(title, max(40, int(width * 10))))
        fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    return _save(fig, out)


# --------------------------------------------------------------------------- 5. specificity_scatter


def specificity_scatter(ref_frequency: Any, activation_ratio: Any, fact_frequency: Any, threshold: float,
                        path: PathLike, title: str, label_top: int = 8) -> Path:
    """Reference KN frequency (x) against activation ratio (y, log scale) of every neuron that is a KN of
    some reference prompt or studied query; colour = KN frequency over the studied queries.

    Args:
        ref_frequency, activation_ratio: ``[n_layers, n_neurons]`` arrays (see
            :mod:`knowloc.analysis.specificity`).
        fact_frequency: ``[n_layers, n_neurons]`` share of the studied queries, or None (drawn as 0).
        threshold: the specificity threshold F (a dashed vertical line; none when F >= 1).
        path: where to write the PNG; title: figure title; label_top: neurons labelled "L#i", the most
            frequent on the reference prompts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: arrays of different shapes or not 2-D.
    """
    out = _check_path(path)
    ref = _matrix(ref_frequency, "ref_frequency")
    ratio = np.asarray(activation_ratio, dtype=float)
    facts = np.zeros_like(ref) if fact_frequency is None else np.asarray(fact_frequency, dtype=float)
    if ratio.shape != ref.shape or facts.shape != ref.shape:
        raise KnowlocError(f"specificity arrays differ in shape: {ref.shape}, {ratio.shape}, {facts.shape}")
    shown = (ref > 0) | (facts > 0)
    layers, indices = np.nonzero(shown)
    x, c = ref[shown], facts[shown]
    y = np.clip(np.nan_to_num(ratio[shown], nan=1e-3, posinf=1e4), 1e-3, 1e4)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.6, 4.8), layout="constrained")
        points = ax.scatter(x, y, c=c, cmap="viridis", vmin=0, vmax=max(float(c.max()) if c.size else 1.0, 1e-6),
                            s=14, alpha=0.8, edgecolors="none")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))  # plain text: mathtext is off
        ax.yaxis.set_minor_formatter(NullFormatter())
        if threshold < 1:
            ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1)
            ax.text(threshold, 1.0, f" F = {threshold:g}", transform=ax.get_xaxis_transform(), va="top",
                    ha="left", fontsize=8, color="0.3")
        for k in np.argsort(-x, kind="stable")[:label_top]:
            ax.annotate(f"L{layers[k]}#{indices[k]}", (x[k], y[k]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("reference KN frequency (neutral prompts or other relations' queries, the larger)")
        ax.set_ylabel("|activation| / layer median (reference prompts)")
        ax.grid(True, color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_title(_wrap(title, _TITLE_WIDTH))
        fig.colorbar(points, ax=ax, pad=0.02).set_label("KN frequency on the studied queries")
    return _save(fig, out)


# --------------------------------------------------------------------------- 6. frontier_plot


def frontier_plot(series: Mapping[str, Sequence[tuple[float, float, str]]], path: PathLike, title: str,
                  xlabel: str = "Loc (unrelated answers kept)", ylabel: str = "Rel (edited query changed)",
                  guide: tuple[float, float] | None = None) -> Path:
    """Trade-off curves: each series is a list of ``(x, y, label)`` points drawn in order and labelled.

    Args:
        series: name -> points (nan coordinates are left out).
        path: where to write the PNG; title, xlabel, ylabel: text.
        guide: an optional ``(x, y)`` target drawn as dotted lines (e.g. Loc 0.8, Rel 0.5).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no series with a finite point.
    """
    out = _check_path(path)
    parsed = []
    for name, points in series.items():
        pts = [(float(x), float(y), str(label)) for x, y, label in points
               if math.isfinite(float(x)) and math.isfinite(float(y))]
        if pts:
            parsed.append((str(name), pts))
    if not parsed:
        raise KnowlocError("frontier_plot needs at least one series with a finite point")
    markers = ["o", "s", "^", "D", "v", "P"]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
        for k, (name, pts) in enumerate(parsed):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            color = _PALETTE[k % len(_PALETTE)]
            ax.plot(xs, ys, marker=markers[k % len(markers)], markersize=5, linewidth=1.4, color=color, label=name)
            for x, y, label in pts:
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points", color=color)
        if guide is not None:
            ax.axvline(guide[0], color="0.5", linestyle=":", linewidth=1)
            ax.axhline(guide[1], color="0.5", linestyle=":", linewidth=1)
        ax.set_xlim(-0.02, 1.05)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_title(_wrap(title, 70))
        ax.legend(loc="lower left", frameon=False)
    return _save(fig, out)


# --------------------------------------------------------------------------- layer_curves


def layer_curves(panels: Mapping[str, Mapping[str, Any]], path: PathLike, title: str, ylabel: str,
                 zero_line: bool = True, x: Sequence[float] | None = None, xlabel: str = "layer",
                 log_x: bool = False) -> Path:
    """One value per layer, one line per series with its 95% band, one panel per key of ``panels`` (e.g. Geva et
    al.'s knockout figure: the drop of P(answer) by layer, one line per edge set, K_C beside K_I).

    Args:
        panels: panel title -> {series name -> ``(mean, low, high)`` or ``(mean, low, high, x)``}, each a
            sequence over layers or over the series' own positions ``x`` (``low`` / ``high`` may be None: no band;
            nan points are left out).
        path: where to write the PNG; title, ylabel: text; zero_line: draw y = 0; x: the points' positions
            (default 0, 1, ...: layers), xlabel its label, log_x a log scale (e.g. numbers of edits).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no panel with a finite point.
    """
    out = _check_path(path)
    parsed = []
    for panel, series in panels.items():
        lines = []
        for name, (mean, low, high, *own) in series.items():
            mean = np.asarray(mean, dtype=float)
            if not np.isfinite(mean).any():
                continue
            band = None if low is None or high is None else (np.asarray(low, dtype=float),
                                                              np.asarray(high, dtype=float))
            at = np.asarray(own[0] if own else (np.arange(len(mean)) if x is None else x), dtype=float)[:len(mean)]
            lines.append((str(name), mean, band, at))
        if lines:
            parsed.append((str(panel), lines))
    if not parsed:
        raise KnowlocError("layer_curves needs at least one panel with a finite point")
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(parsed), figsize=(4.6 * len(parsed), 3.8), layout="constrained",
                                 sharey=True, squeeze=False)
        for ax, (panel, lines) in zip(axes[0], parsed):
            for k, (name, mean, band, layers) in enumerate(lines):
                color = _PALETTE[k % len(_PALETTE)]
                ax.plot(layers, mean, marker="o", markersize=3, linewidth=1.4, color=color, label=name)
                if band is not None:
                    ax.fill_between(layers, band[0], band[1], color=color, alpha=0.18, linewidth=0)
            if zero_line:
                ax.axhline(0.0, color="0.5", linewidth=0.8)
            ax.set_xlabel(xlabel)
            if log_x:
                ax.set_xscale("log")
            ax.grid(True, color="0.9", linewidth=0.8)
            ax.set_axisbelow(True)
            ax.set_title(_wrap(panel, 40))
            ax.legend(loc="best", frameon=False, fontsize=8)
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle(_wrap(title, 90))
    return _save(fig, out)


# --------------------------------------------------------------------------- tracing_panels

_TRACE_CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}  # ROME's Figure 1 colours


def tracing_panels(panels: Mapping[str, Any], row_labels: Sequence[Any], path: PathLike, title: str,
                   col_labels: Sequence[Any] | None = None) -> Path:
    """Causal tracing's familiar three-panel figure (Meng et al. 2022, Fig. 1): one heatmap per kind.

    Args:
        panels: kind (``hidden``, ``mlp``, ``attn``; others drawn in grey) -> matrix [token rows, layers] of
            average indirect effects; nan cells blank.
        row_labels: one label per row (token classes or tokens, top to bottom).
        path: where to write the PNG. title: figure title.
        col_labels: one label per layer column (default 0, 1, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> tracing_panels({"hidden": ie_h, "mlp": ie_m, "attn": ie_a}, classes, "tracing.png", "SmolLM2")
    """
    out = _check_path(path)
    if not panels:
        raise KnowlocError("tracing_panels needs at least one panel")
    mats = {kind: _matrix(m, f"tracing_panels {kind}") for kind, m in panels.items()}
    n_r, n_c = next(iter(mats.values())).shape
    if any(m.shape != (n_r, n_c) for m in mats.values()):
        raise KnowlocError("tracing_panels: every panel needs the same shape")
    rows = _labels(row_labels, n_r, "row_labels")
    cols = _labels(col_labels if col_labels is not None else range(n_c), n_c, "col_labels")
    names = {"hidden": "restoring the residual stream", "mlp": "restoring MLP outputs (window)",
             "attn": "restoring attention outputs (window)"}
    width = float(np.clip(2.5 + len(mats) * (1.2 + 0.12 * n_c), 6.0, 18.0))
    height = float(np.clip(1.8 + 0.32 * n_r, 3.0, 8.0))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(mats), figsize=(width, height), layout="constrained", squeeze=False)
        for ax, (kind, mat) in zip(axes[0], mats.items()):
            finite = mat[np.isfinite(mat)]
            vmax = float(max(finite.max(), 1e-9)) if finite.size else 1.0
            vmin = float(min(finite.min(), 0.0)) if finite.size else 0.0
            cmap = matplotlib.colormaps[_TRACE_CMAPS.get(kind, "Greys")].with_extremes(bad="white")
            image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            ax.set_yticks(range(n_r))
            ax.set_yticklabels(rows if ax is axes[0][0] else [""] * n_r)
            step = _tick_step(n_c, 10)
            ax.set_xticks(range(0, n_c, step))
            ax.set_xticklabels(cols[::step])
            ax.set_xlabel("layer")
            ax.set_title(names.get(kind, kind), fontsize=10)
            fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02, label="IE = P_restored - P_corrupted")
        fig.suptitle(_wrap(title, int(width * 10)))
    return _save(fig, out)


VERDICT_COLORS = {"supports": "#2e7d32", "contradicts": "#c62828"}  # every other verdict: grey
_OPEN_COLOR = "#757575"


def findings_forest(items: Sequence[Mapping[str, Any]], path: PathLike, title: str = "Findings at a glance") -> Path:
    """Every finding of a study in one figure: one panel per finding, one row per comparison its verdict read,
    the effect as a point with its 95% interval against the claim's threshold (dashed; the contradict line dotted
    where it differs), the comparison's verdict colouring its point and the finding's verdict a coloured label;
    the findings not run share one line at the end.

    Args:
        items: summary.json's ``findings`` (``id``, ``question``, ``verdict``, ``reason`` and ``estimates``:
            ``label, value, low, high, n, verdict, support, contradict``); a finding without estimates shows its
            verdict and reason only.
        path: where to write the PNG; title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no finding.

    Example:
        >>> findings_forest(json.load(open("summary.json"))["findings"], "figures/findings.png")
    """
    out = _check_path(path)
    if not items:
        raise KnowlocError("findings_forest needs at least one finding")
    not_run = [str(item.get("id", "")) for item in items if item.get("verdict") == "not run"]
    items = [item for item in items if item.get("verdict") != "not run"]
    if not_run:  # one line for every finding whose experiment the study did not run
        items.append({"id": "not run", "question": "the study did not run their experiments", "verdict": "not run",
                      "reason": ", ".join(not_run)})
    heights = [0.55 + 0.28 * max(1, len(item.get("estimates") or ())) for item in items]
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(len(items), 1, figsize=(9.5, sum(heights) + 0.6), layout="constrained",
                                 gridspec_kw={"height_ratios": heights}, squeeze=False)
        fig.suptitle(title)
        for ax, item in zip(axes[:, 0], items):
            verdict = str(item.get("verdict", ""))
            ax.set_title(textwrap.shorten(f"{item.get('id', '')}: {item.get('question', '')}", 110), loc="left",
                         fontsize=9)
            ax.text(1.0, 1.02, f" {verdict} ", transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    color="white", bbox={"boxstyle": "round,pad=0.2", "linewidth": 0,
                                         "facecolor": VERDICT_COLORS.get(verdict, _OPEN_COLOR)})
            rows = [e for e in item.get("estimates") or () if e.get("value") is not None
                    and np.isfinite(float(e["value"]))]
            if not rows:
                ax.text(0.0, 0.5, textwrap.fill(str(item.get("reason") or verdict), 130), transform=ax.transAxes,
                        va="center", fontsize=8, color=_OPEN_COLOR)
                ax.set_axis_off()
                continue
            ys = np.arange(len(rows))[::-1]
            for y, e in zip(ys, rows):
                color = VERDICT_COLORS.get(str(e.get("verdict")), _OPEN_COLOR)
                value = float(e["value"])
                low, high = (float(e[k]) if e.get(k) is not None else math.nan for k in ("low", "high"))
                if np.isfinite(low) and np.isfinite(high):
                    ax.plot([low, high], [y, y], color=color, linewidth=1.6)
                ax.plot([value], [y], marker="o", markersize=4.5, color=color)
            for key, style in (("support", "--"), ("contradict", ":")):
                lines = {float(e[key]) for e in rows if e.get(key) is not None}
                for line in sorted(lines):
                    if key == "contradict" and any(e.get("support") == line for e in rows):
                        continue  # the same line as the claim's
                    ax.axvline(line, color="0.35", linewidth=0.9, linestyle=style)
            ax.set_yticks(ys, [textwrap.shorten(f"{e.get('label') or ''} (n {e.get('n')})", 40) for e in rows])
            ax.set_ylim(-0.7, len(rows) - 0.3)
            ax.tick_params(axis="y", length=0)
            ax.tick_params(axis="x", labelsize=8)
    return _save(fig, out)


def specification_curve(rows: Sequence[Mapping[str, Any]], path: PathLike, axes: Sequence[tuple[str, str]],
                        title: str = "") -> Path:
    """A specification curve (Simonsohn et al. 2020): one finding's comparisons at every point of an analysis grid,
    sorted by effect, each with its 95% interval and coloured by its verdict (top), and below them which setting
    each point used (one row per value of each axis, a filled dot where the point has it). The first row given
    is the study's own setting: the comparisons at its settings are drawn with a ring around the dot.

    Args:
        rows: ``{"value", "low", "high", "verdict", "label", <axis keys>}`` per comparison and grid point (the
            ``robustness`` rows of summary.json, one finding and model), the study's own point first.
        path: where to write the PNG; axes: ``(key, label)`` of the settings shown below, in order (a key whose
            rows all share one value is left out); title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KnowlocError: no row with a finite value.

    Example:
        >>> specification_curve(rows, "figures/robustness_k-i-share.png", [("threshold", "threshold")])
    """
    out = _check_path(path)
    own = rows[0] if rows else None
    rows = [r for r in rows if r.get("value") is not None and np.isfinite(float(r["value"]))]
    if not rows:
        raise KnowlocError("specification_curve needs at least one comparison with a value")
    order = sorted(range(len(rows)), key=lambda i: float(rows[i]["value"]))
    shown = [(key, label, sorted({str(r.get(key)) for r in rows})) for key, label in axes]
    if len({str(r.get("label")) for r in rows}) > 1:
        shown.append(("label", "comparison", sorted({str(r.get("label")) for r in rows})))
    shown = [(key, label, values) for key, label, values in shown if len(values) > 1]
    n_marks = sum(len(values) for _, _, values in shown)
    with plt.rc_context(_STYLE):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.12 * len(rows) + 3), 3.2 + 0.2 * n_marks),
                                          sharex=True, layout="constrained",
                                          gridspec_kw={"height_ratios": [3, max(1, 0.25 * n_marks)]})
        if title:
            fig.suptitle(title, fontsize=10)
        for x, i in enumerate(order):
            r = rows[i]
            color = VERDICT_COLORS.get(str(r.get("verdict")), _OPEN_COLOR)
            low, high = (float(r[k]) if r.get(k) is not None else math.nan for k in ("low", "high"))
            if np.isfinite(low) and np.isfinite(high):
                top.plot([x, x], [low, high], color=color, linewidth=1.0, alpha=0.8)
            top.plot([x], [float(r["value"])], marker="o", markersize=3.5, color=color)
            if own is not None and all(str(r.get(key)) == str(own.get(key)) for key, _ in axes):
                top.plot([x], [float(r["value"])], marker="o", markersize=9, markerfacecolor="none", color="black")
        top.set_ylabel("effect (95% CI)")
        top.axhline(0.0, color="0.6", linewidth=0.7)
        y, ticks = 0, []
        for key, label, values in shown:
            for value in values:
                xs = [x for x, i in enumerate(order) if str(rows[i].get(key)) == value]
                bottom.plot(xs, [y] * len(xs), linestyle="none", marker="s", markersize=2.5, color="0.2")
                ticks.append((y, textwrap.shorten(f"{label} {value}", 30)))
                y -= 1
        bottom.set_yticks([t for t, _ in ticks], [name for _, name in ticks], fontsize=7)
        bottom.set_ylim(y + 0.5, 0.5)
        bottom.set_xlabel("grid points, sorted by effect")
        bottom.tick_params(axis="x", labelbottom=False, length=0)
    return _save(fig, out)
