"""Fuzz-style hardening: malformed fact/pattern files and arguments never give a traceback or a half-written study."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from knowloc.cli import main

GOOD = {"relation": "P1", "subject": "France", "object": "Paris", "templates": ["The capital of [X] is [Y]."]}


def _run_study(capsys, tmp_path, data: str, *extra) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["study", "--model", "tiny-gpt2", "--data", data, "--out", str(out), "--no-progress",
                 "--methods", "ig", "--steps", "1", "--experiments", "consistency", *extra])
    err = capsys.readouterr().err
    if code == 2:
        assert not out.exists(), "an output directory was left behind"
    return code, err


def _check_error(code: int, err: str) -> None:
    assert code in (0, 2), code
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("knowloc: error: ")


MUTATIONS = [
    lambda f: {k: v for k, v in f.items() if k != "subject"},
    lambda f: {**f, "subject": ""},
    lambda f: {**f, "object": None},
    lambda f: {**f, "templates": []},
    lambda f: {**f, "templates": "The capital of [X] is [Y]."},
    lambda f: {**f, "templates": ["[Y] is the capital of [X]."]},
    lambda f: {**f, "templates": ["The capital of France is [Y]."]},
    lambda f: {**f, "templates": ["The capital of [X] is."]},
    lambda f: {**f, "relation": 17},
    lambda f: [f],
]


def test_mutated_fact_files(capsys, tmp_path):
    for i, mutate in enumerate(MUTATIONS):
        path = tmp_path / f"facts{i}.jsonl"
        path.write_text(json.dumps(GOOD) + "\n" + json.dumps(mutate(dict(GOOD))) + "\n")
        code, err = _run_study(capsys, tmp_path, str(path))
        assert code == 2, (i, err)
        _check_error(code, err)
        assert f"facts{i}.jsonl" in err


def test_mutated_pararel_dirs(capsys, tmp_path):
    cases = {
        "no_facts_dir": {"patterns/P1.jsonl": '{"pattern": "The capital of [X] is [Y]."}\n'},
        "bad_pattern_json": {"patterns/P1.jsonl": "{nope\n", "facts/P1.jsonl": '{"sub_label": "A", "obj_label": "B"}\n'},
        "pattern_without_x": {"patterns/P1.jsonl": '{"pattern": "The capital is [Y]."}\n',
                              "facts/P1.jsonl": '{"sub_label": "A", "obj_label": "B"}\n'},
        "fact_missing_obj": {"patterns/P1.jsonl": '{"pattern": "The capital of [X] is [Y]."}\n',
                             "facts/P1.jsonl": '{"sub_label": "A"}\n'},
    }
    for name, files in cases.items():
        root = tmp_path / name
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        code, err = _run_study(capsys, tmp_path, f"pararel:{root}")
        assert code == 2, (name, err)
        _check_error(code, err)


@settings(max_examples=40)
@given(st.binary(max_size=200))
def test_random_bytes_as_facts(tmp_path_factory, binary):
    import io
    import contextlib

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "facts.jsonl"
    path.write_bytes(binary)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["probe", "--model", "tiny-gpt2", "--data", str(path)])
    _check_error(code, err.getvalue())


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["--facts", "--steps", "--threshold", "--tau", "--methods", "--experiments",
                                 "--seed", "0", "-1", "1.5", "ig,zz", "nan", "", "x", "--split", "median",
                                 "--workers", "--executor", "dask"]), max_size=6))
def test_random_study_arguments(tmp_path_factory, argv):
    import io
    import contextlib

    out = tmp_path_factory.mktemp("args") / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["study", "--model", "nonexistent-model-dir/", "--out", str(out), "--dry-run", *argv])
    assert code == 2, err.getvalue()
    _check_error(code, err.getvalue())
    assert not out.exists()


def test_unwritable_out_dir(capsys, tmp_path):
    import os

    if os.geteuid() == 0:
        target = "/proc/knowloc-out"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "out")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    code = main(["study", "--model", "tiny-gpt2", "--data", str(good), "--out", target, "--no-progress"])
    err = capsys.readouterr().err
    _check_error(code, err)
    assert code == 2 and ("not writable" in err or "cannot" in err)
