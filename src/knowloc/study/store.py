"""The results store: one SQLite database (WAL) per study directory, and the directory's marker and lock.

Every unit of work (a model's probe, one query's attribution, one fact's experiment trials) is written in one
transaction, so a kill -9 or an interrupt loses at most the unit in flight (its transaction is rolled back) and
a rerun resumes where it stopped. Experiments always read attributions back from the store (never from memory),
so a resumed run computes exactly what an uninterrupted run computes. Full attribution tensors are kept as fp16
safetensors blobs in the same row as their knowledge-neuron set, so the two can never disagree.

A store is checked when it is opened (:class:`Store`): an SQLite header, ``PRAGMA quick_check``, knowloc's
tables and a schema version this knowloc reads (``PRAGMA user_version``; a store written before the version was
recorded has 0 and counts as the current version). Any failure, and any row that cannot be decoded later, is one
:class:`~knowloc.errors.KnowlocError` naming the file and what to do, never a traceback. SQLite keeps no checksum
of row contents, so a flipped bit inside a stored number or tensor is not detected.

The study's identity (its result-determining settings) is recorded in the same transaction as the first unit, so
a run that stores nothing (a bad model, an interrupt during the probe) leaves a store any other study may use.

:class:`StudyLock` marks a study directory (``DIR/.knowloc-study``) and holds an exclusive ``flock`` on that file
while a study runs in it; the kernel releases it when the process ends, however it ends (also on kill -9).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from knowloc.analysis import KnSet, Neuron, kn_list, kn_set
from knowloc.data.filtering import ProbedFact
from knowloc.errors import KnowlocError

SCHEMA_VERSION = 1  # PRAGMA user_version of the stores this knowloc writes (0: written before it was recorded)
MARKER = ".knowloc-study"  # in a study directory: marks it as a knowloc study; its flock is the study's lock
KNOWLOC_TABLES = {"config", "probes"}  # the first tables every knowloc store has (the others came later)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MARKER_TEXT = "knowloc study directory\n"
_MOVE_AWAY = "move it away to start the study over"

SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS probes (
    model TEXT NOT NULL, fact_id TEXT NOT NULL, position INTEGER NOT NULL, relation TEXT NOT NULL,
    subject TEXT NOT NULL, object TEXT NOT NULL, queries TEXT NOT NULL, PRIMARY KEY (model, fact_id));
CREATE TABLE IF NOT EXISTS attributions (
    model TEXT NOT NULL, method TEXT NOT NULL, fact_id TEXT NOT NULL, qidx INTEGER NOT NULL,
    prob REAL NOT NULL, kn TEXT NOT NULL, scores BLOB NOT NULL,
    PRIMARY KEY (model, method, fact_id, qidx));
CREATE TABLE IF NOT EXISTS trials (
    experiment TEXT NOT NULL, key TEXT NOT NULL, rows TEXT NOT NULL, PRIMARY KEY (experiment, key));
CREATE TABLE IF NOT EXISTS groups (
    model TEXT NOT NULL, method TEXT NOT NULL, fact_id TEXT NOT NULL, cs1 REAL, cs2 REAL, csp REAL, grp TEXT,
    kn TEXT NOT NULL, PRIMARY KEY (model, method, fact_id));
CREATE TABLE IF NOT EXISTS neurons (
    model TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL, promoted TEXT NOT NULL,
    suppressed TEXT NOT NULL, PRIMARY KEY (model, layer, idx));
CREATE TABLE IF NOT EXISTS reference (
    model TEXT NOT NULL, method TEXT NOT NULL, ridx INTEGER NOT NULL, prompt TEXT NOT NULL, relation TEXT,
    token INTEGER NOT NULL, token_text TEXT NOT NULL, prob REAL NOT NULL, kn TEXT NOT NULL, activations BLOB NOT NULL,
    PRIMARY KEY (model, method, ridx));
"""


