"""The tracing experiment end to end on a tiny model: maps stored once per fact (not per method), ROME's token
classes averaged with n, the KN comparison per method, the finding, the figure, and a rerun that traces nothing."""

import json

from knowloc.analysis.localization import TOKEN_CLASSES
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study
from knowloc.tracing import KINDS

TRACE_ARGS = dict(experiments=["consistency", "tracing"], methods=["ig", "amig"], trace_samples=2, trace_window=2)


def test_tracing_study_end_to_end(tmp_path, study_args, monkeypatch):
    traced = []
    from knowloc.study.experiments import tracing as experiment
    real = experiment.trace

    def spy(lm, prompt, *a, **k):
        traced.append(prompt)
        return real(lm, prompt, *a, **k)
    monkeypatch.setattr(experiment, "trace", spy)
    out = tmp_path / "study"
    summary = json.loads(run_study(StudyConfig(**study_args(out, **TRACE_ARGS)), echo=lambda _: None).read_text())
    n_facts = summary["facts"]["tiny-llama"]
    assert n_facts > 0 and len(traced) == n_facts  # one query per fact, traced once for both methods
    rows = summary["tracing"]
    assert {r["kind"] for r in rows} == set(KINDS)
    assert {r["token_class"] for r in rows} <= set(TOKEN_CLASSES) and {"last subject", "last"} <= {
        r["token_class"] for r in rows}
    last = [r for r in rows if r["kind"] == "hidden" and r["token_class"] == "last"]
    assert [r["layer"] for r in last] == [0, 1, 2] and all(r["n"] == n_facts for r in last)
    totals = summary["tracing_totals"][0]
    # restoring the last token's residual state at the last layer restores the clean answer: IE = TE there
    assert abs(last[-1]["ie_mean"] - totals["te"]) < 1e-5  # maps are stored rounded to 1e-6
    assert {r["method"] for r in summary["tracing_vs_kn"]} == {"ig", "amig"}
    for r in summary["tracing_vs_kn"]:
        assert r["n"] + r["n_without_kn"] == n_facts
        if r["n"]:
            assert -1 <= r["rank_corr"] <= 1 and 0 <= r["kn_peak_layer"] <= 2 and 0 <= r["mlp_peak_layer"] <= 2
    assert "tracing-agrees-with-kns" in {f["id"] for f in summary["findings"]}
    assert "tracing_tiny-llama.png" in summary["figures"]["tracing"]
    assert "## Causal tracing" in (out / "summary.md").read_text()
    again = json.loads(run_study(StudyConfig(**study_args(out, **TRACE_ARGS)), echo=lambda _: None).read_text())
    assert again["tracing"] == rows and len(traced) == n_facts


def test_the_study_traces_with_the_tracing_defaults():
    """One source of tracing's defaults: a default study's settings are TraceSettings' (what `knowloc bench
    tracing` times), with the values studies have always used."""
    from knowloc.study.experiments.tracing import settings
    from knowloc.tracing import TraceSettings

    assert settings(StudyConfig()) == TraceSettings() == TraceSettings(samples=10, noise=3.0, window=6, seed=0)
