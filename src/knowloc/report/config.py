"""The study's configuration as the report reads it, the run's environment, and the section that shows both.

:func:`~knowloc.study.reader.stored_config` (the study reader's) rebuilds the study's
:class:`~knowloc.study.config.StudyConfig` from summary.json's stored ``config``: every setting the report uses
(models, methods, the K_C / K_I split, ``min_known``, ...) is read from it, so the defaults are StudyConfig's own
and written nowhere else.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from typing import Any

from knowloc.report.tables import esc, kv_table, render_table
from knowloc.study.config import StudyConfig
from knowloc.study.reader import stored_config
from knowloc.study.tables import DASH, Column, missing

PACKAGES = ("knowloc", "torch", "transformers", "numpy")


# --------------------------------------------------------------------------- the stored configuration


# --------------------------------------------------------------------------- environment


def versions() -> dict[str, str]:
    """The installed versions of PACKAGES and of Python."""
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
    env: dict[str, Any] = {"versions": versions()}
    if device is not None:
        env["device"] = str(device)
    if wall_s is not None:
        env["wall_s"] = float(wall_s)
    if peak_rss_mb is not None:
        env["peak_rss_mb"] = float(peak_rss_mb)
    return env


# --------------------------------------------------------------------------- the section


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


def config_section(summary: dict, config: StudyConfig, environment: dict) -> str:
    """The stored configuration as summary.json holds it, the studied facts per model, and the environment."""
    stored = summary.get("config", {})
    parts = ['<h3>Study configuration</h3>',
             '<p class="muted">The settings that determine the stored results (summary.json <code>config</code>).</p>',
             kv_table(((k, _plain(stored[k])) for k in sorted(stored)), per_row=3)]
    facts = summary.get("facts", {})
    if facts:
        parts += ["<h3>Studied facts</h3>",
                  f'<p class="muted">Facts a model answers in at least {esc(config.min_known)} '
                  "paraphrases (top-1).</p>",
                  render_table([{"model": m, "facts": n} for m, n in facts.items()],
                               [Column("model", "model"), Column("facts known", "facts", "int")])]
    env = dict(environment)
    env_versions = env.pop("versions", {}) or {}
    items: list[tuple[str, str]] = [("models", _plain(config.models)), ("seed", _plain(config.seed))]
    if "device" in env:
        items.append(("device", _plain(env.pop("device"))))
    if "wall_s" in env:
        wall = env.pop("wall_s")
        items.append(("wall time", DASH if missing(wall) else esc(fmt_seconds(wall))))
    if "peak_rss_mb" in env:
        rss = env.pop("peak_rss_mb")
        items.append(("peak RSS", DASH if missing(rss) else esc(f"{float(rss):.0f} MB")))
    items += [(k, _plain(v)) for k, v in sorted(env.items())]
    items += [(f"{name} version", _plain(v)) for name, v in env_versions.items()]
    parts += ["<h3>Environment</h3>", kv_table(items, per_row=2)]
    return "\n".join(parts)
