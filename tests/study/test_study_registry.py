"""One spec per experiment: a toy experiment registered in a test shows up in the plan, the CLI help, the
settings validation, summary.json (its rows, CSV, figures and finding), summary.md and report.html without
touching any other file; every setting is a flag."""

import json

import numpy as np
import pytest

from knowloc.cli import build_app, main
from knowloc.study.config import IDENTITY_KEYS, RUNTIME_KEYS, SPECS, StudyConfig
from knowloc.errors import KnowlocError
from knowloc.analysis.fact_stats import fact_level_ci
from knowloc.study.context import Section
from knowloc.study.findings import SUPPORTS, UNDECIDED, verdict
from knowloc.study.groups import grouped_trials
from knowloc.study.plan import print_plan
from knowloc.study.registry import REGISTRY, Experiment, Finding, register, unregister
from knowloc.study.tables import Column, Table


def _toy_fact_work(ctx, model, method, fact):
    return [{"paraphrases": float(len(fact.prompts))}]


def _toy_summarize(ctx):
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "toy"):
        estimate = fact_level_ci(fact_trials, "paraphrases", ctx.config.n_boot, ctx.config.seed)
        rows.append({"model": model, "method": method, "group": group, "n": estimate.n,
                     **estimate.fields("paraphrases")})
    return Section(summary={"toy_paraphrases": rows})


def _toy_judge(summary):
    from knowloc.analysis import Estimate

    return [(f"{r['group']}: {r['paraphrases']}", verdict(Estimate.from_row(r, "paraphrases", "paraphrases_ci_low",
                                                                             "paraphrases_ci_high"), support_above=1))
            for r in summary["toy_paraphrases"]]


def _toy_validate(cfg):
    if cfg.steps > 1000:
        raise KnowlocError("the toy experiment takes --steps <= 1000")


TOY = Experiment(
    name="toy", question="how many answered paraphrases does a fact have?", heading="Toy paraphrase count",
    summarize=_toy_summarize, fact_work=_toy_fact_work, summary_keys=("toy_paraphrases",),
    intro="A toy experiment registered by a test.", validate=_toy_validate,
    findings=(Finding("toy-two-paraphrases", "Do studied facts answer more than one paraphrase?",
                      "studied facts answer > 1 paraphrase", "supports: the interval lies above 1", _toy_judge),),
    tables=(Table("toy_paraphrases", title="Paraphrases per group", columns=(
        Column("model", "model"), Column("group", "group", "group"), Column("n", "n", "int"),
        Column("answered paraphrases", "paraphrases", "ci")),),),
    notes=lambda summary: [f"{len(summary['toy_paraphrases'])} toy rows."])


