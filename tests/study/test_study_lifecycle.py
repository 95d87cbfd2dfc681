"""Every way a study run can end says so in one line (issue 24): interrupts (SIGINT / SIGTERM on a real process,
exit 130 / 143, the rerun equals an uninterrupted run), unreadable stores (exit 2), directories that hold no study
(refused unless --force), a failed first run (leaves nothing that blocks the next) and a second process on the
same study (refused by the directory's lock). Each case checks the exit code, the single stderr line and what
the directory holds afterwards."""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from failing_store import FailingWrites

from knowloc.cli import main
from knowloc.errors import Interrupted
from knowloc.study.store import MARKER, SCHEMA_VERSION, StudyLock

STUDY_FILES = {MARKER, "results.sqlite", "summary.json", "summary.md", "report.html", "tables", "figures"}


def _argv(tiny_facts, out, *extra, model: str = "tiny-llama") -> list[str]:
    return ["study", "--model", model, "--data", str(tiny_facts), "--methods", "ig", "--steps", "3",
            "--candidates", "--experiments", "consistency,modification", "--n-boot", "50", "--locality", "3",
            "--facts", "5", "--specificity-prompts", "8", "--seed", "1", "--no-progress", "--out", str(out), *extra]


def _run(capsys, argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _snapshot(directory: Path) -> dict:
    """Every file under the directory with its bytes (hidden files included)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


def _units(db_path: Path) -> int:
    """Stored units (a plain connection: a mode=ro one would leave -wal / -shm files behind)."""
    if not db_path.is_file():
        return 0
    db = sqlite3.connect(db_path, timeout=1)
    try:
        db.execute("PRAGMA query_only = 1")
        return sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("reference", "attributions",
                                                                                 "trials"))
    except sqlite3.Error:
        return 0
    finally:
        db.close()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_facts):
    """An uninterrupted study through the CLI: its directory (read-only for the tests: copy it)."""
    out = tmp_path_factory.mktemp("clean") / "study"
    assert main(_argv(tiny_facts, out)) == 0
    assert {p.name for p in out.iterdir()} == STUDY_FILES  # the marker, no -wal / -shm left behind
    return out


def _copy(clean: Path, tmp_path: Path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(clean, out)
    return out


# --------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_study_with_one_line_and_the_rerun_equals_a_clean_run(tmp_path, tiny_facts, clean, capsys,
                                                                                 signum, code):
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "knowloc.cli", *_argv(tiny_facts, out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while _units(out / "results.sqlite") < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the study ended before it was interrupted"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.fullmatch(r"knowloc: interrupted; (\d+) of (\d+) units stored; rerun to resume", lines[0])
    assert match, lines[0]
    stored, planned = map(int, match.groups())
    assert 5 <= stored == _units(out / "results.sqlite") < planned  # every stored unit counted, none half-stored
    assert {p.name for p in out.iterdir()} == {MARKER, "results.sqlite"}  # no summary, no -wal / -shm
    assert (out / MARKER).read_text() == "knowloc study directory\n"  # the lock went with the process
    assert _run(capsys, _argv(tiny_facts, out)) == (0, [])
    assert (out / "summary.json").read_text() == (clean / "summary.json").read_text()


def test_the_transaction_in_flight_is_rolled_back(tmp_path, tiny_facts, monkeypatch, capsys):
    """An interrupt inside a unit's transaction (after its rows are written, before the commit) stores nothing of
    that unit; the line counts exactly the units in the store."""
    import knowloc.study.store as store_module

    real_connect = sqlite3.connect
    monkeypatch.setattr(store_module.sqlite3, "connect", lambda *a, **k: FailingWrites(
        real_connect(*a, **k), ok=11, error=lambda: Interrupted(signal.SIGTERM), after=True))
    out = tmp_path / "study"
    code, err = _run(capsys, _argv(tiny_facts, out))
    monkeypatch.setattr(store_module.sqlite3, "connect", real_connect)
    assert code == 143 and len(err) == 1, err
    stored = int(re.fullmatch(r"knowloc: interrupted; (\d+) of \d+ units stored; rerun to resume", err[0]).group(1))
    assert stored == _units(out / "results.sqlite") > 0
    assert {p.name for p in out.iterdir()} == {MARKER, "results.sqlite"}


def test_an_interrupt_before_the_first_unit_leaves_nothing(tmp_path, tiny_facts, monkeypatch, capsys):
    """SIGINT while the model probes (a real signal to this process, through the CLI's handler): nothing stored,
    so the directory the run created is gone; the handlers are restored afterwards."""
    def interrupted_probe(*_a, **_k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal did not interrupt")
    monkeypatch.setattr("knowloc.study.runner.probe_facts", interrupted_probe)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "new" / "study"
    assert _run(capsys, _argv(tiny_facts, out)) == (130, ["knowloc: interrupted before the first unit; rerun to "
                                                          "resume"])
    assert not (tmp_path / "new").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(capsys, _argv(tiny_facts, empty))[0] == 130
    assert list(empty.iterdir()) == []  # a directory it did not create: its store and marker removed


def test_a_command_without_units_says_interrupted(tmp_path, tiny_facts, monkeypatch, capsys):
    def interrupted_probe(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    monkeypatch.setattr("knowloc.cli.probe_facts", interrupted_probe)
    assert _run(capsys, ["probe", "--model", "tiny-llama", "--data", str(tiny_facts)]) == (143, ["knowloc: "
                                                                                                  "interrupted"])


# --------------------------------------------------------------------------- store integrity


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(kind: str, db: Path) -> str:
    """Damage the store one way; returns what the line must say."""
    if kind == "flipped":  # the first byte of the middle page (a b-tree page's type, an overflow page's link)
        size = len(db.read_bytes())
        _flip(db, (size // 4096 // 2) * 4096)
        return "is damaged"
    if kind == "truncated":
        db.write_bytes(db.read_bytes()[: len(db.read_bytes()) // 2])
        return "is damaged"
    if kind == "text":
        db.write_text("not a database\n")
        return "not an SQLite database"
    if kind == "foreign":
        db.unlink()
        with closing(sqlite3.connect(db)) as other, other:
            other.execute("CREATE TABLE bookmarks (url TEXT)")
            other.execute("INSERT INTO bookmarks VALUES ('https://example.org')")
        return "another program's SQLite database"
    with closing(sqlite3.connect(db)) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    return "newer knowloc"


@pytest.mark.parametrize("kind", ["flipped", "truncated", "text", "foreign", "newer"])
def test_an_unreadable_store_is_one_line_and_exit_2(tmp_path, tiny_facts, clean, capsys, kind):
    out = _copy(clean, tmp_path)
    db = out / "results.sqlite"
    said = _damage(kind, db)
    before = _snapshot(out)
    for argv in (_argv(tiny_facts, out), _argv(tiny_facts, out, "--dry-run"), ["report", str(out)]):
        code, err = _run(capsys, argv)
        assert code == 2 and len(err) == 1, (argv[0], err)
        assert str(db) in err[0] and said in err[0] and "move it away" in err[0], err[0]
        assert _snapshot(out) == before  # nothing new (no -wal / -shm), nothing changed


def test_neuron_study_on_a_damaged_store(tmp_path, clean, capsys):
    out = _copy(clean, tmp_path)
    _damage("flipped", out / "results.sqlite")
    before = _snapshot(out)
    code, err = _run(capsys, ["neuron", "--model", "tiny-llama", "1:2", "--study", str(out)])
    assert code == 2 and len(err) == 1 and "is damaged" in err[0]
    assert _snapshot(out) == before


def test_a_flipped_byte_anywhere_is_a_result_or_one_line(tmp_path, tiny_facts, clean, capsys):
    """SQLite keeps no checksum of row contents: a flipped byte is found when the structure or a row's encoding
    breaks (one line, exit 2) or not at all (exit 0); never a traceback."""
    size = len((clean / "results.sqlite").read_bytes())
    for k in range(1, 8):
        out = tmp_path / f"flip{k}"
        shutil.copytree(clean, out)
        _flip(out / "results.sqlite", size * k // 8 + 17)
        code, err = _run(capsys, _argv(tiny_facts, out))
        assert (code, err) == (0, []) or (code == 2 and len(err) == 1 and "is damaged" in err[0]), err


def test_a_store_without_a_schema_version_counts_as_current(tmp_path, tiny_facts, clean, capsys):
    out = _copy(clean, tmp_path)
    with closing(sqlite3.connect(out / "results.sqlite")) as db:
        db.execute("PRAGMA user_version = 0")  # as written before the version was recorded
    (out / MARKER).unlink()  # and before the marker existed
    assert _run(capsys, _argv(tiny_facts, out)) == (0, [])
    assert (out / "summary.json").read_text() == (clean / "summary.json").read_text()
    with closing(sqlite3.connect(out / "results.sqlite")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert (out / MARKER).is_file()


# --------------------------------------------------------------------------- output directories


def test_a_directory_that_holds_no_study_is_refused_unless_force(tmp_path, tiny_facts, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "summary.json").write_text("{}\n")
    before = _snapshot(out)
    for extra in ((), ("--dry-run",)):
        code, err = _run(capsys, _argv(tiny_facts, out, *extra))
        assert code == 2 and len(err) == 1, err
        assert "not a knowloc study (notes.txt, summary.json)" in err[0] and "--force" in err[0]
        assert _snapshot(out) == before
    assert _run(capsys, _argv(tiny_facts, out, "--force")) == (0, [])
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert {p.name for p in out.iterdir()} == STUDY_FILES | {"notes.txt"}
    assert _run(capsys, _argv(tiny_facts, out)) == (0, [])  # now a study: resumed without --force


def test_an_empty_directory_is_accepted(tmp_path, tiny_facts, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert _run(capsys, _argv(tiny_facts, out, "--facts", "2", "--experiments", "consistency")) == (0, [])
    assert {p.name for p in out.iterdir()} == STUDY_FILES


def test_a_failed_first_run_leaves_nothing_that_blocks_the_next(tmp_path, tiny_facts, capsys):
    for out, existed in ((tmp_path / "new", False), (tmp_path / "empty", True)):
        if existed:
            out.mkdir()
        code, err = _run(capsys, _argv(tiny_facts, out, model=str(tmp_path / "no-such-model")))
        assert code == 2 and len(err) == 1 and "does not exist" in err[0]
        assert (list(out.iterdir()) == []) if existed else not out.exists()
        # another setting than the failed run's
        assert _run(capsys, _argv(tiny_facts, out, "--steps", "2", "--facts", "2", "--experiments",
                                  "consistency")) == (0, [])


def test_a_store_an_older_knowloc_left_with_settings_only_takes_another_setting(tmp_path, tiny_facts, capsys):
    """Before the identity was recorded with the first unit, a failed run left a store holding its settings."""
    out = tmp_path / "old"
    out.mkdir()
    with closing(sqlite3.connect(out / "results.sqlite")) as db, db:
        db.execute("CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE probes (model TEXT NOT NULL, fact_id TEXT NOT NULL, position INTEGER NOT NULL, "
                   "relation TEXT NOT NULL, subject TEXT NOT NULL, object TEXT NOT NULL, queries TEXT NOT NULL, "
                   "PRIMARY KEY (model, fact_id))")
        db.execute("""INSERT INTO config VALUES ('steps', '20')""")
    assert _run(capsys, _argv(tiny_facts, out, "--facts", "2", "--experiments", "consistency")) == (0, [])
    with closing(sqlite3.connect(out / "results.sqlite")) as db:
        assert json.loads(db.execute("SELECT value FROM config WHERE key = 'steps'").fetchone()[0]) == 3


# --------------------------------------------------------------------------- concurrent runs


def test_a_second_run_on_a_locked_study_is_refused(tmp_path, tiny_facts, clean, capsys):
    out = _copy(clean, tmp_path)
    with StudyLock(out):
        before = _snapshot(out)
        code, err = _run(capsys, _argv(tiny_facts, out))
        assert code == 2 and err == [f"knowloc: error: another knowloc process (pid {os.getpid()}) is running the "
                                     f"study in {out}; wait for it or use another --out"]
        assert _snapshot(out) == before
        assert _run(capsys, ["report", str(out)])[0] == 0  # readers need no lock
        assert _run(capsys, _argv(tiny_facts, out, "--dry-run"))[0] == 0  # nor the dry run (a copy)
    assert _run(capsys, _argv(tiny_facts, out)) == (0, [])


def test_the_lock_of_a_killed_process_is_released(tmp_path, tiny_facts, clean, capsys):
    out = _copy(clean, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from knowloc.study.store import StudyLock; StudyLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(600)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _run(capsys, _argv(tiny_facts, out))
        assert code == 2 and len(err) == 1 and f"(pid {holder.pid})" in err[0]
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        holder.wait()
    assert _run(capsys, _argv(tiny_facts, out)) == (0, [])


def test_an_interrupt_inside_a_ray_call_is_the_interrupt():
    """SIGINT during ray.wait arrives as SystemError("... returned a result with an exception set") caused by the
    handler's Interrupted (seen on a 2-worker ParaRel study); the executor re-raises the interrupt itself, so the
    run ends with the one "interrupted; ..." line, and any other SystemError stays one."""
    from knowloc.study.executors import unwrap_interrupt

    def ray_call(cause):
        try:
            raise cause
        except BaseException as exc:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from exc

    with pytest.raises(Interrupted) as caught:
        unwrap_interrupt(ray_call, Interrupted(signal.SIGTERM))
    assert caught.value.signum == signal.SIGTERM and caught.value.__cause__ is None
    with pytest.raises(SystemError):
        unwrap_interrupt(ray_call, ValueError("not an interrupt"))
    assert unwrap_interrupt(lambda a, b=0: a + b, 1, b=2) == 3


# --------------------------------------------------------------------------- one cleanup


def _record_cleanup(monkeypatch) -> list[str]:
    """What run_study's cleanup does, in order: the executor's close, the store's close, the lock's releases."""
    from knowloc.study import runner
    from knowloc.study.store import Store

    calls: list[str] = []
    real_make, real_close, real_release = runner.make_executor, Store.close, StudyLock.release

    def make_executor(ctx):
        executor = real_make(ctx)
        real_executor_close = executor.close

        def close():
            calls.append("executor.close")
            real_executor_close()
        executor.close = close
        return executor

    def store_close(self):
        calls.append("store.close")
        real_close(self)

    def release(self, remove=False):
        calls.append(f"lock.release(remove={remove})")
        real_release(self, remove)

    monkeypatch.setattr(runner, "make_executor", make_executor)
    monkeypatch.setattr(Store, "close", store_close)
    monkeypatch.setattr(StudyLock, "release", release)
    return calls


@pytest.mark.parametrize("ending", ["success", "failure", "interrupt"])
def test_the_cleanup_runs_once_in_one_order_however_the_run_ends(tmp_path, study_args, monkeypatch, ending):
    """Executor, then store, then lock, on success, a failure and an interrupt after units were stored (the
    directory and its units stay; an interrupt carries (stored, planned))."""
    from knowloc.errors import KnowlocError
    from knowloc.study import runner
    from knowloc.study.config import StudyConfig

    calls = _record_cleanup(monkeypatch)
    raised = {"failure": KnowlocError("disk full"), "interrupt": Interrupted()}.get(ending)
    if raised is not None:
        def failing_outputs(*_a, **_k):
            raise raised
        monkeypatch.setattr(runner, "write_outputs", failing_outputs)
    out = tmp_path / "new" / "study"
    config = StudyConfig(**study_args(out, facts=2, experiments=["consistency"]))
    if raised is None:
        assert runner.run_study(config, echo=lambda _: None) == out / "summary.json"
    else:
        with pytest.raises(type(raised)) as info:
            runner.run_study(config, echo=lambda _: None)
        assert info.value is raised
    assert calls == ["executor.close", "store.close", "lock.release(remove=False)"]
    assert _units(out / "results.sqlite") > 0 and (out / MARKER).is_file()
    if ending == "interrupt":
        stored, planned = raised.units
        assert stored == _units(out / "results.sqlite") and planned >= stored


def test_a_failure_before_any_unit_closes_the_store_then_discards_then_releases(tmp_path, study_args, monkeypatch):
    """No executor was made; the empty store is closed, then what the run made is removed (the lock released with
    its marker) and the lock released once more (a no-op)."""
    from knowloc.errors import KnowlocError
    from knowloc.study import runner
    from knowloc.study.config import StudyConfig

    calls = _record_cleanup(monkeypatch)

    def failing_probe(*_a, **_k):
        raise KnowlocError("no model")
    monkeypatch.setattr(runner, "probe_facts", failing_probe)
    out = tmp_path / "new" / "study"
    with pytest.raises(KnowlocError, match="no model"):
        runner.run_study(StudyConfig(**study_args(out)), echo=lambda _: None)
    assert calls == ["store.close", "lock.release(remove=True)", "lock.release(remove=False)"]
    assert not (tmp_path / "new").exists()
