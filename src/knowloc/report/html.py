"""A self-contained HTML report of a `knowloc study` output directory.

:func:`build_report` reads what a study wrote (``summary.json``, ``figures/*.png`` and the results store
``results.sqlite``) and writes ``report.html`` beside them. Nothing is recomputed and no model is loaded:
the sections and tables are the registered experiments' own specs (:mod:`knowloc.study.registry`) over the
study's summary rows, the figures are the study's PNGs (embedded as base64 data URIs), and the per-fact
drill-down reads the stored probes, the groups and the KN lists the experiments used (the study stores them,
:func:`knowloc.study.groups.save_groups`).

The page needs nothing but a browser: no CDN, no external CSS or JavaScript, no network access. It is
deterministic (the same inputs give the same bytes; no timestamps unless the caller passes them in the
``environment`` dict) and printable. Every piece of text that comes from data files or the configuration
(subjects, objects, prompts, relation names, model names, ...) is HTML-escaped.

A store written before knowloc stored groups has none: the drill-down then recomputes CS from the stored KN
sets and applies the static tau or Otsu threshold (whichever ``split`` says) itself, and says so.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import math
import platform
from pathlib import Path
from typing import Any, Iterable

from knowloc.analysis import MIN_N, consistency_scores, otsu_threshold
from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.loading import EMBEDDED
from knowloc.study.experiments import REGISTRY
from knowloc.study.facts import select_facts
from knowloc.study.findings import findings
from knowloc.study.registry import Experiment
from knowloc.study.store import Store
from knowloc.study.tables import DASH, Column, Table, cell_parts, fmt_num, missing

__all__ = ["build_report", "environment_info"]

PACKAGES = ("knowloc", "torch", "transformers", "numpy")
KN_SHOWN = 30  # neurons listed per query in the drill-down
FIGURE_SCALE = 2 / 3  # figures are shown at this share of their pixel width (capped at the page width)

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
.tablewrap{overflow-x:auto;margin:8px 0 14px;max-width:100%}
table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums;max-width:100%}
th,td{border:1px solid var(--line);padding:2px 5px;text-align:left;vertical-align:top;white-space:normal}
td.wrap{overflow-wrap:anywhere}
td.num{white-space:nowrap}
td.num .ci{display:block}
td.wrap{min-width:12em}
.ci{color:var(--muted);font-size:11px}
th{background:var(--head);font-weight:600}
td.num{text-align:right}
tbody tr:nth-child(even){background:#fafbfc}
table.kv td.k{font-weight:600;white-space:nowrap;background:#f6f7f9}
.star{color:var(--accent);font-weight:700}
ol.findings li{margin:8px 0}
.verdict{font-weight:700;padding:0 4px;border-radius:3px}
.v-yes{color:#fff;background:var(--kc)}
.v-no{color:#fff;background:var(--ki)}
.v-open{color:var(--fg);background:#e6e8ec}
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
    if missing(value):
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return esc(", ".join(map(str, value))) if value else "(none)"
    if isinstance(value, dict):
        return esc(json.dumps(value, sort_keys=True))
    return esc(value)


# --------------------------------------------------------------------------- tables


def cell_html(column: Column, row: dict) -> str:
    """One cell of a spec column (:mod:`knowloc.study.tables`) as escaped HTML."""
    if column.kind == "group":
        g = column.raw(row)
        return f'<span class="g-{esc(g)}">{esc(g)}</span>' if g in ("K_C", "K_I") else esc(DASH if missing(g) else g)
    main, interval = cell_parts(column, row)
    if column.kind == "star":
        return '<span class="star">*</span>' if main else ""
    return esc(main) + (f' <span class="ci">{esc(interval)}</span>' if interval else "")


def _cell_class(column: Column) -> str:
    if column.wrap:
        return "wrap"
    return "num" if column.kind in ("num", "int", "ci", "p", "sig", "dlogppl", "yesno") else ""


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


def assign_figures(figures_dir: Path, experiments: list[Experiment]) -> dict[str, list[Path]]:
    """PNG figures by experiment (by the file-name prefixes of its spec); unmatched ones under "other"."""
    out: dict[str, list[Path]] = {e.name: [] for e in experiments}
    out["other"] = []
    if not figures_dir.is_dir():
        return out
    for path in sorted(figures_dir.glob("*.png"), key=lambda p: p.name):
        if not path.is_file():
            continue
        sid = next((e.name for e in experiments if e.figures and path.name.startswith(e.figures)), "other")
        out[sid].append(path)
    return out


# --------------------------------------------------------------------------- sections


VERDICT_CLASS = {"supports": "v-yes", "contradicts": "v-no"}


def findings_section(summary: dict) -> str:
    """The study's findings (summary.json `findings`; computed here for a summary written before them)."""
    items = summary.get("findings")
    if items is None:
        items = findings(summary)
    parts = [f'<p class="muted">Each question of the paper, answered from this study (95% bootstrap intervals over '
             f"facts; none below {MIN_N} facts). The verdict is about the paper's claim.</p>", "<ol class=\"findings\">"]
    for f in items:
        why = (f' <span class="muted">({esc(f["reason"])})</span>'
               if f["reason"] and f["verdict"] not in VERDICT_CLASS else "")
        parts.append(f'<li><b>{esc(f["question"])}</b> <span class="muted">Paper: {esc(f["claim"])}.</span> '
                     f'Verdict: <span class="verdict {VERDICT_CLASS.get(f["verdict"], "v-open")}">'
                     f'{esc(f["verdict"])}</span>{why}<br>{esc(f["text"])}</li>')
    return "\n".join(parts + ["</ol>"])


