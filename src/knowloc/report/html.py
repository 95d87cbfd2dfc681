"""A self-contained HTML report of a `knowloc study` output directory.

:func:`build_report` reads what a study wrote (``summary.json``, ``figures/*.png`` and the results store
``results.sqlite``) and writes ``report.html`` beside them. Nothing is recomputed and no model is loaded:
the tables are the study's own summary rows, the figures are the study's PNGs (embedded as base64 data URIs),
and the per-fact drill-down reads the stored probes and knowledge-neuron (KN) sets.

The page needs nothing but a browser: no CDN, no external CSS or JavaScript, no network access. It is
deterministic (the same inputs give the same bytes; no timestamps unless the caller passes them in the
``environment`` dict) and printable. Every piece of text that comes from data files or the configuration
(subjects, objects, prompts, relation names, model names, ...) is HTML-escaped.

Per-fact K_C / K_I groups. For each model and method the drill-down shows the group the study's later
experiments used: the study configuration (``summary.json``'s ``config``) is turned back into a
:class:`~knowloc.study.config.StudyConfig` and a model-less :class:`~knowloc.study.context.StudyContext` over the
store, and :func:`knowloc.study.experiments.consistency.groups` is called on it (the selected CS score,
static ``tau`` or Otsu threshold over the method's facts, whichever ``split`` says). Only if the stored
configuration cannot be rebuilt (e.g. a study written by another knowloc version) the same rule is applied
here directly to the CS values computed with :func:`knowloc.analysis.consistency_scores`.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import math
import platform
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable

from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write

__all__ = ["build_report", "environment_info"]

PACKAGES = ("knowloc", "torch", "transformers", "numpy")
KN_SHOWN = 30  # neurons listed per query in the drill-down
FIGURE_SCALE = 2 / 3  # figures are shown at this share of their pixel width (capped at the page width)

# (section id, heading, summary.json key, figure name prefixes)
SECTIONS = (
    ("specificity", "Neuron specificity", "specificity", ("specificity_",)),
    ("consistency", "Consistency", "consistency", ("cs_violin", "kn_heatmap")),
    ("modification", "Modification", "modification", ("modification_",)),
    ("query-mapping", "Query-KN mapping", "query_mapping", ("query_mapping_",)),
    ("attention", "Attention (knowledge synapses)", "attention", ("attention_",)),
    ("cas", "CAS", "cas", ("cas_erase", "cas_update")),
    ("cas-sweep", "CAS sweep", "cas_sweep", ("cas_sweep_",)),
    ("update-sweep", "Update frontier", "update_sweep", ("update_frontier_",)),
)

DASH = "\u2013"  # shown for nan / missing values

CSS = """
:root{--fg:#1d2430;--muted:#5b6472;--line:#d5dae1;--head:#eef1f5;--accent:#2458a6;--kc:#1f7a3a;--ki:#a33b20}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
  max-width:1260px;margin:0 auto;padding:20px 16px 60px;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px}
