"""Per-model settings of the learned editors, calibrated once per study (docs/editing.md, "Bounds per model").

``ft``'s and ``kn-ft``'s L-infinity bound is an absolute weight change, so a bound chosen on one model is a
different edit on another (FT+L's 1e-2, chosen on SmolLM2, left Gemma-3-270M's locality at 0.05-0.20). With
``--ft-bound auto`` (the default) a study chooses it per model by :func:`knowloc.editing.trials.calibrate`: the
smallest bound of :data:`~knowloc.editing.editors.finetune.BOUNDS` at which ``ft`` at the study's first edit layer
reaches Rel >= 0.9 on ``--ft-calibration`` seeded reference queries of the specificity profile (fact-free of the
study: never its facts), each updated to another answer of its relation. It runs in the driver once per model
before the facts' units and is stored with the study (summary ``calibration``: rows ``model, editor, setting,
value, rel, chosen, reached``); ``kn-ft`` uses ``ft``'s bound. ROME, MEMIT and AlphaEdit need no such step: their
targets are fit per request and their updates scaled by each model's own key statistics C (and MEMIT's lambda by
its MLP width).
"""

from __future__ import annotations

import random

from knowloc.data.texts import load_specificity_queries
from knowloc.editing import EditRequest, calibrate, choose_new_object
from knowloc.editing.editors import CovarianceStore, Editor
from knowloc.editing.editors.finetune import BOUNDS, TARGET_REL
from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.editor_registry import make_editor

NAME = "calibration"
USERS = ("editors", "mass-editing")  # the experiments that run --editors (localization-vs-editing runs ft always)


def needed(cfg: StudyConfig) -> bool:
    """Whether the study runs ``ft`` or ``kn-ft`` with a calibrated bound."""
    runs_ft = ("localization-vs-editing" in cfg.experiments
               or ({"ft", "kn-ft"} & set(cfg.editors) and set(USERS) & set(cfg.experiments)))
    return cfg.ft.calibrated and bool(runs_ft)


def calibration_requests(lm: LanguageModel, cfg: StudyConfig, layer: int) -> list[EditRequest]:
    """``--ft-calibration`` seeded reference queries (the same for every model), each an update at ``layer`` of its answer to another answer
    of its relation whose first token differs (queries without one are passed over)."""
    queries = load_specificity_queries()
    answers: dict[str, list[str]] = {}
    for q in queries:
        answers.setdefault(q["relation"], []).append(q["answer"])
    order = list(range(len(queries)))
    random.Random(cfg.seed_for(NAME)).shuffle(order)
    out = []
    for k in order:
        q = queries[k]
        new = choose_new_object(lm, q["answer"], answers[q["relation"]], cfg.seed_for(NAME, k))
        if new is not None:
            out.append(EditRequest(q["prompt"], "", q["answer"], new, layers=(layer,)))
        if len(out) == cfg.ft.calibration:
            break
    return out


def calibrate_model(ctx: StudyContext, model: str) -> None:
    """The model's ``ft`` bound, calibrated and stored unless it is (driver side)."""
    cfg = ctx.config
    if not needed(cfg) or model in ctx.store.done_trials(NAME):
        return
    lm = ctx.model(model)
    layer = cfg.layers("edit_layer").resolve(lm.n_layers)[0]
    requests = calibration_requests(lm, cfg, layer)
    ctx.echo(f"{model}: calibrating ft's bound on {len(requests)} reference queries at layer {layer} "
             f"(the smallest of {', '.join(map(str, BOUNDS))} with Rel >= {TARGET_REL})")
    result = calibrate(lm, requests, lambda b: cfg.ft.editor(bound=b), BOUNDS, TARGET_REL)
    ctx.echo(f"{model}: ft bound {result.value} (Rel at the bounds tried: "
             + ", ".join(f"{v}: {r:.2f}" for v, r in result.rel.items()) + ")")
    ctx.store.save_trials(NAME, model, [{"model": model, "editor": "ft", "setting": "bound", "layer": layer,
                                         "n": len(requests), "reached": result.reached, **row}
                                        for row in result.rows()])


def calibrated(ctx: StudyContext, model: str) -> dict:
    """The model's calibrated settings (``{"ft_bound": b}``; empty when nothing is calibrated)."""
    if not needed(ctx.config):
        return {}
    rows = ctx.store.trials(NAME).get(model)
    if not rows:
        raise KnowlocError(f"{model}: ft's bound is not calibrated yet (the study calibrates it before the edits)")
    return {"ft_bound": next(r["value"] for r in rows if r["chosen"])}


def study_editor(ctx: StudyContext, name: str, model: str, covariance: CovarianceStore | None = None) -> Editor:
    """The editor ``name`` with the study's settings and the model's calibrated ones."""
    return make_editor(name, ctx.config, covariance, calibrated(ctx, model))


def rows(ctx: StudyContext) -> list[dict]:
    """Every stored calibration row (summary ``calibration``)."""
    return [row for model_rows in ctx.store.trials(NAME).values() for row in model_rows]


def described(rows: list[dict]) -> list[str]:
    """summary.md's lines on the calibrated settings (none when nothing was calibrated)."""
    chosen = [r for r in rows if r["chosen"]]
    if not chosen:
        return []
    return ["ft / kn-ft bound per model (--ft-bound auto; docs/editing.md): " + "; ".join(
        f"{r['model']}: {r['value']:g} (Rel {r['rel']:.2f} on {r['n']} reference queries at layer {r['layer']}"
        + ("" if r["reached"] else f", below {TARGET_REL}: the largest bound") + ")" for r in chosen), ""]
