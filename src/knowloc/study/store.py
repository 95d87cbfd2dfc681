"""The results store: one SQLite database (WAL) per study directory.

Every unit of work (a model's probe, one query's attribution, one fact's experiment trials) is written in one
transaction, so a kill -9 loses at most the unit in flight and a rerun resumes where it stopped. Experiments
always read attributions back from the store (never from memory), so a resumed run computes exactly what an
uninterrupted run computes. Full attribution tensors are kept as fp16 safetensors blobs in the same row as
their knowledge-neuron set, so the two can never disagree.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from knowloc.errors import KnowlocError

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


class Store:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        try:
            if readonly:  # workers of a parallel executor only read; the driver is the single writer
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise KnowlocError(f"cannot open results store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            with self.db:  # one transaction
                self.db.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            raise KnowlocError(f"cannot write results store {self.path}: {exc}") from None

    # --- config ---------------------------------------------------------------------------------------------
    def check_config(self, identity: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        """Record the study's identity on first use; refuse a different one later.

        A setting the stored study predates counts as its legacy value or default (`defaults`), so stores of
        older versions stay usable; a key with no default that the store lacks (the data's content hash of a
        store written before it was recorded, checked by the caller) is recorded now. Stored keys that are no
        longer part of the identity (e.g. the data path) are ignored."""
        stored = dict(self.db.execute("SELECT key, value FROM config").fetchall())
        wanted = {k: json.dumps(v, sort_keys=True) for k, v in identity.items()}
        if not stored:
            self._write("INSERT INTO config VALUES (?, ?)", wanted.items())
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

    def save_probe(self, model: str, rows: list[dict]) -> None:
        self._write("INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (model, r["fact_id"], pos, r["relation"], r["subject"], r["object"], json.dumps(r["queries"]))
            for pos, r in enumerate(rows)])

    def probe(self, model: str) -> list[dict]:
        cur = self.db.execute("SELECT fact_id, relation, subject, object, queries FROM probes WHERE model = ? "
                              "ORDER BY position", (model,))
        return [{"fact_id": f, "relation": r, "subject": s, "object": o, "queries": json.loads(q)}
                for f, r, s, o, q in cur.fetchall()]

    # --- attributions ---------------------------------------------------------------------------------------
    def done_attributions(self, model: str, method: str) -> set[tuple[str, int]]:
        cur = self.db.execute("SELECT fact_id, qidx FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        return {(f, q) for f, q in cur.fetchall()}

    def save_attribution(self, model: str, method: str, fact_id: str, qidx: int, prob: float,
                         kn: list[tuple[int, int]], scores: torch.Tensor) -> None:
        blob = st_save({"scores": scores.to(torch.float16).contiguous()})
        self._write("INSERT OR REPLACE INTO attributions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(model, method, fact_id, qidx, prob, json.dumps([list(n) for n in kn]), blob)])

    def kn_sets(self, model: str, method: str) -> dict[str, dict[int, set[tuple[int, int]]]]:
        out: dict[str, dict[int, set[tuple[int, int]]]] = {}
        cur = self.db.execute("SELECT fact_id, qidx, kn FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        for fact_id, qidx, kn in cur.fetchall():
            out.setdefault(fact_id, {})[qidx] = {tuple(n) for n in json.loads(kn)}
        return out

    def kn_lists_all(self, model: str, method: str) -> dict[str, dict[int, list[tuple[int, int]]]]:
        """Every fact's KN lists in score order, by query index."""
        out: dict[str, dict[int, list[tuple[int, int]]]] = {}
        cur = self.db.execute("SELECT fact_id, qidx, kn FROM attributions WHERE model = ? AND method = ?",
                              (model, method))
        for fact_id, qidx, kn in cur.fetchall():
            out.setdefault(fact_id, {})[qidx] = [tuple(n) for n in json.loads(kn)]
        return out

    def kn_lists(self, model: str, method: str, fact_id: str) -> dict[int, list[tuple[int, int]]]:
        """A fact's KN lists in score order."""
        cur = self.db.execute("SELECT qidx, kn FROM attributions WHERE model = ? AND method = ? AND fact_id = ?",
                              (model, method, fact_id))
        return {q: [tuple(n) for n in json.loads(kn)] for q, kn in cur.fetchall()}

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
                 "kn": [tuple(n) for n in json.loads(kn)], "activations": st_load(blob)["activations"].float()}
                for r, p, rel, t, tt, pr, kn, blob in cur.fetchall()]

    # --- groups (K_C / K_I of the last run's view) ------------------------------------------------------------
    def save_groups(self, model: str, method: str, rows: list[dict]) -> None:
        """Replace a model's and method's stored facts (scores, group and the KN lists the experiments used,
        {qidx: [(layer, index), ...]}) in one transaction."""
        try:
            with self.db:
                self.db.execute("DELETE FROM groups WHERE model = ? AND method = ?", (model, method))
                self.db.executemany("INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                    (model, method, r["fact_id"], r.get("cs1"), r.get("cs2"), r.get("csp"), r.get("group"),
                     json.dumps({str(q): [list(n) for n in kn] for q, kn in r["kn"].items()})) for r in rows])
        except sqlite3.OperationalError as exc:
            raise KnowlocError(f"cannot write results store {self.path}: {exc}") from None

    def groups(self, model: str, method: str) -> dict[str, dict]:
        """{fact_id: {"cs1", "cs2", "csp", "group", "kn": {qidx: [(layer, index), ...]}}} as the last run
        stored them (empty for a store that predates the table)."""
        try:
            cur = self.db.execute("SELECT fact_id, cs1, cs2, csp, grp, kn FROM groups WHERE model = ? AND "
                                  "method = ?", (model, method))
        except sqlite3.OperationalError:  # a read-only store written before the table existed
            return {}
        return {f: {"cs1": a, "cs2": b, "csp": c, "group": g,
                    "kn": {int(q): [tuple(n) for n in v] for q, v in json.loads(kn).items()}}
                for f, a, b, c, g, kn in cur.fetchall()}

    # --- neuron descriptions (knowloc.models.neuron) ----------------------------------------------------------
    def described_neurons(self, model: str) -> set[tuple[int, int]]:
        return {(l, i) for l, i in self.db.execute("SELECT layer, idx FROM neurons WHERE model = ?", (model,))}

    def save_neuron_descriptions(self, model: str, rows: list[dict]) -> None:
        self._write("INSERT OR REPLACE INTO neurons VALUES (?, ?, ?, ?, ?)", [
            (model, r["layer"], r["index"], json.dumps(r["promoted"]), json.dumps(r["suppressed"])) for r in rows])

    def neuron_descriptions(self, model: str) -> dict[tuple[int, int], dict]:
        """{(layer, index): {"promoted", "suppressed"}} of the neurons the study described."""
        try:
            cur = self.db.execute("SELECT layer, idx, promoted, suppressed FROM neurons WHERE model = ?", (model,))
        except sqlite3.OperationalError:  # a read-only store written before the table existed
            return {}
        return {(l, i): {"promoted": json.loads(p), "suppressed": json.loads(s)} for l, i, p, s in cur.fetchall()}

    # --- experiment trials -------------------------------------------------------------------------------------
    def done_trials(self, experiment: str) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM trials WHERE experiment = ?", (experiment,))}

    def save_trials(self, experiment: str, key: str, rows: list[dict]) -> None:
        self._write("INSERT OR REPLACE INTO trials VALUES (?, ?, ?)", [(experiment, key, json.dumps(rows))])

    def trials(self, experiment: str) -> dict[str, list[dict]]:
        cur = self.db.execute("SELECT key, rows FROM trials WHERE experiment = ? ORDER BY key", (experiment,))
        return {k: json.loads(r) for k, r in cur.fetchall()}
