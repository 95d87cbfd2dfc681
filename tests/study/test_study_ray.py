"""The Ray executor gives the local executor's summary, also when a worker dies mid-run and when its workers cannot
see the driver's --out (they read snapshots of the store), and places one worker per GPU: on a machine without
GPUs, on GPUs Ray is told of (``ray.init(num_gpus=2)``)."""

import json
import os
import signal
import sqlite3
import tempfile
import threading
import time
import types

import pytest
import torch

ray = pytest.importorskip("ray")

from knowloc.errors import KnowlocError  # noqa: E402
from knowloc.study import executors  # noqa: E402
from knowloc.study.config import StudyConfig  # noqa: E402
from knowloc.study.context import ModelPool  # noqa: E402
from knowloc.study.runner import run_study  # noqa: E402
from knowloc.study.store import Store  # noqa: E402

ON_CPU = torch.device(os.environ["KNOWLOC_DEVICE"]).type == "cpu"  # the suite's device (tests/conftest.py)
# GPUs the test Ray has: two declared ones without GPUs (Ray hands out their ids, nothing uses them), else the real
# ones; one per worker where there are two, else the workers share one
GPUS = 2 if ON_CPU else torch.cuda.device_count()
PER_WORKER = 1 if GPUS >= 2 else 0.5
_LOCAL: dict = {}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, num_gpus=GPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _local_summary(study_args, tmp_path_factory, experiments) -> str:
    """The local executor's summary.json of the study (computed once per module)."""
    if "summary" not in _LOCAL:
        out = tmp_path_factory.mktemp("local")
        _LOCAL["summary"] = run_study(StudyConfig(**study_args(out, experiments=experiments)),
                                      echo=lambda _: None).read_text()
    return _LOCAL["summary"]


def _trials(db_path) -> int:
    """Stored trial units: the local run before has put every attribution in the attribution cache, which the Ray
    run reads before it starts its workers, so these are the workers' units (counted, a kill is mid-run)."""
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_one_worker_after(db_path, rows: int, workers: list[dict], killed: list, timeout: float = 600) -> None:
    """SIGKILL one of this study's workers (their pids from its placements: never another study's on the same
    machine) once `rows` trials are stored."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if workers and _trials(db_path) >= rows:
            os.kill(workers[0]["pid"], signal.SIGKILL)
            killed.append(workers[0]["pid"])
            return
        time.sleep(0.02)


EXPERIMENTS = ["consistency", "modification", "query-mapping"]


def test_ray_matches_local_and_survives_a_killed_worker(tmp_path, tmp_path_factory, study_args, ray_cluster,
                                                        monkeypatch):
    experiments = EXPERIMENTS
    local = _local_summary(study_args, tmp_path_factory, experiments)
    out = tmp_path / "ray"
    killed: list[int] = []
    workers: list[dict] = []
    describe = executors.describe_placements
    monkeypatch.setattr(executors, "describe_placements", lambda found: workers.extend(found) or describe(found))
    killer = threading.Thread(target=_kill_one_worker_after, args=(out / "results.sqlite", 3, workers, killed))
    killer.start()
    summary = run_study(StudyConfig(**study_args(out, experiments=experiments, executor="ray", workers=2)),
                        echo=lambda _: None).read_text()
    killer.join()
    assert killed, "no Ray worker was killed"
    assert json.loads(summary) == json.loads(local)
    assert summary == local


def test_one_worker_per_gpu_loads_on_its_own_device_and_matches_local(tmp_path, tmp_path_factory, study_args,
                                                                       ray_cluster, monkeypatch):
    """Two workers of one GPU each get distinct GPUs (Ray's ids, machine-wide) and load their models on the
    suite's device: on a machine without GPUs the CPU ($KNOWLOC_DEVICE), on GPUs each worker's own (cuda:0 among
    the one it sees); the study equals the local executor's."""
    placements: list[dict] = []
    describe = executors.describe_placements
    monkeypatch.setattr(executors, "describe_placements", lambda found: placements.extend(found) or describe(found))
    summary = run_study(StudyConfig(**study_args(tmp_path, experiments=EXPERIMENTS, executor="ray", workers=2,
                                                 gpus_per_worker=PER_WORKER)), echo=lambda _: None).read_text()
    assert sorted(p["gpu_ids"] for p in placements) == ([[0], [1]] if PER_WORKER == 1 else [[0], [0]])
    assert {p["device"] for p in placements} == {"cpu" if ON_CPU else "cuda:0"}
    assert len({p["pid"] for p in placements}) == 2
    assert summary == _local_summary(study_args, tmp_path_factory, EXPERIMENTS)


def test_workers_that_cannot_see_the_drivers_out_read_its_store_from_snapshots(tmp_path, tmp_path_factory,
                                                                               study_args, ray_cluster, monkeypatch):
    """Workers told of an --out that does not exist where they run (another node's path) still run the study: they
    read the snapshots the driver ships through Ray's object store, never its file; the summary equals local's."""
    elsewhere = tmp_path / "on-another-node" / "out"

    def spawn(self):
        return self.actor_class.remote({**self.config, "out": str(elsewhere)}, self.threads, self.device)

    monkeypatch.setattr(executors.RayExecutor, "_spawn", spawn)
    taken: list[int] = []
    snapshot = Store.snapshot
    monkeypatch.setattr(Store, "snapshot", lambda store: taken.append(1) or snapshot(store))
    summary = run_study(StudyConfig(**study_args(tmp_path / "ray", experiments=EXPERIMENTS, executor="ray",
                                                 workers=2)), echo=lambda _: None).read_text()
    assert not elsewhere.parent.exists()
    assert taken, "no snapshot was shipped"
    assert summary == _local_summary(study_args, tmp_path_factory, EXPERIMENTS)


def _probe_row(fact_id: str) -> dict:
    return {"fact_id": fact_id, "relation": "P1", "subject": "S", "object": "O",
            "queries": [{"template": f"t{i}", "text": f"{fact_id} query {i}", "top1": True} for i in range(2)]}


def test_a_snapshot_is_shipped_once_per_write_and_a_worker_reads_the_rows_of_its_own(tmp_path, study_args,
                                                                                     monkeypatch):
    """StoreSnapshots puts a snapshot when the store changed since the last one only; a worker's context from a
    snapshot sees the probes stored before it (and not after), and leaves no copy of the store behind."""
    store = Store(tmp_path / "results.sqlite")
    puts: list[bytes] = []
    snapshots = executors.StoreSnapshots(store, lambda data: puts.append(data) or f"ref{len(puts)}")
    first = snapshots.current()
    assert first == (0, ["ref1"]) and snapshots.current() == first and len(puts) == 1  # unchanged: not put again
    store.save_probe("tiny-llama", [_probe_row("f1"), _probe_row("f2")])
    second = snapshots.current()
    assert second == (1, ["ref2"]) and snapshots.current() == second and len(puts) == 2  # changed: put once
    store.save_probe("other-model", [_probe_row("f3")])  # after the snapshot: not in it

    copies = tmp_path / "worker-tmp"
    copies.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(copies))
    config = StudyConfig(**study_args(tmp_path / "not-here", models=["tiny-llama", "other-model"]))
    before = executors.snapshot_context(puts[0], config, ModelPool())
    after = executors.snapshot_context(puts[1], config, ModelPool())
    try:
        assert before.facts == {} and before.store.probed_models() == []
        assert [f.fact_id for f in after.facts["tiny-llama"]] == ["f1", "f2"] and "other-model" not in after.facts
        assert after.store.probed_models() == ["tiny-llama"]
        assert puts[1][18:20] == b"\x01\x01"  # rollback-journal mode: a reader makes no -wal / -shm files
        assert list(copies.iterdir()) == []  # the copies were removed once open
    finally:
        for ctx in (before, after):
            ctx.store.close()
        store.close()


