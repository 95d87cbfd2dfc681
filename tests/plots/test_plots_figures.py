"""Tests for knowloc.plots: valid PNGs written atomically, edge cases, one-line errors."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from knowloc import plots  # noqa: E402
from knowloc.errors import KnowlocError  # noqa: E402
from knowloc.plots import (  # noqa: E402
    activation_heatmaps,
    figures,
    grouped_bars,
    heatmap_grid,
    violin_cs,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


# --------------------------------------------------------------------------- helpers and data


def check_png(path: Path, min_side: int = 300) -> np.ndarray:
    """The file is a readable PNG of a sensible size; returns the pixels."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min_side <= image.shape[0] <= 4000 and min_side <= image.shape[1] <= 4000
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas
    return image


def only_file(directory: Path, name: str) -> None:
    """The directory holds exactly the figure: no temp file was left behind."""
    assert sorted(p.name for p in directory.iterdir()) == [name]


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


@pytest.fixture
def captured(monkeypatch):
    """Record the text of every figure handed to _save (before it is closed)."""
    texts: list[list[str]] = []
    real_save = figures._save

    def spy(fig, path):
        found = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        texts.append(found)
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    return texts


def cs_values() -> dict[str, list[float]]:
    t = np.linspace(0.0, 1.0, 25)
    return {
        "P101": list(0.2 + 0.15 * np.sin(6 * t)),
        "P17": list(0.6 + 0.3 * np.cos(5 * t) * t),
        "P1303": [0.42],  # a single value: drawn as a point
        "P19": [0.5, 0.5, 0.5],  # no spread: drawn as points
    }


def panel(title: str, rows: int = 4, cols: int = 6, shift: float = 0.0) -> dict:
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return {
        "title": title,
        "matrix": np.abs(np.sin(0.7 * i + 1.3 * j + shift)),
        "row_labels": [f"L{k}" for k in range(rows)],
        "col_labels": [f"L{k % rows}#{100 + 17 * k}" for k in range(cols)],
    }


def bar_rows() -> list[dict]:
    rows = []
    for g in ("K_C", "K_I"):
        for m, metric in enumerate(("reliability", "generality", "locality")):
            for s, nset in enumerate(("QL", "KN", "random")):
                v = 0.9 - 0.2 * s - 0.1 * m
                rows.append({"group": g, "metric": metric, "set": nset, "mean": v,
                             "lo": v - 0.05, "hi": v + 0.04})
    return rows


def grid() -> tuple[np.ndarray, list[str], list[str]]:
    m = np.arange(12, dtype=float).reshape(3, 4) / 11.0
    return m, ["0.1", "0.2", "0.3"], ["1", "5", "10", "20"]


def small_plot(path):
    """The smallest figure, for what every figure shares (path checks, atomic save)."""
    return heatmap_grid(np.eye(2), ["a", "b"], ["c", "d"], path, "t", "x", "y")


# --------------------------------------------------------------------------- package surface


def test_reexports():
    assert set(plots.__all__) == {"violin_cs", "activation_heatmaps", "grouped_bars", "heatmap_grid",
                                  "frontier_plot", "layer_curves", "specificity_scatter", "tracing_panels",
                                  "findings_forest", "specification_curve", "not_written"}
    for name in plots.__all__:
        assert getattr(plots, name) is getattr(figures, name)
    assert not hasattr(figures, "line_plot")  # removed: no figure of the study drew it
    assert matplotlib.get_backend().lower() == "agg"


# --------------------------------------------------------------------------- violin_cs


def test_violin_cs_writes_png_with_threshold_legend_and_counts(tmp_path, captured):
    out = violin_cs(cs_values(), 0.3, 0.2734, tmp_path / "cs.png", "CS per relation")
    assert out == tmp_path / "cs.png" and isinstance(out, Path)
    check_png(out)
    only_file(tmp_path, "cs.png")
    texts = captured[0]
    assert "static τ=0.30" in texts and "Otsu τ=0.27" in texts
    assert "CS per relation" in texts
    for rel, n in (("P101", 25), ("P1303", 1), ("P19", 3)):
        assert any(rel in t and f"n={n}" in t for t in texts), (rel, n)


