"""The Ray executor gives the local executor's summary, also when a worker dies mid-run."""

import json
import os
import signal
import sqlite3
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from knowloc.study.config import StudyConfig  # noqa: E402
from knowloc.study.runner import run_study  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _attributions(db_path) -> int:
    """Stored attribution units: the specificity profile's reference items come first, then the queries."""
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            return sum(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                       for table in ("reference", "attributions"))
    except sqlite3.Error:
        return 0


def _kill_one_worker_after(db_path, rows: int, killed: list, timeout: float = 600) -> None:
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        if _attributions(db_path) >= rows:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "StudyWorker" in cmdline:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.02)


def test_ray_matches_local_and_survives_a_killed_worker(tmp_path, study_args, ray_cluster):
    experiments = ["consistency", "modification", "query-mapping"]
    local = run_study(StudyConfig(**study_args(tmp_path / "local", experiments=experiments)),
                      echo=lambda _: None).read_text()
    out = tmp_path / "ray"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_worker_after, args=(out / "results.sqlite", 3, killed))
    killer.start()
    summary = run_study(StudyConfig(**study_args(out, experiments=experiments, executor="ray", workers=2)),
                        echo=lambda _: None).read_text()
    killer.join()
    assert killed, "no Ray worker was killed"
    assert json.loads(summary) == json.loads(local)
    assert summary == local
