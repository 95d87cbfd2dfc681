"""Faults: kill -9 at seeded random points then resume, a full disk, an unwritable directory."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from failing_store import FailingWrites

from knowloc.cli import main
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study
run_study(StudyConfig(**json.loads(sys.argv[1])), echo=lambda _: None)
"""


def _rows(db_path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            return db.execute("SELECT (SELECT COUNT(*) FROM attributions) + (SELECT COUNT(*) FROM trials)").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_facts):
    """A clean run's summary.json and the number of rows its store ends with."""
    out = tmp_path_factory.mktemp("clean") / "study"
    args = _args(tiny_facts, out)
    text = run_study(StudyConfig(**args), echo=lambda _: None).read_text()
    return text, _rows(out / "results.sqlite")


def _args(tiny_facts, out) -> dict:
    return dict(models=["tiny-llama"], data=str(tiny_facts), methods=["ig"], steps=3, candidates=True,
                experiments=["consistency", "modification"], n_boot=50, locality=3, out=str(out), progress=False,
                seed=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kill_9_at_a_random_point_then_resume_equals_clean_run(tmp_path, tiny_facts, clean_run, seed):
    """The kill point (rows stored, then a random delay) comes from the seed; seed 3 waits for every row, so
    the kill lands in the output stage or just after the run."""
    clean, total = clean_run
    rng = random.Random(seed)
    kill_after_rows = total if seed == 3 else rng.randint(1, total - 1)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(_args(tiny_facts, out))],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while _rows(out / "results.sqlite") < kill_after_rows and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.2))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = out / "summary.json"
    assert not summary.exists() or summary.read_text() == clean  # never a half-written summary
    assert run_study(StudyConfig(**_args(tiny_facts, out)), echo=lambda _: None).read_text() == clean


def test_full_disk_gives_one_line_error_and_the_study_resumes(tmp_path, tiny_facts, clean_run, monkeypatch, capsys):
    import knowloc.study.store as store_module

    real_connect = sqlite3.connect
    monkeypatch.setattr(store_module.sqlite3, "connect",
                        lambda *a, **k: FailingWrites(real_connect(*a, **k), ok=6,
                                                  error=lambda: sqlite3.OperationalError("database or disk is full")))
    out = tmp_path / "full"
    config = tmp_path / "study.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in _args(tiny_facts, out).items()))
    assert main(["study", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and str(out) in err[0]
    assert not (out / "summary.json").exists()
    monkeypatch.setattr(store_module.sqlite3, "connect", real_connect)
    assert run_study(StudyConfig(**_args(tiny_facts, out)), echo=lambda _: None).read_text() == clean_run[0]


def test_real_full_disk_on_a_tiny_tmpfs(tmp_path, tiny_facts, capsys):
    """Where the test may mount (root on Linux): a 200 KB tmpfs fills up during the study."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small file system")
    try:
        out = mount / "study"
        code = main(["study", "--model", "tiny-llama", "--data", str(tiny_facts), "--methods", "ig", "--steps", "3",
                     "--candidates", "--experiments", "consistency,modification", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert "No space left on device" in err[0] or "disk is full" in err[0]
        assert not (out / "summary.json").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)