def test_violin_cs_single_relation_single_value_and_empty_relation(tmp_path):
    check_png(violin_cs({"P1": [0.7]}, 0.3, 0.5, tmp_path / "a.png", "one value"))
    check_png(violin_cs({"P1": [0.1, 0.9], "P2": []}, 0.3, 0.5, tmp_path / "b.png", "one empty"))


def test_violin_cs_many_relations_rotated(tmp_path):
    values = {f"P{100 + k}": list(np.linspace(0.05, 0.95, 5 + k) ** (1 + k / 20)) for k in range(38)}
    check_png(violin_cs(values, 0.3, 0.41, tmp_path / "many.png", "38 relations"))


@pytest.mark.parametrize(
    ("values", "static", "otsu", "needle"),
    [
        ({}, 0.3, 0.4, "non-empty"),
        ({"P1": [0.2, 1.4]}, 0.3, 0.4, "[0, 1]"),
        ({"P1": [0.2, NAN]}, 0.3, 0.4, "nan"),
        ({"P1": ["x", 0.2]}, 0.3, 0.4, "numbers"),
        ({"P1": [0.2, 0.4]}, 1.3, 0.4, "static_tau"),
        ({"P1": [0.2, 0.4]}, 0.3, NAN, "otsu_tau"),
    ],
)
def test_violin_cs_bad_input(tmp_path, values, static, otsu, needle):
    with pytest.raises(KnowlocError) as err:
        violin_cs(values, static, otsu, tmp_path / "x.png", "t")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- activation_heatmaps


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_activation_heatmaps_panel_counts(tmp_path, n, captured):
    long_title = "The mother tongue of Danielle Darrieux, the French actress born in Bordeaux, is"
    panels = [panel(long_title if k == 0 else f"query {k}", shift=k) for k in range(n)]
    image = check_png(activation_heatmaps(panels, tmp_path / "h.png", "K_C vs K_I"))
    only_file(tmp_path, "h.png")
    height, width = image.shape[:2]
    if n == 4:  # 2 x 2 grid
        assert height > 0.6 * width
    elif n >= 2:  # one row
        assert width > 1.5 * height
    texts = captured[0]
    assert "L1#117" in texts and "L0" in texts
    assert not any(long_title in t for t in texts), "long panel titles are wrapped"


def test_activation_heatmaps_signed_nan_and_different_shapes(tmp_path):
    a = panel("It costs $x^{2$ dollars", rows=3, cols=5)  # literal text, not mathtext
    a["matrix"] = a["matrix"] - 0.5
    a["matrix"][0, 0] = NAN
    b = panel("bigger", rows=6, cols=50)
    check_png(activation_heatmaps([a, b], tmp_path / "h.png", "mixed"))


def test_activation_heatmaps_shared_color_scale(tmp_path, monkeypatch):
    seen = []
    real_save = figures._save

    def spy(fig, path):
        seen.extend(im.get_clim() for ax in fig.axes for im in ax.get_images())
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    a, b = panel("a"), panel("b")
    b["matrix"] = b["matrix"] * 3.0
    activation_heatmaps([a, b], tmp_path / "h.png", "shared")
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0][1] == pytest.approx(float(np.max(b["matrix"])))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda ps: ps[0].update(row_labels=["L0", "L1"]), "row_labels has 2 labels but the matrix has 4"),
        (lambda ps: ps[1].update(col_labels=["a"] * 7), "col_labels has 7 labels but the matrix has 6"),
        (lambda ps: ps[0].update(matrix=np.zeros(5)), "2-D"),
        (lambda ps: ps[0].pop("title"), "lacks key(s) title"),
        (lambda ps: ps.extend([panel("c"), panel("d"), panel("e")]), "1 to 4 panels"),
        (lambda ps: ps.clear(), "1 to 4 panels"),
        (lambda ps: [p.update(matrix=np.full((4, 6), NAN)) for p in ps], "nan"),
    ],
)
def test_activation_heatmaps_bad_input(tmp_path, mutate, needle):
    panels = [panel("a"), panel("b")]
    mutate(panels)
    with pytest.raises(KnowlocError) as err:
        activation_heatmaps(panels, tmp_path / "h.png", "bad")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- grouped_bars