def experiment_section(experiment: Experiment, summary: dict) -> str:
    """An experiment's section body from its spec: intro, tables, notes."""
    parts = [f"<p>{esc(experiment.intro)}</p>"] if experiment.intro else []
    parts += [spec_table(table, summary) for table in experiment.tables]
    if experiment.notes is not None:
        parts += [f"<p>{esc(line)}</p>" for line in experiment.notes(summary)]
    return "\n".join(parts)


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
                               [Column("model", "model"), Column("facts known", "facts", "int")])]
    env = dict(environment)
    versions = env.pop("versions", {}) or {}
    items: list[tuple[str, str]] = [("models", _plain(cfg.get("models", DASH))),
                                    ("seed", _plain(cfg.get("seed", DASH)))]
    if "device" in env:
        items.append(("device", _plain(env.pop("device"))))
    if "wall_s" in env:
        wall = env.pop("wall_s")
        items.append(("wall time", DASH if missing(wall) else esc(fmt_seconds(wall))))
    if "peak_rss_mb" in env:
        rss = env.pop("peak_rss_mb")
        items.append(("peak RSS", DASH if missing(rss) else esc(f"{float(rss):.0f} MB")))
    items += [(k, _plain(v)) for k, v in sorted(env.items())]
    items += [(f"{name} version", _plain(v)) for name, v in versions.items()]
    parts += ["<h3>Environment</h3>", kv_table(items, per_row=2)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- per-fact drill-down


def _kn_table(rows: list[dict], descriptions: dict) -> str:
    """The drill-down's KN lists: like :func:`render_table`, with the neuron list truncated to KN_SHOWN."""
    head = "".join(f"<th>{h}</th>" for h in ("query", "prompt", "|KN|", "knowledge neurons"))
    body = "".join(f'<tr><td>{esc(r["q"])}</td><td class="wrap">{esc(r["prompt"])}</td><td class="num">{r["n"]}'
                   f'</td><td class="wrap">{_kn_text(r["neurons"], descriptions)}</td></tr>' for r in rows)
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _describe(description: dict | None, k: int = 5) -> str:
    if not description:
        return ""
    return ("promotes " + ", ".join(repr(t) for t, _ in description["promoted"][:k]) + "; suppresses "
            + ", ".join(repr(t) for t, _ in description["suppressed"][:k]))


def _kn_text(neurons: list, descriptions: dict | None = None) -> str:
    """A KN list, each neuron with what its value vector writes as a hover title (when the study stored it)."""
    descriptions = descriptions or {}
    spans = []
    for l, i in neurons[:KN_SHOWN]:
        title = _describe(descriptions.get((l, i)))
        spans.append(f'<span title="{esc(title)}">L{l}#{i}</span>' if title else f"L{l}#{i}")
    more = f" &hellip; (+{len(neurons) - KN_SHOWN} more)" if len(neurons) > KN_SHOWN else ""
    return f'<span class="kn">{", ".join(spans) if spans else "(empty)"}{more}</span>'


def figure_neurons_section(out_dir: Path, summary: dict) -> str:
    """The neurons drawn in the heatmaps, with the tokens their value vectors promote and suppress."""
    db = out_dir / "results.sqlite"
    if not db.is_file():
        return ""
    store = Store(db)
    rows = []
    try:
        described: dict[str, dict] = {}
        for r in summary.get("kn_heatmap_neurons", []):
            described.setdefault(r["model"], store.neuron_descriptions(r["model"]))
            rows.append({"figure": f"kn_heatmap_{r['group']}", "fact": r["fact_id"], **r})
        for key, examples in store.trials("attention-heatmap").items():
            described.setdefault(key, store.neuron_descriptions(key))
            for ex in examples:
                rows += [{"figure": f"attention_heatmap_{ex['group']}", "fact": ex["subject"], "model": key,
                          "layer": l, "index": i} for l, i in ex["neurons"]]
    finally:
        store.close()
    if not rows:
        return ""
    for r in rows:
        d = described.get(r["model"], {}).get((r["layer"], r["index"]))
        r["promoted"] = ", ".join(repr(t) for t, _ in d["promoted"][:6]) if d else DASH
        r["suppressed"] = ", ".join(repr(t) for t, _ in d["suppressed"][:6]) if d else DASH
    return ('<p class="muted">What each neuron of the heatmaps writes to the vocabulary: the tokens its value '
            "vector promotes and suppresses through the final norm and the unembedding (`knowloc neuron` prints "
            "more).</p>" + render_table(rows, [
                Column("figure", "figure"), Column("fact", "fact"),
                Column("neuron", "layer", value=lambda r: f"L{r['layer']}#{r['index']}"),
                Column("promotes", "promoted", wrap=True), Column("suppresses", "suppressed", wrap=True)]))


def _fallback_groups(cs: dict[str, float], cfg: dict) -> dict[str, str]:
    """K_C / K_I under `split` recomputed from the CS values (only for a store that predates stored groups)."""
    values = list(cs.values())
    if not values:
        return {}
    tau = otsu_threshold(values) if cfg.get("split") == "otsu" else float(cfg.get("tau", 0.3))
    return {fid: ("K_C" if v >= tau else "K_I") for fid, v in cs.items()}


def _method_view(store: Store, model: str, method: str, facts: list, cfg: dict, score: str) -> tuple[dict, bool]:
    """{fact_id: {cs1, cs2, csp, group, kn}} as stored by the study; recomputed (unfiltered sets, True) for a
    store that predates stored groups."""
    stored = store.groups(model, method)
    if stored:
        return stored, False
    kn = store.kn_lists_all(model, method)
    out = {}
    for fact in facts:
        lists = kn.get(fact.fact_id, {})
        row: dict = {"kn": lists}
        if len(lists) >= 2:
            row.update(consistency_scores([set(lists[q]) for q in sorted(lists)], p=float(cfg.get("p", 0.5))))
        out[fact.fact_id] = row
    split = _fallback_groups({f: r[score] for f, r in out.items() if score in r}, cfg)
    for fid, row in out.items():
        row["group"] = split.get(fid)
    return out, True


def facts_section(out_dir: Path, summary: dict) -> str:
    db = out_dir / "results.sqlite"
    if not db.is_file():
        return '<p class="notrun">No results store (results.sqlite) in this directory.</p>'
    cfg = summary.get("config", {})
    models = list(cfg.get("models", []))
    methods = list(cfg.get("methods", []))
    p = float(cfg.get("p", 0.5))
    score = str(cfg.get("cs_score", "cs2"))
    store = Store(db)
    recomputed = False
    parts = []
    try:
        for model in models:
            probes = store.probe(model)
            facts = select_facts(probes, int(cfg.get("min_known", 2)), cfg.get("facts"), int(cfg.get("seed", 0)))
            probe_of = {row["fact_id"]: row for row in probes}
            descriptions = store.neuron_descriptions(model)
            per_method = {}
            for method in methods:
                per_method[method], again = _method_view(store, model, method, facts, cfg, score)
                recomputed |= again
            parts.append(f"<h3>{esc(model)} &mdash; {len(facts)} facts</h3>")
            if not facts:
                parts.append('<p class="muted">No fact is known in enough paraphrases.</p>')
            for fact in facts:
                parts.append(_fact_html(model, methods, fact, probe_of.get(fact.fact_id), per_method, score,
                                        descriptions))
    finally:
        store.close()
    intro = (f"<p>Every studied fact: its paraphrases (q<sub>i</sub> numbers the answered ones, the neighbor "
             f"queries of the study), per method the KN set of each query that the experiments used (layer#neuron "
             f"in attribution order, non-specific neurons removed, at most {KN_SHOWN} shown), the consistency "
             f"scores CS1, CS2, CS<sub>p</sub> (p = {fmt_num(p, 2)}) and the group under the study's "
             f"<b>{esc(cfg.get('split', DASH))}</b> split of {esc(score.upper())}"
             + (" (recomputed here from the unfiltered KN sets: this store predates stored groups)" if recomputed
                else "") + ".</p>")
    return "\n".join([intro] + parts)


def _fact_html(model: str, methods: list[str], fact, probe: dict | None, per_method: dict, score: str,
               descriptions: dict) -> str:
    badges = []
    for method in methods:
        view = per_method[method].get(fact.fact_id, {})
        g = view.get("group")
        value = view.get(score)
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
        top = ", ".join(f"{t!r} {pr:.2f}" for t, pr in query.get("predictions") or [])
        rows.append({"q": label, "prompt": query.get("text", ""), "answered": bool(query.get("top1")),
                     "gold": repr(query["gold_token"]) if query.get("gold_token") else DASH, "prob": query.get("prob"),
                     "top": top or DASH})
    body = [f"<p><b>Subject</b> {esc(fact.subject)} &nbsp; <b>Relation</b> {esc(fact.relation)} &nbsp; "
            f"<b>Object</b> {esc(fact.object)}</p>",
            render_table(rows, [Column("query", "q"), Column("prompt", "prompt", wrap=True),
                                Column("answered (top-1)", "answered", "yesno"), Column("scored token", "gold"),
                                Column("P(token)", "prob", "sig"), Column("model's top-3", "top", wrap=True)])]
    for method in methods:
        view = per_method[method].get(fact.fact_id, {})
        kn = view.get("kn", {})
        g = view.get("group")
        if not missing(view.get("cs1")):
            line = (f"CS1 {fmt_num(view['cs1'], 3)} · CS2 {fmt_num(view['cs2'], 3)} · "
                    f"CS<sub>p</sub> {fmt_num(view['csp'], 3)} · group "
                    f'<span class="g-{esc(g)}">{esc(g or DASH)}</span>')
        else:
            line = f"CS {DASH} (fewer than two attributed queries)"
        body.append(f"<h4>{esc(method)}</h4><p>{line}</p>")
        if not kn:
            body.append('<p class="muted">No attributions stored.</p>')
            continue
        kn_rows = [{"q": f"q{q}", "prompt": fact.prompts[q] if q < len(fact.prompts) else DASH,
                    "n": len(neurons), "neurons": neurons} for q, neurons in sorted(kn.items())]
        body.append(_kn_table(kn_rows, descriptions))
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
    experiments = list(REGISTRY.values())
    figures = assign_figures(out_dir / "figures", experiments)
    models = ", ".join(map(str, cfg.get("models", []))) or DASH
    title = f"knowloc study report — {models}"

    toc = [("findings", "Findings")]
    toc += [(e.name, esc(e.heading)) for e in experiments]
    if figures["other"]:
        toc.append(("other-figures", "Other figures"))
    neuron_table = figure_neurons_section(out_dir, summary)
    if neuron_table:
        toc.append(("figure-neurons", "Neurons in the heatmaps"))
    toc += [("facts", "Per-fact drill-down"), ("config", "Configuration &amp; environment")]

    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="muted">Data {esc(cfg.get("data", DASH))} · methods '
            f'{esc(", ".join(map(str, cfg.get("methods", []))) or DASH)} · {esc(cfg.get("steps", DASH))} '
            f'integration steps · KN threshold {esc(cfg.get("threshold", DASH))} &times; max · seed '
            f'{esc(cfg.get("seed", DASH))}</p>',
            *(f'<p class="muted">Model {esc(m)}: {esc(EMBEDDED[m])}</p>' for m in cfg.get("models", [])
              if m in EMBEDDED),
            '<nav class="toc"><b>Contents</b><ol>'
            + "".join(f'<li><a href="#{sid}">{label}</a></li>' for sid, label in toc) + "</ol></nav>",
            '<section id="findings"><h2>Findings</h2>', findings_section(summary), "</section>"]
    for experiment in experiments:
        sid = experiment.name
        body.append(f'<section id="{esc(sid)}"><h2>{esc(experiment.heading)}</h2>')
        if experiment.summary_keys[0] in summary:
            body.append(experiment_section(experiment, summary))
        else:
            body.append(f'<p class="notrun">This study did not run the <code>{esc(sid)}</code> experiment '
                        f"({esc(experiment.question)}). Add it with <code>knowloc study --experiments {esc(sid)} "
                        f"--out DIR</code> and the study's other settings: everything already stored is reused.</p>")
            if figures[sid]:
                body.append('<p class="muted">Figures left in figures/ by an earlier run:</p>')
        body.append(_figures_html(figures[sid]))
        body.append("</section>")
    if figures["other"]:
        body += ['<section id="other-figures"><h2>Other figures</h2>', _figures_html(figures["other"]), "</section>"]
    if neuron_table:
        body += ['<section id="figure-neurons"><h2>Neurons in the heatmaps</h2>', neuron_table, "</section>"]
    body += ['<section id="facts"><h2>Per-fact drill-down</h2>', facts_section(out_dir, summary), "</section>",
             '<section id="config"><h2>Configuration &amp; environment</h2>', config_section(summary, env),
             "</section>"]

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