def test_a_registered_experiment_appears_everywhere(tmp_path, tiny_facts, capsys):
    register(TOY)
    try:
        with pytest.raises(KnowlocError, match="toy experiment takes --steps"):
            StudyConfig(steps=5000)  # the toy's own validation runs for every StudyConfig
        assert main(["study", "--steps", "5000", "--out", str(tmp_path / "bad")]) == 2
        assert main(["study", "--help"]) == 0
        assert "toy (how many answered paraphrases does a fact have?)" in " ".join(capsys.readouterr().out.split())
        args = ["--model", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "2",
                "--candidates", "--experiments", "consistency,toy", "--facts", "4", "--n-boot", "20",
                "--specificity-prompts", "4", "--no-progress"]
        lines = []
        print_plan(StudyConfig(**{"models": ["tiny-llama"], "data": str(tiny_facts), "methods": ["ig"], "steps": 2,
                                  "candidates": True, "experiments": ["consistency", "toy"], "facts": 4,
                                  "out": str(tmp_path / "plan")}), echo=lines.append)
        assert any(line.strip().startswith("toy: ") and "fact units missing" in line for line in lines)
        assert not (tmp_path / "plan").exists()
        out = tmp_path / "study"
        assert main(["study", *args, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        rows = summary["toy_paraphrases"]
        assert rows and all(r["n"] >= 0 for r in rows)
        studied = sum(r["n"] for r in rows)
        assert studied == summary["facts"]["tiny-llama"]
        assert all(r["paraphrases"] >= 2 for r in rows if r["n"])  # studied facts answer >= min_known paraphrases
        md = (out / "summary.md").read_text()
        assert "## Toy paraphrase count" in md and "### Paraphrases per group" in md
        assert "| model | group | n | answered paraphrases |" in md and f"{len(rows)} toy rows." in md
        assert (out / "tables" / "toy_paraphrases.csv").read_text().startswith("model,")
        assert summary["figures"]["toy"] == []  # figures are recorded per experiment
        toy = next(f for f in summary["findings"] if f["id"] == "toy-two-paraphrases")
        assert toy["verdict"] in (SUPPORTS, UNDECIDED) and toy["question"].startswith("Do studied facts")
        assert [f["id"] for f in summary["findings"]][-1] == "toy-two-paraphrases"  # in registration order
        assert "Do studied facts answer more than one paraphrase?" in md
        report = (out / "report.html").read_text()  # `knowloc study` writes the report at the end
        assert '<section id="toy"><h2>Toy paraphrase count</h2>' in report and 'href="#toy"' in report
        assert "<th>answered paraphrases</th>" in report
    finally:
        unregister("toy")
    assert "toy" not in REGISTRY


def test_register_refuses_tables_of_undeclared_keys_and_shared_finding_ids():
    with pytest.raises(ValueError, match="undeclared summary keys other"):
        register(Experiment(name="bad", question="?", heading="Bad", summarize=_toy_summarize, summary_keys=("a",),
                            tables=(Table("other", columns=(Column("n", "n"),)),)))
    taken = next(f for e in REGISTRY.values() for f in e.findings)
    with pytest.raises(ValueError, match="finding ids must be unique"):
        register(Experiment(name="bad", question="?", heading="Bad", summarize=_toy_summarize, summary_keys=("a",),
                            findings=(taken,)))
    assert "bad" not in REGISTRY


def test_a_section_with_undeclared_keys_is_refused():
    from knowloc.study.runner import _check_section

    with pytest.raises(KnowlocError, match="returned summary keys"):
        _check_section(TOY, Section(summary={"toy_paraphrases": [], "extra": []}))
    _check_section(TOY, Section(summary={"toy_paraphrases": []}))


def test_every_setting_is_a_study_flag_and_a_toml_key(tmp_path):
    import typer

    command = typer.main.get_command(build_app()).commands["study"]
    flags = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    names = {param.name for param in command.params}
    for name, (_, _, f) in SPECS.items():  # every setting, a section's field too, by its flat name
        assert "--" + name.replace("_", "-") in flags, name
        assert name in names
        assert f.metadata["help"] and f.metadata["kind"] in ("identity", "view", "runtime")
    assert names - set(SPECS) == {"config", "dry_run", "gpu", "robustness", "robustness_budget", "robustness_findings"}
    # kinds drive the stored identity and what summary.json leaves out
    assert set(IDENTITY_KEYS) == {name for name, (_, _, f) in SPECS.items() if f.metadata["kind"] == "identity"}
    assert RUNTIME_KEYS.isdisjoint(StudyConfig().summary_config())
    # a TOML file takes the same names
    toml = tmp_path / "s.toml"
    toml.write_text("\n".join(f'{name} = {json.dumps(v)}' for name, v in StudyConfig().flat().items()
                              if v is not None) + "\n")
    assert StudyConfig.from_toml(toml, {}) == StudyConfig()
    # ... and a section as a table, beside the flat names
    toml.write_text('lambda1 = 2.0\n[rome]\nsteps = 3\n[update-sweep]\nrules = ["dai"]\n')
    loaded = StudyConfig.from_toml(toml, {})
    assert (loaded.rome.steps, loaded.update.lambda1, loaded.update_sweep.rules) == (3, 2.0, ["dai"])
    assert loaded == StudyConfig(rome_steps=3, lambda1=2.0, update_sweep_rules=["dai"])
    toml.write_text("[rome]\nsteeps = 3\n")
    with pytest.raises(KnowlocError, match="unknown key 'steeps' in table \\[rome\\]"):
        StudyConfig.from_toml(toml, {})


def test_flags_reach_the_config(tmp_path, monkeypatch):
    import knowloc.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run_study", lambda cfg, echo: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(cli, "build_report", lambda out: out / "report.html")
    code = main(["study", "--model", "tiny-llama", "-m", "tiny-gpt2", "--methods", "ig,amig", "--lambda2", "3",
                 "--update-rule", "signed", "--specificity", "off", "--locality", "7", "--ppl-texts", "2",
                 "--sweep-lambda2", "1,2", "--no-candidates", "--attention-renormalize", "--out", str(tmp_path)])
    cfg = seen["cfg"]
    assert code == 0 and cfg.models == ["tiny-llama", "tiny-gpt2"] and cfg.methods == ["ig", "amig"]
    assert (cfg.update.lambda2, cfg.update.rule, cfg.specificity, cfg.locality, cfg.ppl_texts) == (3.0, "signed", 1.0, 7, 2)
    assert cfg.update_sweep.lambda2 == [1.0, 2.0] and cfg.candidates is False and cfg.attention.renormalize is True
    assert np.isclose(cfg.update.lambda1, 1.0)


def test_a_name_given_twice_is_studied_once():
    """Repeated list flags append: `--methods ig --methods ig,amig` must not study ig twice (its rows would be
    duplicated and every per-method count doubled)."""
    cfg = StudyConfig(methods=["ig", "ig,amig"], models=["tiny-llama", "tiny-llama"],
                      experiments="consistency,modification,consistency")
    assert cfg.methods == ["ig", "amig"] and cfg.models == ["tiny-llama"]
    assert cfg.experiments == ["consistency", "modification"]


def test_required_experiments_run_and_no_validate_changes_the_config():
    """An experiment declares what it reads (``requires``): a study that chooses it lists and runs those too,
    appended in the order first required, and no experiment's validate changes the config it checks."""
    from dataclasses import replace

    from knowloc.study.registry import experiments, run_order, with_requirements

    assert REGISTRY["localization-vs-editing"].requires == ("tracing",)
    config = StudyConfig(experiments=["consistency", "localization-vs-editing"])
    assert config.experiments == ["consistency", "localization-vs-editing", "tracing"]
    assert StudyConfig(**config.as_dict()).experiments == config.experiments  # (a config read back: the same)
    before = config.as_dict()
    for experiment in experiments():
        if experiment.validate is not None:
            experiment.validate(config)
    assert config.as_dict() == before
    register(replace(TOY, name="toy", requires=("localization-vs-editing",)))
    try:
        assert with_requirements(["toy"]) == ["toy", "localization-vs-editing", "tracing"]  # and theirs in turn
        assert [e.name for e in run_order(["toy"]) if not e.always] == ["tracing", "localization-vs-editing", "toy"]
    finally:
        unregister("toy")