def test_more_gpus_than_the_ray_has_is_one_line_before_any_worker(tmp_path, study_args, ray_cluster):
    config = StudyConfig(**study_args(tmp_path, executor="ray", workers=GPUS + 1, gpus_per_worker=1))
    outcome: list = []

    def make() -> None:
        try:
            executors.RayExecutor(types.SimpleNamespace(config=config), workers=GPUS + 1, gpus_per_worker=1)
        except KnowlocError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=make, daemon=True)  # made actors would wait for GPUs forever: bound it
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the executor waited for GPUs the Ray does not have"
    (message,) = outcome
    assert "\n" not in message and f"--workers {GPUS + 1}" in message and "do not fit on the Ray" in message


def test_gpu_slots_share_a_gpu_by_fractions_and_keep_a_worker_on_one_node():
    assert executors.gpu_slots(1, [2]) == 2 and executors.gpu_slots(0.5, [2]) == 4
    assert executors.gpu_slots(0.3, [1]) == 3 and executors.gpu_slots(2, [3, 3]) == 2


def test_gpu_settings_are_checked_with_the_config(tmp_path, study_args):
    for bad, message in (({"gpus_per_worker": 1}, "need --executor ray"),
                         ({"ray_address": "auto"}, "need --executor ray"),
                         ({"executor": "ray", "gpus_per_worker": 1.5}, "must be a whole number"),
                         ({"executor": "ray", "gpus_per_worker": 1, "device": "cuda:1"}, "sees only its own")):
        with pytest.raises(KnowlocError, match=message):
            StudyConfig(**study_args(tmp_path, **bad))
    StudyConfig(**study_args(tmp_path, executor="ray", gpus_per_worker=0.5, device="cuda"))  # cuda: its own GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a worker's GPU that torch cannot see: a machine without one")
def test_a_worker_with_declared_gpus_that_torch_cannot_see_says_so():
    assert executors.worker_device("cpu", [1]) == torch.device("cpu")
    with pytest.raises(KnowlocError, match="torch there sees no CUDA GPU"):
        executors.worker_device(None, [1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a worker's GPU that torch cannot see: a machine without one")
def test_a_workers_error_while_starting_reaches_the_driver_as_its_one_line(tmp_path, study_args, ray_cluster,
                                                                         monkeypatch):
    """Ray reserves a declared GPU for each worker, whose torch sees none: the worker's KnowlocError is the
    driver's one line, without Ray's traceback or its repeated exception-class prefixes."""
    monkeypatch.delenv("KNOWLOC_DEVICE")  # no device asked for: a worker with a reserved GPU wants cuda
    config = StudyConfig(**study_args(tmp_path, executor="ray", workers=1, gpus_per_worker=1))
    with pytest.raises(KnowlocError) as caught:
        executors.RayExecutor(types.SimpleNamespace(config=config, echo=lambda _: None), workers=1,
                              gpus_per_worker=1)
    message = str(caught.value)
    assert message.startswith("Ray gave a worker GPU") and "\n" not in message and "KnowlocError" not in message
