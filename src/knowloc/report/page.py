"""The report page: reads a study directory and assembles the sections in order.

:func:`build_report` reads what a study wrote (``summary.json``, ``figures/*.png`` and the results store
``results.sqlite``) and writes ``report.html`` beside them. Nothing is recomputed and no model is loaded: the
sections and tables are the registered experiments' own specs (:mod:`knowloc.study.registry`) over the study's
summary rows, the figures are the study's PNGs (embedded as base64 data URIs, :mod:`knowloc.report.figures`),
and the per-fact drill-down reads the stored probes, the groups and the KN lists the experiments used
(:mod:`knowloc.report.drilldown`).

The page needs nothing but a browser: no CDN, no external CSS or JavaScript, no network access; its style
sheet and print helper are the files in ``assets/``, inlined. It is deterministic (the same inputs give the
same bytes; no timestamps unless the caller passes them in the ``environment`` dict) and printable. Every piece
of text that comes from data files or the configuration (subjects, objects, prompts, relation names, model
names, ...) is HTML-escaped.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from knowloc.fileio import atomic_write
from knowloc.models.loading import EMBEDDED
from knowloc.report.config import config_section, versions
from knowloc.report.drilldown import facts_section, figure_neurons_section
from knowloc.report.figures import assign_figures, figures_html
from knowloc.report.findings import findings_section
from knowloc.report.tables import esc, spec_table
from knowloc.study.findings import scope_note
from knowloc.study.reader import StudyReader
from knowloc.study.registry import Experiment
from knowloc.study.registry import experiments as registered
from knowloc.study.tables import DASH


@cache
def asset(name: str) -> str:
    """The text of ``assets/<name>`` (shipped as package data), without surrounding blank space."""
    return (resources.files("knowloc.report") / "assets" / name).read_text(encoding="utf-8").strip()


def experiment_section(experiment: Experiment, summary: dict) -> str:
    """An experiment's section body from its spec: intro, tables, notes."""
    parts = [f"<p>{esc(experiment.intro)}</p>"] if experiment.intro else []
    parts += [spec_table(table, summary) for table in experiment.tables]
    if experiment.notes is not None:
        parts += [f"<p>{esc(line)}</p>" for line in experiment.notes(summary)]
    return "\n".join(parts)


def render_report(out_dir: Path, environment: dict | None = None) -> str:
    """The report's HTML text (see :func:`build_report`)."""
    with StudyReader(Path(out_dir)) as study:  # the one read-only way in: summary.json, its config, the store
        return _render(study, environment)


def _render(study: StudyReader, environment: dict | None) -> str:
    out_dir = study.directory
    summary = study.summary()
    config = study.config()
    env = dict(environment) if environment else {}
    env.setdefault("versions", versions())
    experiments = list(registered())
    figures = assign_figures(out_dir / "figures", summary, experiments)
    title = f"knowloc study report — {', '.join(config.models) or DASH}"

    toc = [("findings", "Findings")]
    toc += [(e.name, esc(e.heading)) for e in experiments]
    if figures["other"]:
        toc.append(("other-figures", "Other figures"))
    neuron_table = figure_neurons_section(study, summary)
    if neuron_table:
        toc.append(("figure-neurons", "Neurons in the heatmaps"))
    toc += [("facts", "Per-fact drill-down"), ("config", "Configuration &amp; environment")]

    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="muted">Data {esc(config.data)} · methods {esc(", ".join(config.methods) or DASH)} · '
            f"{esc(config.steps)} integration steps · KN threshold {esc(config.threshold)} &times; max · seed "
            f"{esc(config.seed)}</p>",
            *(f'<p class="muted">Model {esc(m)}: {esc(EMBEDDED[m])}</p>' for m in config.models if m in EMBEDDED),
            '<nav class="toc"><b>Contents</b><ol>'
            + "".join(f'<li><a href="#{sid}">{label}</a></li>' for sid, label in toc) + "</ol></nav>",
            '<section id="findings"><h2>Findings</h2>', _scope_html(config), figures_html(figures["findings"]),
            findings_section(summary),
            *(['<h3>Robustness: specification curves</h3><p class="muted">Each finding re-derived at every point of '
               "the analysis grid (knowloc robustness; the ringed points are the study's own settings), sorted by "
               "effect; below, the settings of each point.</p>", figures_html(figures["robustness"])]
              if figures["robustness"] else []),
            "</section>"]
    for experiment in experiments:
        sid = experiment.name
        body.append(f'<section id="{esc(sid)}"><h2>{esc(experiment.heading)}</h2>')
        if experiment.ran(summary):
            body.append(experiment_section(experiment, summary))
        else:
            body.append(f'<p class="notrun">This study did not run the <code>{esc(sid)}</code> experiment '
                        f"({esc(experiment.question)}). Add it with <code>knowloc study --experiments {esc(sid)} "
                        f"--out DIR</code> and the study's other settings: everything already stored is reused.</p>")
            if figures[sid]:
                body.append('<p class="muted">Figures left in figures/ by an earlier run:</p>')
        body.append(figures_html(figures[sid], config.models))  # per model side by side for 2+ models
        body.append("</section>")
    if figures["other"]:
        body += ['<section id="other-figures"><h2>Other figures</h2>', figures_html(figures["other"]), "</section>"]
    if neuron_table:
        body += ['<section id="figure-neurons"><h2>Neurons in the heatmaps</h2>', neuron_table, "</section>"]
    body += ['<section id="facts"><h2>Per-fact drill-down</h2>', facts_section(study, config), "</section>",
             '<section id="config"><h2>Configuration &amp; environment</h2>', config_section(summary, config, env),
             "</section>"]

    # the side-by-side styles only where there are models side by side: a single-model report is unchanged
    style = asset("report.css") + ("\n" + asset("models.css") if len(config.models) >= 2 else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>\n{style}\n</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part)
            + f"\n<script>{asset('print.js')}</script>\n</body>\n</html>\n")


def _scope_html(config) -> str:
    """What the study left out and the command that runs everything (:func:`knowloc.study.findings.scope_note`)."""
    scope = scope_note(config.models, config.data, config.methods, config.experiments)
    return "" if scope is None else f'<p class="muted">{esc(scope[0])} <code>{esc(scope[1])}</code></p>'


def build_report(out_dir: Path, environment: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` (atomically) from a study's stored results and outputs; return its path.

    `environment` (e.g. :func:`~knowloc.report.config.environment_info`'s dict: ``versions``, ``device``,
    ``wall_s``, ``peak_rss_mb``, any other key shown as is) is shown in the configuration section; package
    versions are collected when it has none. Raises :class:`KnowlocError` when ``summary.json`` is missing or
    unreadable, its stored configuration is invalid, or the file cannot be written.
    """
    out_dir = Path(out_dir)
    return atomic_write(out_dir / "report.html", render_report(out_dir, environment))
