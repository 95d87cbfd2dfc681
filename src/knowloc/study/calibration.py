"""Per-model settings of the learned editors, calibrated once per study (docs/editing.md, "Bounds per model").

``ft``'s and ``kn-ft``'s L-infinity bound is an absolute weight change, so a bound chosen on one model is a
different edit on another (FT+L's 1e-2, chosen on SmolLM2, left Gemma-3-270M's locality at 0.05-0.20). With
``--ft-bound auto`` (the default) a study chooses it per model by :func:`knowloc.editing.trials.calibrate`: the
smallest bound of :data:`~knowloc.editing.editors.finetune.BOUNDS` at which ``ft`` at the study's first edit layer
reaches Rel >= 0.9 on ``--ft-calibration`` seeded reference queries of the specificity profile (fact-free of the
study: never its facts), each updated to another answer of its relation. It runs in the driver once per model
before the facts' units and is stored with the study (summary ``calibration``: rows ``model, editor, setting,
layer, n, value, rel, chosen, reached``); ``kn-ft`` uses ``ft``'s bound.

The built-in models' calibrations under the default settings are shipped (``calibration.json`` beside the
shipped specificity references, :func:`knowloc.attribution.shipped.pack_folder`; ``knowloc reference calibrate``
regenerates them), keyed by everything that decides the result (:func:`calibration_key`: the weights' fingerprint,
the device type, the layer, ft's steps and learning rate, the calibration requests, the grid and the target), so a
shipped entry serves only the calibration it is; any other one is computed (about 2 min for SmolLM2-135M on one
core). ROME, MEMIT and AlphaEdit need no such step: their targets are fit per request and their updates scaled by
each model's own key statistics C (and MEMIT's lambda by its MLP width).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from knowloc.attribution.shipped import pack_folder
from knowloc.data.texts import load_specificity_queries
from knowloc.editing import EditRequest, calibrate, choose_new_object
from knowloc.editing.editors import CovarianceStore, Editor
from knowloc.editing.editors.finetune import BOUNDS, TARGET_REL
from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.fingerprint import weights_hash
from knowloc.models.lm import LanguageModel
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.editor_registry import make_editor

NAME = "calibration"
SHIPPED = "calibration.json"  # in the shipped references' folder
VERSION = 1  # bump when the calibration's rule changes in a way its key does not show
USERS = ("editors", "mass-editing")  # the experiments that run --editors (localization-vs-editing: --lve-editors)


def needed(cfg: StudyConfig) -> bool:
    """Whether the study runs ``ft`` or ``kn-ft`` with a calibrated bound."""
    runs_ft = (("localization-vs-editing" in cfg.experiments and "ft" in cfg.lve.editors)
               or ({"ft", "kn-ft"} & set(cfg.editors) and set(USERS) & set(cfg.experiments)))
    return cfg.ft.calibrated and bool(runs_ft)


def calibration_requests(lm: LanguageModel, cfg: StudyConfig, layer: int) -> list[EditRequest]:
    """``--ft-calibration`` seeded reference queries (the same for every model), each an update at ``layer`` of
    its answer to another answer of its relation whose first token differs (queries without one are passed over)."""
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


def calibration_key(lm: LanguageModel, cfg: StudyConfig, requests: list[EditRequest]) -> str:
    """The hex SHA-256 of what decides a calibration: the weights' fingerprint, the device type, ft's steps and
    learning rate, the requests (prompt, old and new object, layer), the grid, the target and :data:`VERSION`."""
    what = {"weights": weights_hash(lm), "device": lm.device.type, "steps": cfg.ft.steps, "lr": cfg.ft.lr,
            "requests": [[r.prompt, r.gold, r.new_object, list(r.layers)] for r in requests],
            "grid": list(BOUNDS), "target": TARGET_REL, "version": VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _shipped_path() -> Path:
    return pack_folder() / SHIPPED


def shipped(key: str) -> list[dict] | None:
    """The shipped calibration rows under ``key`` (None when none is shipped)."""
    path = _shipped_path()
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KnowlocError(f"shipped calibration {path} is damaged ({exc}); rerun `knowloc reference calibrate`")
    entry = entries.get(key)
    return None if entry is None else entry["rows"]


def compute(ctx: StudyContext, model: str) -> tuple[str, list[dict], bool]:
    """(key, rows, shipped) of the model's ``ft`` bound: the shipped rows when they are the same calibration, else
    calibrated now."""
    cfg = ctx.config
    lm = ctx.model(model)
    layer = cfg.layers("edit_layer").resolve(lm.n_layers)[0]
    requests = calibration_requests(lm, cfg, layer)
    key = calibration_key(lm, cfg, requests)
    rows = shipped(key)
    if rows is not None:
        return key, [{**row, "model": model} for row in rows], True
    ctx.echo(f"{model}: calibrating ft's bound on {len(requests)} reference queries at layer {layer} "
             f"(the smallest of {', '.join(map(str, BOUNDS))} with Rel >= {TARGET_REL})")
    result = calibrate(lm, requests, lambda b: cfg.ft.editor(bound=b), BOUNDS, TARGET_REL)
    return key, [{"model": model, "editor": "ft", "setting": "bound", "layer": layer, "n": len(requests),
                  "reached": result.reached, **row} for row in result.rows()], False


def calibrate_model(ctx: StudyContext, model: str) -> None:
    """The model's ``ft`` bound, calibrated (or read from the shipped calibrations) and stored unless it is
    (driver side)."""
    if not needed(ctx.config) or model in ctx.store.done_trials(NAME):
        return
    _, rows, from_shipped = compute(ctx, model)
    tried = ", ".join(f"{r['value']}: {r['rel']:.2f}" for r in rows)
    chosen = next(r["value"] for r in rows if r["chosen"])
    ctx.echo(f"{model}: ft bound {chosen} (Rel at the bounds tried: {tried})"
             + (" from the shipped calibration" if from_shipped else ""))
    ctx.store.save_trials(NAME, model, rows)


def write_shipped(ctx: StudyContext, model: str, path: Path | None = None) -> Path:
    """Calibrate ``model`` under ``ctx``'s settings and add it to the shipped calibrations (``knowloc reference
    calibrate``); returns the file written."""
    path = _shipped_path() if path is None else Path(path)
    key, rows, _ = compute(ctx, model)
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries = {k: v for k, v in entries.items() if v.get("model") != model}  # one entry per model: the defaults'
    entries[key] = {"model": model, "rows": rows}
    atomic_write(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return path


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