def test_grouped_bars_faceted(tmp_path, captured):
    out = grouped_bars(bar_rows(), tmp_path / "bars.png", "Editing", x="metric", hue="set",
                       value="mean", low="lo", high="hi", facet="group", ylabel="success")
    check_png(out)
    only_file(tmp_path, "bars.png")
    texts = captured[0]
    for needle in ("group = K_C", "group = K_I", "QL", "KN", "random", "success", "locality"):
        assert needle in texts, needle


def test_grouped_bars_error_bars_from_bounds(tmp_path, monkeypatch):
    """Whiskers run from low to high (bounds, not half-widths); nan bounds draw none."""
    spans = []
    real_save = figures._save

    def spy(fig, path):
        for coll in fig.axes[0].collections:  # errorbar's LineCollection
            for seg in coll.get_segments():
                spans.append((round(float(seg[0][1]), 6), round(float(seg[1][1]), 6)))
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    rows = [
        {"x": "a", "h": "one", "v": 0.5, "lo": 0.2, "hi": 0.9},
        {"x": "a", "h": "two", "v": 0.4, "lo": NAN, "hi": 0.6},
        {"x": "b", "h": "one", "v": 0.3, "lo": None, "hi": None},
    ]
    grouped_bars(rows, tmp_path / "b.png", "ci", x="x", hue="h", value="v", low="lo", high="hi")
    assert spans == [(0.2, 0.9)]


def test_grouped_bars_nan_ci_missing_cells_and_empty_facet(tmp_path, captured):
    rows = bar_rows()
    for r in rows:
        if r["set"] == "random":
            r["lo"] = r["hi"] = NAN  # no CI
    rows = [r for r in rows if not (r["group"] == "K_I" and r["metric"] == "locality")]  # missing cells
    rows.append({"group": "empty", "metric": "reliability", "set": "QL", "mean": NAN, "lo": NAN, "hi": NAN})
    check_png(grouped_bars(rows, tmp_path / "b.png", "gaps", x="metric", hue="set", value="mean",
                           low="lo", high="hi", facet="group"))
    only_file(tmp_path, "b.png")
    assert "no data" in captured[0] and "group = empty" in captured[0]


def test_grouped_bars_all_nan_and_negative_values(tmp_path):
    rows = [{"x": "a", "h": "h", "v": NAN, "lo": NAN, "hi": NAN}]
    check_png(grouped_bars(rows, tmp_path / "a.png", "nothing", x="x", hue="h", value="v",
                           low="lo", high="hi"))
    rows = [{"x": k, "h": h, "v": v, "lo": v - 0.1, "hi": v + 0.1}
            for k, h, v in (("ΔPPL", "QL", -0.4), ("ΔPPL", "KN", 0.2), ("acc", "QL", 0.7))]
    check_png(grouped_bars(rows, tmp_path / "b.png", "signed", x="x", hue="h", value="v",
                           low="lo", high="hi"))


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([], "non-empty"),
        ([{"x": "a", "h": "b", "v": 1.0, "lo": 0.5}], "lacks column(s) hi"),
        ([{"x": "a", "h": "b", "v": "high", "lo": 0.5, "hi": 1.0}], "must be a number"),
        ([{"x": "a", "h": "b", "v": 1.0, "lo": 0.5, "hi": 1.2}] * 2, "two rows for the same bar"),
    ],
)
def test_grouped_bars_bad_input(tmp_path, rows, needle):
    with pytest.raises(KnowlocError) as err:
        grouped_bars(rows, tmp_path / "b.png", "bad", x="x", hue="h", value="v", low="lo", high="hi")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- heatmap_grid


def test_heatmap_grid_annotated(tmp_path, captured):
    m, rows, cols = grid()
    m[1, 2] = NAN
    check_png(heatmap_grid(m, rows, cols, tmp_path / "g.png", "sweep", "top-k", "t", fmt="{:.1%}"))
    only_file(tmp_path, "g.png")
    texts = captured[0]
    assert "0.0%" in texts and "100.0%" in texts and "–" in texts
    assert sum(t.endswith("%") for t in texts) == 11  # every finite cell is annotated