def is_study_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a knowloc study: its marker, or a results store of a study run before the
    marker existed."""
    return (directory / MARKER).is_file() or (directory / "results.sqlite").is_file()


class StudyLock:
    """The exclusive lock of a study directory: an ``flock`` on ``DIR/.knowloc-study`` (created, and so marking
    the directory as a study, on first use), which holds the holder's pid for the message of a refused process.

    Example:
        >>> with StudyLock(Path("runs/s1")):
        ...     ...  # no other knowloc process runs a study in runs/s1 meanwhile
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / MARKER
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> "StudyLock":
        """Take the lock, or raise KnowlocError naming the process that holds it (never waits)."""
        while True:
            existed = self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise KnowlocError(f"cannot create {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise KnowlocError(f"another knowloc process{f' (pid {holder})' if holder else ''} is running the "
                                   f"study in {self.directory}; wait for it or use another --out") from None
            try:  # the file may have been removed (and another made) between open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd, self.created = fd, not existed
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_MARKER_TEXT.strip()}; lock held by pid {os.getpid()}\n".encode(), 0)
        return self

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            text = os.pread(fd, 200, 0).decode(errors="replace")
            return int(text.rsplit("pid", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def release(self, remove: bool = False) -> None:
        """Release the lock (``remove``: delete the marker first, for a directory this run leaves empty)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        else:  # the marker stays; the pid goes with the lock
            try:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, _MARKER_TEXT.encode(), 0)
            except OSError:
                pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Store:
    """A study's results store. Opening checks it (see the module docstring); ``verify=False`` skips the
    checks (a parallel worker opening a store its driver has just checked)."""

    def __init__(self, path: Path, readonly: bool = False, verify: bool = True):
        self.path = Path(path)
        self._identity: dict[str, str] | None = None  # recorded with the first write (check_config)
        self.db: Any = None
        try:
            existing = self.path.is_file() and self.path.stat().st_size > 0
            if existing and verify:
                with open(self.path, "rb") as handle:
                    if handle.read(16) != _SQLITE_MAGIC:
                        raise KnowlocError(f"{self.path} is not a knowloc results store (not an SQLite database); "
                                           f"{_MOVE_AWAY}")
            if readonly:  # workers of a parallel executor only read; the driver is the single writer
                if not self.path.is_file():
                    raise KnowlocError(f"cannot open results store {self.path}: no such file")
                # not mode=ro: a read-only connection leaves -wal / -shm files behind; query_only refuses writes,
                # and the last connection to close cleans up as a writer's does
                self.db = sqlite3.connect(self.path, timeout=60)
                self.db.execute("PRAGMA query_only = 1")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=60)
            if existing and verify:
                self._verify()
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                if self.db.execute("PRAGMA user_version").fetchone()[0] == 0:
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except KnowlocError:
            self.close()
            raise
        except sqlite3.OperationalError as exc:
            self.close()
            raise KnowlocError(f"cannot open results store {self.path}: {exc}") from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            self.close()
            raise self._damaged(exc) from None
        except OSError as exc:
            self.close()
            raise KnowlocError(f"cannot open results store {self.path}: {exc.strerror or exc}") from None

    def _verify(self) -> None:
        """quick_check, knowloc's tables and a schema version this knowloc reads; KnowlocError otherwise."""
        self.db.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
        try:
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)").fetchall()]
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            self.db.text_factory = str
        if problems != ["ok"]:
            raise self._damaged(problems[0])
        if tables and not KNOWLOC_TABLES <= tables:
            shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
            raise KnowlocError(f"{self.path} is another program's SQLite database (tables {shown}), not a knowloc "
                               f"results store; {_MOVE_AWAY}")
        if version > SCHEMA_VERSION:
            raise KnowlocError(f"{self.path} was written by a newer knowloc (store schema version {version}; this "
                               f"one reads up to {SCHEMA_VERSION}); upgrade knowloc, or {_MOVE_AWAY}")

    def _damaged(self, reason: object) -> KnowlocError:
        text = " ".join(str(reason).replace("*** in database main ***", "").split())
        if isinstance(reason, UnicodeDecodeError):
            text = "undecodable text"
        elif isinstance(reason, (SafetensorError, ValueError, KeyError)) and not isinstance(reason, sqlite3.Error):
            text = f"a stored row cannot be decoded: {type(reason).__name__}"
        return KnowlocError(f"results store {self.path} is damaged ({text[:100]}); {_MOVE_AWAY} (or restore a copy)")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def snapshot(self) -> bytes:
        """A consistent copy of the whole store, as the bytes of an SQLite file (SQLite's online backup into
        memory: what this connection has committed; a transaction in flight is not in it). A reader elsewhere
        writes them to a file of its own and opens it read-only (the Ray executor's workers do). The copy is in
        rollback-journal mode (header bytes 18 and 19 = 1, as ``PRAGMA journal_mode=DELETE`` leaves them), so
        reading it makes no ``-wal`` / ``-shm`` files."""
        copy = sqlite3.connect(":memory:")
        try:
            self.db.backup(copy)
            data = bytearray(copy.serialize())
        finally:
            copy.close()
        data[18:20] = b"\x01\x01"
        return bytes(data)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One transaction, with the study's identity when it is not recorded yet; an exception (an interrupt
        included) rolls it back."""
        try:
            with self.db:
                if self._identity:
                    self.db.execute("DELETE FROM config")
                    self.db.executemany("INSERT OR REPLACE INTO config VALUES (?, ?)", self._identity.items())
                yield self.db
            self._identity = None
        except sqlite3.OperationalError as exc:
            raise KnowlocError(f"cannot write results store {self.path}: {exc}") from None

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._transaction() as db:  # one transaction
            db.executemany(sql, rows)

    def is_empty(self) -> bool:
        """Whether nothing is recorded: no identity (written with the first unit) and no stored row."""
        return not self._holds_units() and self.db.execute("SELECT 1 FROM config LIMIT 1").fetchone() is None

    def _holds_units(self) -> bool:
        tables = [name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return any(self.db.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone() for name in tables
                   if name != "config")

    # --- config ---------------------------------------------------------------------------------------------
    def check_config(self, identity: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        """Refuse a study whose identity differs from the stored one; a store with none records this one with its
        first stored unit (so a run that stores nothing leaves the store free for any study).

        A setting the stored study predates counts as its legacy value or default (`defaults`), so stores of
        older versions stay usable; a key with no default that the store lacks (the data's content hash of a
        store written before it was recorded, checked by the caller) is recorded now. Stored keys that are no
        longer part of the identity (e.g. the data path) are ignored."""
        stored = dict(self.db.execute("SELECT key, value FROM config").fetchall())
        wanted = {k: json.dumps(v, sort_keys=True) for k, v in identity.items()}
        if not stored or not self._holds_units():  # (an older knowloc recorded the identity of a failed run)
            self._identity = wanted
            return
        for key, value in (defaults or {}).items():
            stored.setdefault(key, json.dumps(value, sort_keys=True))
        diffs = [f"{k}: stored {stored.get(k)} vs now {wanted[k]}"
                 for k in sorted(wanted) if k in stored and stored[k] != wanted[k]]
        if diffs:
            raise KnowlocError(f"{self.path.parent} holds a study with another configuration ({'; '.join(diffs)}); "
                               "use another --out or the same settings")
        new = [(k, v) for k, v in wanted.items() if k not in stored]
        if new:
            self._write("INSERT OR REPLACE INTO config VALUES (?, ?)", new)

    def config_value(self, key: str) -> Any:
        """A stored identity value (None when the store has none)."""
        row = self.db.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def probed_models(self) -> list[str]:
        return [m for (m,) in self.db.execute("SELECT DISTINCT model FROM probes ORDER BY model")]

    # --- probes ---------------------------------------------------------------------------------------------
    def has_probe(self, model: str) -> bool:
        return self.db.execute("SELECT 1 FROM probes WHERE model = ? LIMIT 1", (model,)).fetchone() is not None

    def save_probe(self, model: str, facts: Iterable[ProbedFact | dict]) -> None:
        """Store a model's probe, in data order: one row per fact, its queries as the JSON list of
        :meth:`ProbedQuery.to_json <knowloc.data.filtering.ProbedQuery.to_json>` objects (a dict is read as
        :meth:`ProbedFact.from_json <knowloc.data.filtering.ProbedFact.from_json>` first)."""
        facts = [f if isinstance(f, ProbedFact) else ProbedFact.from_json(f) for f in facts]
        self._write("INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (model, f.fact_id, pos, f.relation, f.subject, f.object, json.dumps([q.to_json() for q in f.queries]))
            for pos, f in enumerate(facts)])

    def probe(self, model: str) -> list[ProbedFact]:
        """A model's probed facts in data order (empty when it is not probed); stores written before a query's
        gold token and top predictions were kept read with their defaults."""
        cur = self.db.execute("SELECT fact_id, relation, subject, object, queries FROM probes WHERE model = ? "
                              "ORDER BY position", (model,))
        return [ProbedFact.from_json({"fact_id": f, "relation": r, "subject": s, "object": o,
                                      "queries": json.loads(q)}) for f, r, s, o, q in cur.fetchall()]

    # --- attributions ---------------------------------------------------------------------------------------
    def done_attributions(self, model: str, method: str) -> set[tuple[str, int]]:
        cur = self.db.execute("SELECT fact_id, qidx FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        return {(f, q) for f, q in cur.fetchall()}

    def save_attribution(self, model: str, method: str, fact_id: str, qidx: int, prob: float,
                         kn: list[Neuron], scores: torch.Tensor) -> None:
        blob = st_save({"scores": scores.to(torch.float16).contiguous()})
        self._write("INSERT OR REPLACE INTO attributions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(model, method, fact_id, qidx, prob, json.dumps([list(n) for n in kn]), blob)])

    def kn_sets(self, model: str, method: str) -> dict[str, dict[int, KnSet]]:
        """Every fact's KN sets, by query index."""
        out: dict[str, dict[int, KnSet]] = {}
        cur = self.db.execute("SELECT fact_id, qidx, kn FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        for fact_id, qidx, kn in cur.fetchall():
            out.setdefault(fact_id, {})[qidx] = kn_set(json.loads(kn))
        return out

    def kn_lists_all(self, model: str, method: str) -> dict[str, dict[int, list[Neuron]]]:
        """Every fact's KN lists in score order, by query index."""
        out: dict[str, dict[int, list[Neuron]]] = {}
        cur = self.db.execute("SELECT fact_id, qidx, kn FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        for fact_id, qidx, kn in cur.fetchall():
            out.setdefault(fact_id, {})[qidx] = kn_list(json.loads(kn))
        return out

    def kn_lists(self, model: str, method: str, fact_id: str) -> dict[int, list[Neuron]]:
        """A fact's KN lists in score order."""
        cur = self.db.execute("SELECT qidx, kn FROM attributions WHERE model = ? AND method = ? AND fact_id = ?",
                              (model, method, fact_id))
        return {q: kn_list(json.loads(kn)) for q, kn in cur.fetchall()}

    def scores(self, model: str, method: str, fact_id: str) -> dict[int, torch.Tensor]:
        """The fact's full attribution tensors (float32 from the stored fp16), by query index."""
        cur = self.db.execute("SELECT qidx, scores FROM attributions WHERE model = ? AND method = ? AND "
                              "fact_id = ?", (model, method, fact_id))
        return {q: st_load(blob)["scores"].float() for q, blob in cur.fetchall()}

    def attributed_methods(self, model: str) -> list[str]:
        """The attribution methods with at least one stored attribution of ``model``, sorted by name.

        Args:
            model: a model name as the study stored it (see :meth:`probed_models`).

        Returns:
            Distinct method names, e.g. ``["amig", "ig"]``; empty when the model has no attribution yet.

        Example:
            >>> store = Store(Path("runs/study/results.sqlite"), readonly=True)
            >>> {model: store.attributed_methods(model) for model in store.probed_models()}
        """
        cur = self.db.execute("SELECT DISTINCT method FROM attributions WHERE model = ? ORDER BY method", (model,))
        return [m for (m,) in cur.fetchall()]

    # --- reference attributions (neuron specificity profile) ------------------------------------------------
    def done_reference(self, model: str, method: str) -> set[int]:
        cur = self.db.execute("SELECT ridx FROM reference WHERE model = ? AND method = ?", (model, method))
        return {r for (r,) in cur.fetchall()}

    def save_reference(self, model: str, method: str, ridx: int, row: dict) -> None:
        """One reference item's attribution: its prompt, its relation (None for a neutral prompt), the attributed
        token, the objective, the KN list and the |activations| at the last position (fp16, [layers, neurons])."""
        blob = st_save({"activations": row["activations"].to(torch.float16).contiguous()})
        self._write("INSERT OR REPLACE INTO reference VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(model, method, ridx, row["prompt"], row["relation"], int(row["token"]), row["token_text"],
                      float(row["prob"]), json.dumps([list(n) for n in row["kn"]]), blob)])

    def reference(self, model: str, method: str) -> list[dict]:
        """The stored reference attributions of a model and method, by reference index."""
        cur = self.db.execute("SELECT ridx, prompt, relation, token, token_text, prob, kn, activations FROM "
                              "reference WHERE model = ? AND method = ? ORDER BY ridx", (model, method))
        return [{"ridx": r, "prompt": p, "relation": rel, "token": t, "token_text": tt, "prob": pr,
                 "kn": kn_list(json.loads(kn)), "activations": st_load(blob)["activations"].float()}
                for r, p, rel, t, tt, pr, kn, blob in cur.fetchall()]

    # --- groups (K_C / K_I of the last run's view) ------------------------------------------------------------
    def save_groups(self, model: str, method: str, rows: list[dict]) -> None:
        """Replace a model's and method's stored facts (scores, group and the KN lists the experiments used,
        {qidx: [(layer, index), ...]}) in one transaction."""
        with self._transaction() as db:
            db.execute("DELETE FROM groups WHERE model = ? AND method = ?", (model, method))
            db.executemany("INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (model, method, r["fact_id"], r.get("cs1"), r.get("cs2"), r.get("csp"), r.get("group"),
                 json.dumps({str(q): [list(n) for n in kn] for q, kn in r["kn"].items()})) for r in rows])

    def groups(self, model: str, method: str) -> dict[str, dict]:
        """{fact_id: {"cs1", "cs2", "csp", "group", "kn": {qidx: [(layer, index), ...]}}} as the last run
        stored them (empty for a store that predates the table)."""
        try:
            cur = self.db.execute("SELECT fact_id, cs1, cs2, csp, grp, kn FROM groups WHERE model = ? AND "
                                  "method = ?", (model, method))
        except sqlite3.OperationalError:  # a read-only store written before the table existed
            return {}
        return {f: {"cs1": a, "cs2": b, "csp": c, "group": g,
                    "kn": {int(q): kn_list(v) for q, v in json.loads(kn).items()}}
                for f, a, b, c, g, kn in cur.fetchall()}

    # --- neuron descriptions (knowloc.models.neuron) ----------------------------------------------------------
    def described_neurons(self, model: str) -> set[Neuron]:
        return {Neuron(l, i) for l, i in self.db.execute("SELECT layer, idx FROM neurons WHERE model = ?", (model,))}

    def save_neuron_descriptions(self, model: str, rows: list[dict]) -> None:
        self._write("INSERT OR REPLACE INTO neurons VALUES (?, ?, ?, ?, ?)", [
            (model, r["layer"], r["index"], json.dumps(r["promoted"]), json.dumps(r["suppressed"])) for r in rows])

    def neuron_descriptions(self, model: str) -> dict[Neuron, dict]:
        """{(layer, index): {"promoted", "suppressed"}} of the neurons the study described."""
        try:
            cur = self.db.execute("SELECT layer, idx, promoted, suppressed FROM neurons WHERE model = ?", (model,))
        except sqlite3.OperationalError:  # a read-only store written before the table existed
            return {}
        return {Neuron(l, i): {"promoted": json.loads(p), "suppressed": json.loads(s)} for l, i, p, s in cur.fetchall()}

    # --- experiment trials -------------------------------------------------------------------------------------
    def done_trials(self, experiment: str) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM trials WHERE experiment = ?", (experiment,))}

    def save_trials(self, experiment: str, key: str, rows: list[dict]) -> None:
        self._write("INSERT OR REPLACE INTO trials VALUES (?, ?, ?)", [(experiment, key, json.dumps(rows))])

    def trials(self, experiment: str) -> dict[str, list[dict]]:
        cur = self.db.execute("SELECT key, rows FROM trials WHERE experiment = ? ORDER BY key", (experiment,))
        return {k: json.loads(r) for k, r in cur.fetchall()}


def _guarded(method):
    """A Store method whose failures are one KnowlocError naming the store: a damaged store (SQLite's "malformed"
    errors, text that is not UTF-8, rows that do not decode) says so; any other SQLite error (e.g. a store
    locked for longer than the timeout) is "cannot read". (Methods that expect an OperationalError, a table an
    older store lacks, catch it themselves.)"""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except KnowlocError:
            raise
        except sqlite3.OperationalError as exc:
            if "decode" in str(exc):  # "Could not decode to UTF-8 column ..."
                raise self._damaged("text that is not UTF-8") from None
            raise KnowlocError(f"cannot read results store {self.path}: {exc}") from None
        except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError, KeyError, SafetensorError) as exc:
            raise self._damaged(exc) from None
    return guarded


for _name, _method in list(vars(Store).items()):
    if callable(_method) and not _name.startswith("_") and _name != "close":
        setattr(Store, _name, _guarded(_method))
