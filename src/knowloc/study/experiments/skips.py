"""The editing trials a study could not make, counted so that the tables say so instead of only showing a smaller n.

A trial is stored with ``skipped: True`` when :meth:`knowloc.editing.session.EditSession.measure` cannot make the
edit: its neuron set is empty (``n_neurons`` 0: an empty N_cap, a CAS selection of nothing, a query whose KNs the
filter removed), or it is an update and the fact's relation has no other object to update to (one whose first
token differs from the gold object's: :func:`knowloc.editing.session.choose_new_object`), which skips every
update of that fact.
"""

from __future__ import annotations

NO_TARGET = "their relation has no other object to update to (one whose first token differs from the gold object's)"


def _matching(rows: list[dict], match: dict) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def no_target(row: dict) -> bool:
    """A skipped update whose neuron set was not empty: the fact has no new object."""
    return bool(row.get("skipped")) and row.get("operation", "update") == "update" and row.get("n_neurons", 0) > 0


def skip_counts(fact_trials: list[list[dict]], **match: object) -> dict:
    """``n_skipped`` (trials matching `match` that were skipped, over the given facts), ``n_no_target`` (of them,
    updates of facts without a new object), ``n_skipped_facts`` (facts with matching trials, all skipped) and
    ``n_no_target_facts`` (facts whose matching updates were skipped for want of a new object)."""
    chosen = [_matching(rows, match) for rows in fact_trials]
    return {"n_skipped": sum(bool(r.get("skipped")) for rows in chosen for r in rows),
            "n_no_target": sum(no_target(r) for rows in chosen for r in rows),
            "n_skipped_facts": sum(bool(rows) and all(r.get("skipped") for r in rows) for rows in chosen),
            "n_no_target_facts": no_target_facts(chosen)}


def no_target_facts(fact_trials: list[list[dict]]) -> int:
    """Facts whose updates were skipped for want of a new object."""
    return sum(any(no_target(r) for r in rows) for rows in fact_trials)


def trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def facts(n: int) -> str:
    return f"{n} fact" if n == 1 else f"{n} facts"