h4{font-size:13.5px;margin:14px 0 6px}
p{margin:6px 0}
a{color:var(--accent)}
.muted{color:var(--muted)}
.notrun{color:var(--muted);font-style:italic;padding:8px 12px;background:#f6f7f9;border-left:3px solid var(--line)}
nav.toc{background:#f6f7f9;border:1px solid var(--line);border-radius:6px;padding:10px 18px;margin:16px 0}
nav.toc ol{margin:4px 0;padding-left:22px}
.tablewrap{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:2px 5px;text-align:left;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal;min-width:16em}
.ci{color:var(--muted);font-size:11px}
th{background:var(--head);font-weight:600;white-space:nowrap}
td.num{text-align:right}
tbody tr:nth-child(even){background:#fafbfc}
table.kv td.k{font-weight:600;white-space:nowrap;background:#f6f7f9}
.star{color:var(--accent);font-weight:700}
.figs{display:flex;flex-wrap:wrap;gap:14px;margin:10px 0}
figure{margin:0;flex:0 1 auto;min-width:0;max-width:100%;border:1px solid var(--line);border-radius:4px;padding:6px;
  break-inside:avoid;page-break-inside:avoid}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:12px;color:var(--muted);text-align:center;margin-top:4px;word-break:break-all}
details.fact{border:1px solid var(--line);border-radius:4px;margin:4px 0;padding:0 10px}
details.fact[open]{padding-bottom:8px}
details.fact>summary{cursor:pointer;padding:5px 0}
.g-K_C{color:var(--kc);font-weight:600}
.g-K_I{color:var(--ki);font-weight:600}
code,.kn{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.kn{word-break:break-word}
@media print{
  body{max-width:none;padding:0;font-size:11px}
  nav.toc{break-after:page}
  h2{break-after:avoid}
  .tablewrap{overflow:visible}
  table{font-size:9.5px}
}
"""

# open every drill-down before printing (the page works without it)
PRINT_JS = ("window.addEventListener('beforeprint',function(){"
            "document.querySelectorAll('details').forEach(function(d){d.open=true;});});")


# --------------------------------------------------------------------------- environment


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def environment_info(device: str | None = None, wall_s: float | None = None,
                     peak_rss_mb: float | None = None) -> dict:
    """What the report shows about the run's environment.

    ``{"versions": {knowloc, torch, transformers, numpy, python}, "device": ..., "wall_s": ...,
    "peak_rss_mb": ...}``; the last three only when given. Versions come from :mod:`importlib.metadata`.
    """
    env: dict[str, Any] = {"versions": _versions()}
    if device is not None:
        env["device"] = str(device)
    if wall_s is not None:
        env["wall_s"] = float(wall_s)
    if peak_rss_mb is not None:
        env["peak_rss_mb"] = float(peak_rss_mb)
    return env


# --------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: Any, digits: int = 3, signed: bool = False) -> str:
    if _is_missing(x):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
        if text.lstrip("+-").strip("0.") == "":  # no "-0.00"
            text = ("+" if signed else "") + text.lstrip("+-")
        return text
    return esc(x)


def fmt_p(x: Any) -> str:
    """p-values in 2 significant digits."""
    if _is_missing(x):
        return DASH
    return f"{float(x):.2g}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    """`digits` significant digits (probabilities that may be tiny)."""
    if _is_missing(x):
        return DASH
    return f"{float(x):.{digits}g}"


def fmt_ci(est: Any, lo: Any, hi: Any, digits: int = 2, signed: bool = False) -> str:
    text = fmt_num(est, digits, signed)
    if _is_missing(lo) and _is_missing(hi):
        return text
    return f'{text} <span class="ci">[{fmt_num(lo, digits, signed)}, {fmt_num(hi, digits, signed)}]</span>'


def fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _plain(value: Any) -> str:
    """A config / environment value as escaped text."""
    if _is_missing(value):
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return esc(", ".join(map(str, value))) if value else "(none)"
    if isinstance(value, dict):
        return esc(json.dumps(value, sort_keys=True))
    return esc(value)


# --------------------------------------------------------------------------- tables

# a column: header (trusted HTML), the row keys it shows, a formatter of the row (returns escaped HTML) and the
# cells' CSS class ("num": right-aligned, "wrap": long text that may wrap; cells do not wrap otherwise)
Column = tuple[str, tuple[str, ...], Callable[[dict], str], str]


def text_col(header: str, key: str, wrap: bool = False) -> Column:
    return header, (key,), lambda r: esc(r.get(key, DASH)), "wrap" if wrap else ""


def num_col(header: str, key: str, digits: int = 3, signed: bool = False) -> Column:
    return header, (key,), lambda r: fmt_num(r.get(key), digits, signed), "num"


def p_col(header: str, key: str) -> Column:
    return header, (key,), lambda r: fmt_p(r.get(key)), "num"


def ci_col(header: str, key: str, lo: str | None = None, hi: str | None = None, digits: int = 2,
           signed: bool = False) -> Column:
    lo, hi = lo or f"{key}_ci_low", hi or f"{key}_ci_high"
    return header, (key, lo, hi), lambda r: fmt_ci(r.get(key), r.get(lo), r.get(hi), digits, signed), "num"


def _auto_columns(rows: list[dict], used: set[str]) -> list[Column]:
    """Columns for keys no explicit column shows: `x` with `x_ci_low`/`x_ci_high` becomes one CI column."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in used]
    cols: list[Column] = []
    taken: set[str] = set()
    for key in keys:
        if key in taken:
            continue
        if f"{key}_ci_low" in keys and f"{key}_ci_high" in keys:
            cols.append(ci_col(esc(key), key, digits=3))
            taken |= {key, f"{key}_ci_low", f"{key}_ci_high"}
            continue
        sample = next((r[key] for r in rows if key in r and r[key] is not None), None)
        if isinstance(sample, (int, float)) and not isinstance(sample, bool):
            cols.append(num_col(esc(key), key))
        else:
            cols.append(text_col(esc(key), key))
        taken.add(key)
    return cols


def fmt_dlogppl_ci(r: dict, key: str = "dlogppl_median") -> str:
    """dlogPPL with its interval; a perplexity ratio above 1000x reads "> 1000x", never an overflow."""
    from knowloc.study.context import fmt_dlogppl

    text = esc(fmt_dlogppl(r.get(key)))
    lo, hi = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    if _is_missing(lo) and _is_missing(hi):
        return text
    return f'{text} <span class="ci">[{esc(fmt_dlogppl(lo))}, {esc(fmt_dlogppl(hi))}]</span>'


def edit_metric_cols() -> list[Column]:
    """Rel, Gen, Loc, Avg and the median dlogPPL with their intervals: the columns of every editing table (raw
    dPPL, heavy-tailed, stays in the CSV tables)."""
    return [*(ci_col(h, k) for h, k in (("Rel", "rel"), ("Gen", "gen"), ("Loc", "loc"), ("Avg", "avg"))),
            ("dlogPPL (median)", ("dlogppl_median", "dlogppl_median_ci_low", "dlogppl_median_ci_high"),
             fmt_dlogppl_ci, "num")]


# keys of editing rows that the tables do not show (raw dPPL and the mean dlogPPL are in the CSVs)
EDIT_HIDDEN = tuple(f"{k}{e}" for k in ("dppl", "dlogppl", "dlogppl_mean") for e in ("", "_ci_low", "_ci_high"))


def render_table(rows: list[dict], columns: list[Column], extra: bool = True, hide: Iterable[str] = ()) -> str:
    """An HTML table of summary rows; keys no column shows (and not in `hide`) are appended when `extra`."""
    if not rows:
        return '<p class="muted">No rows.</p>'
    columns = list(columns)
    if extra:
        used = {k for _, keys, _, _ in columns for k in keys} | set(hide)
        columns += _auto_columns(rows, used)
    head = "".join(f"<th>{h}</th>" for h, _, _, _ in columns)  # headers are trusted HTML (see _auto_columns)
    body = []
    for r in rows:
        cells = "".join(f'<td class="{cls}">{f(r)}</td>' if cls else f"<td>{f(r)}</td>" for _, _, f, cls in columns)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def kv_table(items: Iterable[tuple[str, str]], per_row: int = 1) -> str:
    """Key / value pairs, `per_row` pairs in a row (filled column by column); values are escaped HTML."""
    items = list(items)
    n_rows = max(1, math.ceil(len(items) / per_row))
    body = []
    for r in range(n_rows):
        cells = [items[c * n_rows + r] for c in range(per_row) if c * n_rows + r < len(items)]
        body.append("<tr>" + "".join(f'<td class="k">{esc(k)}</td><td>{v}</td>' for k, v in cells) + "</tr>")
    return f'<div class="tablewrap"><table class="kv"><tbody>{"".join(body)}</tbody></table></div>'


def group_cell(r: dict) -> str:
    g = str(r.get("group", DASH))
    return f'<span class="g-{esc(g)}">{esc(g)}</span>' if g in ("K_C", "K_I") else esc(g)


# --------------------------------------------------------------------------- figures


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


def _figures_html(paths: list[Path]) -> str:
    if not paths:
        return ""
    return '<div class="figs">' + "".join(_figure_html(p) for p in paths) + "</div>"


def assign_figures(figures_dir: Path) -> dict[str, list[Path]]:
    """PNG figures by section id (by file-name prefix); unmatched ones under "other"."""
    out: dict[str, list[Path]] = {sid: [] for sid, *_ in SECTIONS}
    out["other"] = []
    if not figures_dir.is_dir():
        return out
    for path in sorted(figures_dir.glob("*.png"), key=lambda p: p.name):
        if not path.is_file():
            continue
        sid = next((sid for sid, _, _, prefixes in SECTIONS if path.name.startswith(prefixes)), "other")
        out[sid].append(path)
    return out


# --------------------------------------------------------------------------- sections


def config_section(summary: dict, environment: dict) -> str:
    cfg = summary.get("config", {})
    parts = ['<h3>Study configuration</h3>',
             '<p class="muted">The settings that determine the stored results (summary.json <code>config</code>).</p>',
             kv_table(((k, _plain(cfg[k])) for k in sorted(cfg)), per_row=3)]
    facts = summary.get("facts", {})
    if facts:
        parts += ["<h3>Studied facts</h3>",
                  f'<p class="muted">Facts a model answers in at least {esc(cfg.get("min_known", DASH))} '
                  "paraphrases (top-1).</p>",
                  render_table([{"model": m, "facts": n} for m, n in facts.items()],
                               [text_col("model", "model"), num_col("facts known", "facts")])]
    env = dict(environment)
    versions = env.pop("versions", {}) or {}
    items: list[tuple[str, str]] = [("models", _plain(cfg.get("models", DASH))),
                                    ("seed", _plain(cfg.get("seed", DASH)))]
    if "device" in env:
        items.append(("device", _plain(env.pop("device"))))
    if "wall_s" in env:
        wall = env.pop("wall_s")
        items.append(("wall time", DASH if _is_missing(wall) else esc(fmt_seconds(wall))))
    if "peak_rss_mb" in env:
        rss = env.pop("peak_rss_mb")
        items.append(("peak RSS", DASH if _is_missing(rss) else esc(f"{float(rss):.0f} MB")))
    items += [(k, _plain(v)) for k, v in sorted(env.items())]
    items += [(f"{name} version", _plain(v)) for name, v in versions.items()]
    parts += ["<h3>Environment</h3>", kv_table(items, per_row=2)]
    return "\n".join(parts)


def consistency_section(summary: dict) -> str:
    cfg = summary.get("config", {})
    score = str(cfg.get("cs_score", "cs")).upper()
    parts = [f"<p>Consistency score {esc(score)} of each fact's knowledge-neuron sets across its neighbor queries; "
             f"facts below the threshold are inconsistent knowledge K_I. Static threshold "
             f"&tau; = {fmt_num(cfg.get('tau'), 2)}; Otsu's threshold is fitted per model and method. Welch's t-test "
             "compares the CS of K_C and K_I; the null baseline scores pseudo-facts whose queries come from other "
             "facts of the same relation (gap = CS mean &minus; null mean, permutation p). "
             f"Later experiments use the <b>{esc(cfg.get('split', DASH))}</b> split.</p>",
             "<h3>K_I fraction per model and method</h3>",
             render_table(summary["consistency"], [
                 text_col("model", "model"), text_col("method", "method"),
                 text_col("specificity filter", "specificity"), num_col("facts", "n_facts"),
                 text_col("threshold", "threshold_kind"), num_col("&tau;", "threshold"),
                 ci_col("K_I fraction [95% CI]", "k_i_fraction", "k_i_ci_low", "k_i_ci_high"),
                 p_col("Welch p", "welch_p"), num_col("CS mean", "cs_mean"), num_col("null mean", "null_mean"),
                 num_col("null gap", "null_gap", signed=True), p_col("null p", "null_p"),
                 num_col("null facts", "n_null"), text_col("score", "score")])]
    all_methods = summary.get("consistency_all_methods", [])
    parts += ["<h3>Facts in K_I under every method</h3>",
              render_table(all_methods, [text_col("model", "model"), text_col("threshold", "threshold_kind"),
                                         num_col("facts", "n_facts"),
                                         num_col("K_I under all methods", "k_i_fraction_all_methods", 2)])]
    relations = summary.get("consistency_relations", [])
    parts += ["<h3>K_I fraction per relation</h3>",
              render_table(relations, [text_col("model", "model"), text_col("method", "method"),
                                       text_col("relation", "relation"), text_col("threshold", "threshold_kind"),
                                       num_col("facts", "n"), ci_col("K_I fraction [95% CI]", "k_i_fraction",
                                                                     "ci_low", "ci_high")])]
    return "\n".join(parts)


def modification_section(summary: dict) -> str:
    metrics = [*edit_metric_cols(),
                num_col("&Delta;p self", "dprob_self", 2, signed=True),
                num_col("&Delta;p neighbors", "dprob_neighbors", 2, signed=True)]
    table = render_table(summary["modification"], [
        text_col("model", "model"), text_col("method", "method"), text_col("operation", "operation"),
        ("group", ("group",), group_cell, ""), text_col("neurons", "neurons"), text_col("rule", "update_rule"),
        num_col("n", "n"), *metrics],
        hide=[f"dprob_{k}_ci_{e}" for k in ("self", "neighbors") for e in ("low", "high")] + list(EDIT_HIDDEN))
    parts = ["<p>Each neighbor query q<sub>i</sub>'s knowledge neurons are erased or updated with the neuron set "
             "N_i (its own KNs), N_g (union over the neighbors) or N_cap (intersection); Rel is measured on "
             "q<sub>i</sub>, Gen on the other neighbor queries, Loc on other relations' facts, Avg is their mean, "
             "dlogPPL = log(PPL after / PPL before) on neutral text (median over facts; 0 = unchanged, "
             "+0.69 = doubled). Means over facts with 95% bootstrap CIs; raw dPPL is in tables/modification.csv."
             "</p>", table]
    counts = summary.get("modification_counts", [])
    if counts:
        parts += ["<h4>Facts with an empty N_cap</h4>",
                  render_table(counts, [text_col("model", "model"), text_col("method", "method"),
                                        num_col("facts", "n_facts"), num_col("N_cap empty", "n_cap_empty_facts")])]
    return "\n".join(parts)


def query_mapping_section(summary: dict) -> str:
    return "\n".join([
        "<p>Activations at q<sub>i</sub>'s last position are suppressed (&times;0) or enhanced (&times;2) on its own "
        "KNs, a neighbor query's KNs, their intersection, or a random control from the same layers; the value is the "
        "relative change of P(gold) on q<sub>i</sub> (mean over facts, 95% CI).</p>",
        render_table(summary["query_mapping"], [
            text_col("model", "model"), text_col("method", "method"), ("group", ("group",), group_cell, ""),
            text_col("intervention", "intervention"), text_col("neurons", "neurons"), num_col("n", "n"),
            ci_col("&Delta;P(gold) rel. [95% CI]", "dprob", "ci_low", "ci_high", digits=3, signed=True)],
        )])


def attention_section(summary: dict) -> str:
    rows = summary["attention"]
    keys = {k for r in rows for k in r}

    def ci(header: str, key: str) -> Column:
        if f"{key}_ci_low" in keys:
            return ci_col(header, key, digits=3, signed=True)
        if key == "dprob" and "ci_low" in keys and "dkn_activation_ci_low" not in keys:
            return ci_col(header, key, "ci_low", "ci_high", digits=3, signed=True)
        return num_col(header, key, signed=True)

    return "\n".join([
        "<p>Knowledge synapses (high-attention entries at the last prompt position) whose key position is the "
        "subject (related) or a matched random control (irrelevant) are scaled by &alpha;; measured are the change "
        "of the query's KN activations and of P(gold) (mean over facts, 95% CI).</p>",
        render_table(rows, [
            text_col("model", "model"), text_col("method", "method"), ("group", ("group",), group_cell, ""),
            text_col("synapses", "synapses"), num_col("&alpha;", "alpha", 2), num_col("n", "n"),
            ci("&Delta; KN activation", "dkn_activation"), ci("&Delta;P(gold)", "dprob")],
        )])


def cas_section(summary: dict) -> str:
    comparisons = summary.get("cas_comparison", [])
    parts = ["<p>Consistency-aware KN modification: CAS selects neurons that are strong and consistent across "
             "neighbor queries; it is compared with each query's own KNs (N_i) and the union (N_g). Protocols: "
             "transductive (CAS from all neighbor queries) and held-out (one paraphrase left out and used for Gen). "
             "Budgets: free, or matched (baselines cut to |CAS| neurons).</p>",
             "<h3>CAS vs. baselines</h3>",
             '<p class="muted">Paired-bootstrap difference of Avg; <span class="star">*</span> marks intervals '
             "that exclude 0.</p>",
             render_table(comparisons, [
                 text_col("model", "model"), text_col("method", "method"), text_col("operation", "operation"),
                 ("group", ("group",), group_cell, ""), text_col("protocol", "protocol"),
                 text_col("budget", "budget"), text_col("baseline", "baseline"), num_col("n", "n"),
                 ci_col("Avg(CAS) &minus; Avg(baseline) [95% CI]", "avg_diff", "ci_low", "ci_high", 3, True),
                 ("", ("beyond_ci",), lambda r: '<span class="star">*</span>' if r.get("beyond_ci") else "", "")],
             ),
             "<h3>Scores per selection</h3>",
             render_table(summary["cas"], [
                 text_col("model", "model"), text_col("method", "method"), text_col("operation", "operation"),
                 ("group", ("group",), group_cell, ""), text_col("selection", "selection"),
                 text_col("protocol", "protocol"), text_col("budget", "budget"), num_col("n", "n"),
                 num_col("|S|", "n_neurons", 1), *edit_metric_cols()], hide=EDIT_HIDDEN)]
    return "\n".join(parts)


def cas_sweep_section(summary: dict) -> str:
    return "\n".join([
        "<p>Avg of erase / update with the CAS selection over a grid of &beta;1, &beta;2 and t (transductive: CAS "
        "from all neighbor queries, each query edited in turn). Only &beta;2/&beta;1 and t change the selection. "
        "n: facts where the point selects at least one neuron; n_empty: facts where it selects none.</p>",
        render_table(summary["cas_sweep"], [
            text_col("model", "model"), text_col("method", "method"), text_col("operation", "operation"),
            ("group", ("group",), group_cell, ""), num_col("&beta;1", "beta1", 2), num_col("&beta;2", "beta2", 2),
            num_col("t", "t", 2), num_col("n", "n"), num_col("n_empty", "n_empty"), ci_col("|S|", "n_neurons", digits=1),
            *edit_metric_cols()], hide=EDIT_HIDDEN)])


def specificity_section(summary: dict) -> str:
    from knowloc.study.specificity import LISTED
    counts = summary.get("specificity_counts", [])
    cfg = summary.get("config", {})
    threshold = cfg.get("specificity")
    setting = "off (nothing removed)" if _is_missing(threshold) or float(threshold) >= 1 else f"F = {threshold:g}"
    return "\n".join([
        "<p>Each model's own next token after fact-free reference prompts is attributed with the study's method; "
        "a neuron's <b>reference frequency</b> is the share of those prompts whose KN set holds it, its "
        "<b>fact frequency</b> the share of the studied queries, and its <b>activation ratio</b> its |activation| "
        "over its layer's median (median over reference prompts). Neurons above the threshold fire as "
        f"\u201cknowledge neurons\u201d for anything and are removed from every neuron set ({esc(setting)}).</p>",
        render_table(counts, [text_col("model", "model"), text_col("method", "method"),
                              num_col("reference prompts", "n_reference"), num_col("threshold", "threshold", 2),
                              num_col("non-specific neurons", "n_non_specific"),
                              num_col("share of fact KN memberships removed", "n_fact_kn_mass_removed", 2)]),
        "<h3>Non-specific neurons and the most frequent fact KNs</h3>",
        f'<p class="muted">Sorted by reference frequency; at most {LISTED} rows per model and method '
        "(all of them in tables/specificity.csv).</p>",
        render_table(_first_per_key(summary["specificity"], ("model", "method"), LISTED), [
            text_col("model", "model"), text_col("method", "method"),
            ("neuron", ("layer", "index"), lambda r: esc(f"L{r.get('layer')}#{r.get('index')}"), ""),
            num_col("reference frequency", "ref_frequency", 2), num_col("fact frequency", "fact_frequency", 2),
            ("|a| / layer median", ("activation_ratio",), lambda r: fmt_sig(r.get("activation_ratio")), "num"),
            num_col("non-specific", "non_specific"),
            ("fact frequency by relation", ("fact_frequency_by_relation",),
             lambda r: esc(", ".join(f"{k} {v:.2f}" for k, v in (r.get("fact_frequency_by_relation") or {}).items()
                                     if v > 0)), "wrap")], extra=False)])


def _first_per_key(rows: list[dict], keys: tuple[str, ...], limit: int) -> list[dict]:
    seen: dict[tuple, int] = {}
    out = []
    for r in rows:
        key = tuple(r.get(k) for k in keys)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= limit:
            out.append(r)
    return out


def update_sweep_section(summary: dict) -> str:
    from knowloc.study.experiments.update_sweep import LOC_FLOOR, best_points

    rows = summary["update_sweep"]
    best = []
    for b in best_points(rows):
        r = b["best"] or {}
        best.append({"model": b["model"], "method": b["method"], "rule": b["rule"], **r,
                     "note": "" if b["best"] else f"no lambda2 keeps Loc >= {LOC_FLOOR}"})
    return "\n".join([
        "<p>Each fact's own KNs N_i are updated to another object with each update rule over a grid of "
        "&lambda;2 (dai: Dai et al.'s raw rule; signed: the same change times the sign of the neuron's activation; "
        "calibrated: sign-aware unit directions scaled by |v<sub>n</sub>|; docs/editing.md). Rel: the new object "
        "beats the old on the edited query; Loc: unrelated answers kept. Means over facts with 95% CIs.</p>",
        f"<h3>Best frontier point per rule (all facts; highest Rel with Loc &ge; {LOC_FLOOR})</h3>",
        render_table(best, [text_col("model", "model"), text_col("method", "method"), text_col("rule", "rule"),
                            num_col("&lambda;2", "lambda2", 2), num_col("n", "n"), *edit_metric_cols(),
                            text_col("", "note")], extra=False),
        "<h3>All points</h3>",
        render_table(rows, [text_col("model", "model"), text_col("method", "method"), text_col("rule", "rule"),
                            num_col("&lambda;2", "lambda2", 2), ("group", ("group",), group_cell, ""),
                            num_col("n", "n"), *edit_metric_cols()], hide=EDIT_HIDDEN)])


RENDERERS = {"specificity": specificity_section, "consistency": consistency_section, "modification": modification_section,
             "query-mapping": query_mapping_section, "attention": attention_section, "cas": cas_section,
             "cas-sweep": cas_sweep_section, "update-sweep": update_sweep_section}


# --------------------------------------------------------------------------- per-fact drill-down


def _study_config(cfg: dict):
    """The StudyConfig of a stored configuration, or None when it cannot be rebuilt."""
    from knowloc.study.config import StudyConfig

    try:
        known = {f.name for f in fields(StudyConfig)}
        if set(cfg) - known:
            return None
        return StudyConfig(**cfg)
    except (KnowlocError, TypeError, ValueError):
        return None


def _fallback_groups(cs: dict[str, float], cfg: dict) -> dict[str, str]:
    """K_C / K_I under `split` recomputed from the CS values (used only when StudyConfig cannot be rebuilt)."""
    from knowloc.analysis import otsu_threshold

    values = list(cs.values())
    if not values:
        return {}
    tau = otsu_threshold(values) if cfg.get("split") == "otsu" else float(cfg.get("tau", 0.3))
    return {fid: ("K_C" if v >= tau else "K_I") for fid, v in cs.items()}


def _kn_text(neurons: list) -> str:
    shown = ", ".join(f"L{l}#{i}" for l, i in neurons[:KN_SHOWN])
    more = f" &hellip; (+{len(neurons) - KN_SHOWN} more)" if len(neurons) > KN_SHOWN else ""
    return f'<span class="kn">{esc(shown) if shown else "(empty)"}{more}</span>'


def facts_section(out_dir: Path, summary: dict) -> str:
    from knowloc.analysis import consistency_scores
    from knowloc.study.context import StudyContext
    from knowloc.study.experiments.consistency import groups as study_groups
    from knowloc.study.facts import select_facts
    from knowloc.study.store import Store

    db = out_dir / "results.sqlite"
    if not db.is_file():
        return '<p class="notrun">No results store (results.sqlite) in this directory.</p>'
    cfg = summary.get("config", {})
    models = list(cfg.get("models", []))
    methods = list(cfg.get("methods", []))
    p = float(cfg.get("p", 0.5))
    score = str(cfg.get("cs_score", "cs2"))
    config = _study_config(cfg)
    store = Store(db)
    parts = [f"<p>Every studied fact: its paraphrases (q<sub>i</sub> numbers the answered ones, the neighbor queries "
             f"of the study), per method the KN set of each query (layer#neuron in attribution order, at most "
             f"{KN_SHOWN} shown), the consistency scores CS1, CS2, CS<sub>p</sub> (p = {fmt_num(p, 2)}) and the "
             f"group under the study's <b>{esc(cfg.get('split', DASH))}</b> split of {esc(score.upper())}"
             + ("" if config is not None else " (recomputed here: the stored configuration could not be rebuilt)")
             + ".</p>"]
    try:
        for model in models:
            probes = store.probe(model)
            facts = select_facts(probes, int(cfg.get("min_known", 2)), cfg.get("facts"), int(cfg.get("seed", 0)))
            probe_of = {row["fact_id"]: row for row in probes}
            ctx = None
            if config is not None:
                ctx = StudyContext(config=config, store=store, out=out_dir, echo=lambda _: None,
                                   facts={model: facts}, probes={model: probes})
            per_method = {}
            for method in methods:
                kn = store.kn_sets(model, method)
                cs = {}
                for fact in facts:
                    sets = [kn[fact.fact_id][q] for q in sorted(kn.get(fact.fact_id, {}))]
                    if len(sets) >= 2:
                        cs[fact.fact_id] = consistency_scores(sets, p=p)
                grp = (study_groups(ctx, model, method) if ctx is not None
                       else _fallback_groups({f: s[score] for f, s in cs.items()}, cfg))
                per_method[method] = (cs, grp)
            parts.append(f"<h3>{esc(model)} &mdash; {len(facts)} facts</h3>")
            if not facts:
                parts.append('<p class="muted">No fact is known in enough paraphrases.</p>')
            for fact in facts:
                parts.append(_fact_html(store, model, methods, fact, probe_of.get(fact.fact_id), per_method, score))
    finally:
        store.close()
    return "\n".join(parts)


def _fact_html(store, model: str, methods: list[str], fact, probe: dict | None, per_method: dict,
               score: str) -> str:
    badges = []
    for method in methods:
        cs, grp = per_method[method]
        g = grp.get(fact.fact_id)
        value = cs.get(fact.fact_id, {}).get(score)
        badges.append(f'{esc(method)}: <span class="g-{esc(g)}">{esc(g or DASH)}</span> '
                      f"({esc(score.upper())} {fmt_num(value, 2)})")
    head = (f"<summary><code>{esc(fact.fact_id)}</code> &nbsp;{esc(fact.subject)} &mdash; "
            f"<i>{esc(fact.relation)}</i> &rarr; {esc(fact.object)} &nbsp;<span class=\"muted\">"
            + " · ".join(badges) + "</span></summary>")
    rows = []
    answered = 0
    for query in (probe or {}).get("queries", []):
        if query.get("top1"):
            label = f"q{answered}"
            answered += 1
        else:
            label = DASH
        rows.append({"q": label, "prompt": query.get("text", ""), "answered": bool(query.get("top1")),
                     "prob": query.get("prob")})
    body = [f"<p><b>Subject</b> {esc(fact.subject)} &nbsp; <b>Relation</b> {esc(fact.relation)} &nbsp; "
            f"<b>Object</b> {esc(fact.object)}</p>",
            render_table(rows, [text_col("query", "q"), text_col("prompt", "prompt", wrap=True),
                                num_col("answered (top-1)", "answered"),
                                ("P(object)", ("prob",), lambda r: fmt_sig(r.get("prob")), "num")], extra=False)]
    for method in methods:
        cs, grp = per_method[method]
        kn = store.kn_lists(model, method, fact.fact_id)
        scores = cs.get(fact.fact_id)
        g = grp.get(fact.fact_id)
        if scores:
            line = (f"CS1 {fmt_num(scores['cs1'], 3)} · CS2 {fmt_num(scores['cs2'], 3)} · "
                    f"CS<sub>p</sub> {fmt_num(scores['csp'], 3)} · group "
                    f'<span class="g-{esc(g)}">{esc(g or DASH)}</span>')
        else:
            line = f"CS {DASH} (fewer than two attributed queries)"
        body.append(f"<h4>{esc(method)}</h4><p>{line}</p>")
        if not kn:
            body.append('<p class="muted">No attributions stored.</p>')
            continue
        kn_rows = [{"q": f"q{q}", "prompt": fact.prompts[q] if q < len(fact.prompts) else DASH,
                    "n": len(neurons), "neurons": neurons} for q, neurons in sorted(kn.items())]
        body.append(render_table(kn_rows, [text_col("query", "q"), text_col("prompt", "prompt", wrap=True),
                                           num_col("|KN|", "n"),
                                           ("knowledge neurons", ("neurons",), lambda r: _kn_text(r["neurons"]),
                                            "wrap")], extra=False))
    return f'<details class="fact">{head}\n' + "\n".join(body) + "</details>"


# --------------------------------------------------------------------------- the page


def _load_summary(out_dir: Path) -> dict:
    path = out_dir / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KnowlocError(f"{out_dir} holds no summary.json; run `knowloc study --out {out_dir}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KnowlocError(f"{path} is not valid JSON: {exc}") from None


def render_report(out_dir: Path, environment: dict | None = None) -> str:
    """The report's HTML text (see :func:`build_report`)."""
    out_dir = Path(out_dir)
    summary = _load_summary(out_dir)
    env = dict(environment) if environment else {}
    env.setdefault("versions", _versions())
    cfg = summary.get("config", {})
    figures = assign_figures(out_dir / "figures")
    models = ", ".join(map(str, cfg.get("models", []))) or DASH
    title = f"knowloc study report — {models}"

    toc = [("config", "Configuration &amp; environment")]
    toc += [(sid, esc(heading)) for sid, heading, *_ in SECTIONS]
    if figures["other"]:
        toc.append(("other-figures", "Other figures"))
    toc.append(("facts", "Per-fact drill-down"))

    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="muted">Data {esc(cfg.get("data", DASH))} · methods '
            f'{esc(", ".join(map(str, cfg.get("methods", []))) or DASH)} · {esc(cfg.get("steps", DASH))} '
            f'integration steps · KN threshold {esc(cfg.get("threshold", DASH))} &times; max · seed '
            f'{esc(cfg.get("seed", DASH))}</p>',
            '<nav class="toc"><b>Contents</b><ol>'
            + "".join(f'<li><a href="#{sid}">{label}</a></li>' for sid, label in toc) + "</ol></nav>",
            '<section id="config"><h2>Configuration &amp; environment</h2>', config_section(summary, env),
            "</section>"]
    for sid, heading, key, _ in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{esc(heading)}</h2>')
        if key in summary:
            body.append(RENDERERS[sid](summary))
        else:
            body.append(f'<p class="notrun">Experiment <code>{esc(sid)}</code> not run (no "{esc(key)}" '
                        "in summary.json).</p>")
            if figures[sid]:
                body.append('<p class="muted">Figures left in figures/ by an earlier run:</p>')
        body.append(_figures_html(figures[sid]))
        body.append("</section>")
    if figures["other"]:
        body += ['<section id="other-figures"><h2>Other figures</h2>', _figures_html(figures["other"]), "</section>"]
    body += ['<section id="facts"><h2>Per-fact drill-down</h2>', facts_section(out_dir, summary), "</section>"]

    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part)
            + f"\n<script>{PRINT_JS}</script>\n</body>\n</html>\n")


def build_report(out_dir: Path, environment: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` (atomically) from a study's stored results and outputs; return its path.

    `environment` (e.g. :func:`environment_info`'s dict: ``versions``, ``device``, ``wall_s``, ``peak_rss_mb``,
    any other key shown as is) is shown in the configuration section; package versions are collected when it
    has none. Raises :class:`KnowlocError` when ``summary.json`` is missing or unreadable or the file cannot be
    written.
    """
    out_dir = Path(out_dir)
    return atomic_write(out_dir / "report.html", render_report(out_dir, environment))