def test_heatmap_grid_constant_and_large(tmp_path):
    check_png(heatmap_grid(np.full((2, 2), 0.5), ["a", "b"], ["c", "d"], tmp_path / "c.png", "flat", "x", "y"))
    big = np.linspace(-1, 1, 30 * 30).reshape(30, 30)
    labels = [str(k) for k in range(30)]
    check_png(heatmap_grid(big, labels, labels, tmp_path / "big.png", "big", "x", "y"))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"row_labels": ["0.1", "0.2"]}, "row_labels has 2 labels but the matrix has 3"),
        ({"col_labels": ["1", "5", "10", "20", "50"]}, "col_labels has 5 labels but the matrix has 4"),
        ({"col_labels": "abcd"}, "sequence"),
        ({"matrix": [1.0, 2.0, 3.0]}, "2-D"),
        ({"matrix": np.full((3, 4), NAN)}, "nan"),
        ({"fmt": "{:.2q}"}, "fmt"),
    ],
)
def test_heatmap_grid_bad_input(tmp_path, kwargs, needle):
    m, rows, cols = grid()
    args = {"matrix": m, "row_labels": rows, "col_labels": cols} | kwargs
    with pytest.raises(KnowlocError) as err:
        heatmap_grid(args["matrix"], args["row_labels"], args["col_labels"], tmp_path / "g.png",
                     "t", "x", "y", **({"fmt": kwargs["fmt"]} if "fmt" in kwargs else {}))
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- shared behaviour


def render_all(directory: Path) -> list[Path]:
    m, rows, cols = grid()
    return [
        violin_cs(cs_values(), 0.3, 0.31, directory / "v.png", "v"),
        activation_heatmaps([panel("a"), panel("b", shift=1)], directory / "a.png", "a"),
        grouped_bars(bar_rows(), directory / "b.png", "b", x="metric", hue="set", value="mean",
                     low="lo", high="hi", facet="group"),
        heatmap_grid(m, rows, cols, directory / "g.png", "g", "x", "y"),
    ]


def test_deterministic_bytes(tmp_path):
    first = [p.read_bytes() for p in render_all(tmp_path / "one")]
    second = [p.read_bytes() for p in render_all(tmp_path / "two")]
    assert first == second


def test_overwrite_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "nested" / "dir" / "fig.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")
    small_plot(target)
    check_png(target)
    only_file(target.parent, "fig.png")
    fresh = tmp_path / "made" / "fig.png"  # missing parent folders are created
    check_png(small_plot(str(fresh)))


