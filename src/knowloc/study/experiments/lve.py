"""Experiment `localization-vs-editing` (Hase et al., NeurIPS 2023, "Does Localization Inform Editing?").

For a seeded subset of ``--lve-facts`` studied facts, the fact's first query (the one `tracing` traces) is edited
to the new object of `update-sweep` / `editors` by each of ``--lve-editors`` (rome and ft; the demo runs rome, the
editor of Hase et al.'s main results) at each layer of ``--lve-layers`` (a layer list,
:mod:`knowloc.study.layers`; default every third layer), each edit measured as the editors experiment measures it (Rel, Gen, Loc, Avg). Per (fact, layer)
two localization signals:

* ``tracing``: the MLP tracing IE at the fact's last subject token at that layer (experiment `tracing`, which this
  one requires: a study that chooses it runs tracing too);
* ``kn``: the share of the query's filtered KN attribution mass at that layer
  (:func:`knowloc.analysis.localization.layer_mass`).

Summaries (docs/tracing.md): ``localization_vs_editing``, Hase et al.'s regression of edit success (Avg) over
(fact, layer) pairs on the layer alone and on the layer plus the signal, R^2 of each and delta R^2 with a
bootstrap interval over facts; ``lve_correlations``, Spearman's rho of the signal and Avg across facts within
each layer, with its interval. The edits do not depend on the attribution method (they run once, in the unit of
the study's first method); the ``kn`` signal does, so its rows are per method, the ``tracing`` rows have none.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from knowloc.analysis import Estimate
from knowloc.analysis.localization import hase_delta_r2_ci, rank_correlation, resampled_interval
from knowloc.editing.editors import shared_store
from knowloc.editing.trials import measure_edit
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext
from knowloc.study.calibration import study_editor
from knowloc.study.experiments.common import (fact_traces, first_studied, kn_profile, mlp_profile,
                                              rows_once_per_fact, sample)
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.registry import Experiment, Finding
from knowloc.study.tables import Column, Table

NAME = "localization-vs-editing"
SIGNALS = ("tracing", "kn")
METRICS = ("rel", "gen", "loc", "avg")
SUCCESS = "avg"  # the edit success regressed on the layer and the signal
SMALL = 0.05  # Hase et al.: localization adds little beyond the layer (delta R^2 below this)


def lve_layers(cfg: StudyConfig, n_layers: int) -> list[int]:
    """The layers of ``--lve-layers`` for a model of ``n_layers`` layers, ascending ('every3': 0, 3, 6, ...;
    :meth:`knowloc.study.layers.LayerSpec.resolve`)."""
    return sorted(cfg.layers("lve_layers").resolve(n_layers))


def subset(ctx: StudyContext, model: str) -> set[str]:
    """The seeded subset of --lve-facts studied facts (the same for every method): the first of them in the
    study's seeded order, so a study grown with a larger --facts keeps the subset (and its stored edits)."""
    return set(first_studied(ctx, model, ctx.config.lve.facts))


def check_model(cfg: StudyConfig, lm) -> None:
    lve_layers(cfg, lm.n_layers)


def prepare(ctx: StudyContext, model: str) -> None:
    """rome's key statistics C of every --lve-layers layer, computed once and stored before the facts' units
    (when --lve-editors has rome)."""
    if "rome" not in ctx.config.lve.editors:
        return
    lm = ctx.model(model)
    layers = lve_layers(ctx.config, lm.n_layers)
    ctx.echo(f"{model}: rome key statistics C of layers {', '.join(map(str, layers))} for {NAME} (stored once)")
    shared_store().ensure(lm, layers, sample(ctx.config))


def works(ctx: StudyContext, model: str, method: str, fact_id: str) -> bool:
    """A subset fact is edited in its unit of the study's first method."""
    return method == ctx.config.methods[0] and fact_id in subset(ctx, model)


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Each --lve-editors editor at each --lve-layers layer on the fact's first query (subset facts, first method's
    unit)."""
    cfg = ctx.config
    session = ctx.edit_session(model, fact)
    lm = session.lm
    if session.target is None:
        return [{"skipped": True}]
    covariance = shared_store()
    rows = []
    q = 0
    for name in cfg.lve.editors:
        editor = study_editor(ctx, name, model, covariance)
        for layer in lve_layers(cfg, lm.n_layers):
            result, _, seconds = measure_edit(session.baseline, editor, q, session.request(q, layers=(layer,)),
                                              session.loc_gold)
            scores = result.as_row()
            rows.append({"editor": name, "layer": layer, "edited": q, "skipped": False,
                         **{m: scores[m] for m in METRICS}, "seconds": seconds})
    return rows


def tracing_signal(traces: list[dict], query: int = 0) -> np.ndarray | None:
    """The query's MLP IE per layer at its last subject token [n_layers] (None when it was not traced)."""
    return next((mlp_profile(t) for t in traces if t["query"] == query), None)


