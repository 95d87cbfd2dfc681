"""The report's parts: the stored configuration, the assets, PNG sizes and the former module name."""

import fnmatch
import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from knowloc.errors import KnowlocError
from knowloc.report import stored_config
from knowloc.report.figures import _png_size
from knowloc.report.page import asset
from knowloc.study.config import LEGACY_IDENTITY, RUNTIME_KEYS, StudyConfig

REPO = Path(__file__).resolve().parents[2]


def _default(name: str):
    return StudyConfig().flat()[name]


def test_stored_config_is_the_study_config():
    cfg = StudyConfig(models=["tiny-llama"], methods=["ig"], experiments=["consistency", "cas"], tau=0.4, p=0.7,
                      cs_score="csp", split="otsu", min_known=3, facts=5, seed=4, specificity="off")
    summary = json.loads(json.dumps({"config": cfg.summary_config()}))  # as summary.json stores it
    assert stored_config(summary).summary_config() == cfg.summary_config()


def test_stored_config_of_an_old_summary_fills_missing_settings():
    """An old summary.json lacks later settings and may hold ones since removed: defaults fill the former (an
    identity setting its legacy value: what such a study was computed with), the latter are ignored."""
    old = {"models": ["tiny-llama"], "data": "builtin", "methods": ["ig"], "experiments": ["consistency"],
           "steps": 4, "threshold": 0.25, "seed": 3, "tau": 0.35, "removed_setting": 7}
    cfg = stored_config({"config": old})
    assert (cfg.models, cfg.methods, cfg.steps, cfg.threshold, cfg.seed, cfg.tau) == (["tiny-llama"], ["ig"], 4,
                                                                                      0.25, 3, 0.35)
    for name in ("p", "cs_score", "split", "min_known", "facts", "n_boot"):
        assert getattr(cfg, name) == _default(name), name
    for name, legacy in LEGACY_IDENTITY.items():
        assert cfg.flat()[name] == legacy, name
    assert not hasattr(cfg, "removed_setting")


def test_stored_config_ignores_runtime_keys():
    cfg = StudyConfig(models=["tiny-llama"], methods=["ig"])
    stored = {**cfg.summary_config(), "out": "/elsewhere", "device": "cuda:7", "executor": "ray"}
    rebuilt = stored_config({"config": stored})
    assert RUNTIME_KEYS >= {"out", "device", "executor"}
    assert (rebuilt.out, rebuilt.device, rebuilt.executor) == (_default("out"), None, "local")


def test_stored_config_refuses_a_missing_or_invalid_config():
    with pytest.raises(KnowlocError, match="no study configuration"):
        stored_config({})
    with pytest.raises(KnowlocError, match="stored configuration.*cs-score"):
        stored_config({"config": {"models": ["m"], "cs_score": "cs9"}})


def test_assets_are_inlined_and_packaged():
    from knowloc.report import render_report  # noqa: F401  (the page module loads the assets)

    css = (resources.files("knowloc.report") / "assets" / "report.css").read_text(encoding="utf-8")
    assert asset("report.css") == css.strip() and ":root{" in css and "@media print" in css
    assert "beforeprint" in asset("print.js")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["knowloc"]
    for path in (REPO / "src" / "knowloc" / "report" / "assets").iterdir():
        relative = path.relative_to(REPO / "src" / "knowloc").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not package data"


def test_png_size():
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big")
    assert _png_size(header) == (640, 480)
    assert _png_size(b"\x89PNG\r\n\x1a\n-not-really") is None


def test_former_module_name_reexports_the_entry_points():
    from knowloc.report import config, html, page

    assert (html.build_report, html.render_report, html.environment_info) == (page.build_report, page.render_report,
                                                                           config.environment_info)