def test_unwritable_target_is_a_knowloc_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(KnowlocError) as err:
        small_plot(blocker / "fig.png")
    assert "cannot write figure" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(KnowlocError, match="directory"):
        small_plot(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_save_removes_temp_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(KnowlocError, match="No space left"):
        small_plot(tmp_path / "l.png")
    assert list(tmp_path.iterdir()) == []


def test_pixel_size_follows_fixed_dpi(tmp_path):
    # a 6 x 8 annotated grid: 2.6 + 0.75 * 8 = 8.6 by 1.8 + 0.5 * 6 = 4.8 inches
    m = np.arange(48, dtype=float).reshape(6, 8)
    image = mpimg.imread(heatmap_grid(m, list("abcdef"), list("01234567"), tmp_path / "g.png", "t", "x", "y"))
    assert image.shape[:2] == (math.floor(4.8 * 120), math.floor(8.6 * 120))


# --------------------------------------------------------------------------- tracing_panels


def test_tracing_panels_draw_three_kinds(tmp_path, captured):
    from knowloc.plots import tracing_panels

    classes = ["first subject", "last subject", "last"]
    maps = {k: np.linspace(0, 1, 3 * 5).reshape(3, 5) for k in ("hidden", "mlp", "attn")}
    maps["mlp"][0, 0] = np.nan
    out = tracing_panels(maps, classes, tmp_path / "trace.png", "causal tracing")
    check_png(out)
    only_file(tmp_path, "trace.png")
    texts = captured[0]
    assert "restoring MLP outputs (window)" in texts and "causal tracing" in texts and "last subject" in texts


@pytest.mark.parametrize("panels, needle", [({}, "at least one panel"),
                                            ({"hidden": np.zeros((2, 3)), "mlp": np.zeros((3, 3))}, "same shape")])
def test_tracing_panels_bad_input(tmp_path, panels, needle):
    from knowloc.plots import tracing_panels

    with pytest.raises(KnowlocError, match=needle):
        tracing_panels(panels, ["a", "b"], tmp_path / "t.png", "t")
    assert not list(tmp_path.iterdir())


def test_layer_curves_draws_one_panel_per_group_and_refuses_nothing_to_draw(tmp_path):
    from knowloc.errors import KnowlocError

    mean = [0.0, 0.4, float("nan"), 0.1]
    panels = {"K_C (3 facts)": {"subject": (mean, [v - 0.1 for v in mean], [v + 0.1 for v in mean]),
                                "last": ([0.1, 0.0, 0.0, 0.2], None, None)},
              "K_I (0 facts)": {"subject": ([float("nan")] * 4, None, None)}}
    out = plots.layer_curves(panels, tmp_path / "k.png", "knockout", "drop")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(out) as image:  # one panel: the empty K_I is left out, so the figure is one panel wide
        one = image.size
    out2 = plots.layer_curves({**panels, "K_I": {"subject": (mean, None, None)}}, tmp_path / "k2.png", "x", "y")
    with Image.open(out2) as image:
        assert image.size[0] > 1.5 * one[0]
    with pytest.raises(KnowlocError, match="at least one panel"):
        plots.layer_curves({"a": {"s": ([float("nan")], None, None)}}, tmp_path / "none.png", "x", "y")


def test_findings_forest_draws_one_panel_per_finding_run_and_one_line_for_those_not_run(tmp_path):
    """Each finding with estimates is a panel (its rows, its threshold); findings not run share one panel; the
    height grows with the rows, so a study with more comparisons gets a taller figure."""
    def item(fid, verdict, n_rows):
        return {"id": fid, "question": f"question {fid}?", "verdict": verdict, "reason": "",
                "estimates": [{"label": f"ig {k}", "value": 0.1 * k, "low": 0.1 * k - 0.05, "high": 0.1 * k + 0.05,
                               "n": 20, "verdict": verdict, "support": 0.0, "contradict": 0.0}
                              for k in range(n_rows)]}
    few = [item("a", "supports", 1), item("b", "not run", 0), item("c", "not run", 0)]
    many = [item("a", "supports", 4), item("b", "contradicts", 2), item("c", "not run", 0)]
    small = figures.findings_forest(few, tmp_path / "few.png")
    large = figures.findings_forest(many, tmp_path / "many.png")
    (h1, w1), (h2, w2) = mpimg.imread(small).shape[:2], mpimg.imread(large).shape[:2]
    assert w1 == w2 and h2 > h1
    with pytest.raises(KnowlocError, match="at least one finding"):
        figures.findings_forest([], tmp_path / "none.png")


def test_specification_curve_grows_with_the_settings_that_vary_and_refuses_no_value(tmp_path):
    """One point per grid point sorted by effect; one marker row per value of each axis that varies (an axis with
    one value is left out), so more varied settings make a taller figure."""
    def rows(thresholds, fs):
        return [{"value": 0.1 * i, "low": 0.1 * i - 0.05, "high": 0.1 * i + 0.05, "verdict": "supports",
                 "label": "ig", "threshold": t, "specificity": f, "split": "static", "score": "cs1"}
                for i, (t, f) in enumerate((t, f) for t in thresholds for f in fs)]
    axes = [("threshold", "threshold"), ("specificity", "F"), ("split", "split"), ("score", "score")]
    one = figures.specification_curve(rows([0.2, 0.1], ["0.05"]), tmp_path / "one.png", axes)
    two = figures.specification_curve(rows([0.2, 0.1, 0.3], ["0.05", "off", "0.02"]), tmp_path / "two.png", axes)
    assert mpimg.imread(two).shape[0] > mpimg.imread(one).shape[0]
    with pytest.raises(KnowlocError, match="at least one comparison"):
        figures.specification_curve([{"value": None}], tmp_path / "none.png", axes)


def test_inside_not_written_a_figure_function_returns_its_path_unwritten(tmp_path):
    item = {"id": "a", "question": "q?", "verdict": "supports", "reason": "",
            "estimates": [{"label": "ig", "value": 0.3, "low": 0.1, "high": 0.5, "n": 9, "verdict": "supports"}]}
    with figures.not_written():
        assert figures.findings_forest([item], tmp_path / "skipped.png") == tmp_path / "skipped.png"
    assert not (tmp_path / "skipped.png").exists()
    assert figures.findings_forest([item], tmp_path / "written.png").is_file()  # written again after it