def regression_facts(edits: dict[str, list[dict]], signal: dict[str, np.ndarray | None], editor: str,
                     facts: Iterable[str], layers: set[int] | None = None) -> list[list[tuple[int, float, float]]]:
    """Hase et al.'s regression input, one list per fact of ``facts`` (in that order) that has a ``signal`` and an
    edit by ``editor``: its (layer, signal at the layer, success) rows, at ``layers`` (default every stored one)."""
    out = []
    for f in facts:
        if signal.get(f) is None:
            continue
        rows = [(r["layer"], float(signal[f][r["layer"]]), float(r[SUCCESS])) for r in edits[f]
                if r["editor"] == editor and (layers is None or r["layer"] in layers)]
        if rows:
            out.append(rows)
    return out


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    regressions, correlations = [], []
    for model in cfg.models:
        chosen = subset(ctx, model)  # a store may hold edits of facts an earlier --facts chose
        edits = {f: rows for f, rows in rows_once_per_fact(ctx, NAME, model, "editor").items() if f in chosen}
        traces = fact_traces(ctx, model)
        signals: list[tuple[str | None, str, dict[str, np.ndarray]]] = [
            (None, "tracing", {f: s for f in edits if (s := tracing_signal(traces.get(f, []))) is not None})]
        for method in cfg.methods:
            signals.append((method, "kn", {f: s for f in edits
                                           if (s := kn_profile(ctx, model, method, f, 0)) is not None}))
        for method, signal, by_fact in signals:
            for editor in cfg.lve.editors:
                facts = regression_facts(edits, by_fact, editor, edits)
                base = {"model": model, "method": method, "editor": editor, "signal": signal, "metric": SUCCESS}
                r2_layer, r2_both, delta, low, high = hase_delta_r2_ci(facts, n_boot=cfg.n_boot, seed=cfg.seed)
                e = Estimate(len(facts), delta, low, high)
                regressions.append({**base, "r2_layer": r2_layer, "r2_layer_signal": r2_both, "delta_r2": e.value,
                                    "delta_r2_low": e.low, "delta_r2_high": e.high, "n": e.n})
                for layer in sorted({row[0] for f in facts for row in f}):
                    pairs = [(s, y) for f in facts for (l, s, y) in f if l == layer]
                    correlations.append({**base, "layer": layer, **_rho(pairs, cfg)})
    return Section(summary={"localization_vs_editing": regressions, "lve_correlations": correlations})


def _rho(pairs: list[tuple[float, float]], cfg: StudyConfig) -> dict:
    """Spearman's rho of (signal, success) pairs across facts, with a bootstrap interval over facts."""
    arr = np.array(pairs, dtype=float).reshape(-1, 2)

    def stat(rows):
        return rank_correlation(arr[rows, 0], arr[rows, 1])
    value = stat(np.arange(len(arr))) if len(arr) > 1 else float("nan")
    low, high = resampled_interval(len(arr), stat, cfg.n_boot, cfg.seed) if not np.isnan(value) else (np.nan,) * 2
    e = Estimate(len(arr), value, low, high)
    return {"rho": e.value, "rho_low": e.low, "rho_high": e.high, "n": e.n}


# --------------------------------------------------------------------------------------------------------
# findings


def judge_informs(summary: dict):
    rows = [{**r, "diff": r["delta_r2"], "ci_low": r["delta_r2_low"], "ci_high": r["delta_r2_high"]}
            for r in summary.get("localization_vs_editing", [])]

    def describe(r, e):
        who = r["signal"] if r["method"] is None else f"{r['signal']} ({r['method']})"
        return (f"{r['model']}, {r['editor']}, {who}: R^2 of {SUCCESS} from the layer {num(r['r2_layer'])}, layer + "
                f"signal {num(r['r2_layer_signal'])}; delta R^2 {num(e.value)} {interval(e)} ({r['n']} facts).")
    return judge_rows(rows, {}, describe, support_below=SMALL, contradict_above=SMALL,
                      label=lambda r: f"{r['model']} {r['editor']} {r['signal']}")


FINDINGS = (
    Finding("localization-informs-editing", "Does localization tell which layer edits a fact best?",
            "it does not (Hase et al. 2023: tracing adds little beyond the layer, delta R^2 < 0.05)",
            f"delta R^2 of edit success (Avg) from the layer to the layer plus the signal, bootstrap over facts: "
            f"supports when its interval lies below {SMALL}; contradicts when above {SMALL}", judge_informs),
)


EXPERIMENT = Experiment(
    name=NAME, question="does localization (tracing or KNs) tell which layer edits a fact best? (Hase et al.)",
    heading="Localization vs editing", summarize=summarize, fact_work=fact_work, check_model=check_model,
    prepare=prepare, requires=("tracing",), works=works, per_query=False,
    summary_keys=("localization_vs_editing", "lve_correlations"),
    intro="Hase et al. (2023): a seeded subset of facts is edited by rome and ft (--lve-editors) at every layer of "
          "--lve-layers. If localization told where to edit, edit success (Avg) would follow the localization "
          "signal at a layer, beyond what the layer alone explains. R^2 of success from the layer alone and from the "
          "layer plus the signal (the MLP tracing IE at the last subject token, or the share of the KN attribution "
          "mass), delta R^2 with a bootstrap interval over facts; beside it the signal's rank correlation with "
          "success within each layer. docs/tracing.md.",
    tables=(
        Table("localization_vs_editing", title="Does the signal explain edit success beyond the layer? (Avg)",
              columns=(
                  Column("model", "model"), Column("editor", "editor"), Column("signal", "signal"),
                  Column("method", "method"), Column("facts", "n", "int"),
                  Column("R^2 layer", "r2_layer", "num", 3), Column("R^2 layer + signal", "r2_layer_signal", "num", 3),
                  Column("delta R^2 [95% CI]", "delta_r2", "ci", 3, lo="delta_r2_low", hi="delta_r2_high"))),
        Table("lve_correlations", title="Signal vs edit success across facts, within a layer (Spearman)", columns=(
            Column("model", "model"), Column("editor", "editor"), Column("signal", "signal"),
            Column("method", "method"), Column("layer", "layer"), Column("facts", "n", "int"),
            Column("rho [95% CI]", "rho", "ci", 2, True, lo="rho_low", hi="rho_high")))),
    findings=FINDINGS)

__all__ = ["EXPERIMENT", "lve_layers", "regression_facts", "subset"]
