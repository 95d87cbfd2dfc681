"""Findings: one plain sentence per question of the paper, from a study's summary, with its number, interval
and n, and whether the data support, contradict or cannot decide the paper's claim (and why).

The claims (Chen et al., ICLR 2025) and the rules (95% bootstrap intervals over facts; MIN_N facts per group):

1. *Paraphrases share knowledge neurons beyond chance* (the premise of knowledge localization): real facts'
   CS exceeds the template-matched null baseline. Supports: gap > 0 with permutation p < 0.05; contradicts:
   gap <= 0 with p >= 0.05 (the null baseline is knowloc's addition to the paper).
2. *Inconsistent knowledge (K_I) is a substantial share of facts*: supports when the K_I fraction's interval
   lies above 0.2; contradicts when it lies below 0.1.
3. *Editing a query's own KNs generalizes to its paraphrases for K_C but not for K_I*: Gen of erasing N_i,
   K_C minus K_I. Supports when the interval lies above 0; contradicts when it lies below 0.05 (it rules out
   a gap of 5 points or more).
4. *KNs belong to the query (Query-KN mapping)*: suppressing a query's own KNs lowers P(gold) more than
   suppressing a neighbor query's (own minus neighbor, paired within facts). Supports when the interval lies
   below 0; contradicts when it lies above 0.
5. *Attention to the subject selects the KNs (knowledge synapses)*: suppressing subject-related synapses
   changes the KN activations more than suppressing as many irrelevant ones (related minus irrelevant, paired).
   Supports when the interval lies below 0; contradicts when it lies above 0.
6. *CAS edits better than N_i and N_g* (the paper: about +8% and +9% Avg): CAS minus each baseline, erase,
   transductive, free budget. Supports when the interval lies above 0; contradicts when it lies below 0.

Anything else (an interval that includes the boundary, too few facts, an experiment not run) cannot decide,
and the sentence says why. A question answered per method (and group) gets one verdict: the common one when all
agree, "mixed" when some comparisons support and others contradict, and "partly supports" / "partly
contradicts" when the rest cannot decide; the reason counts each kind.
"""

from __future__ import annotations

import math
from typing import Any

from knowloc.analysis import MIN_N

SUPPORTS, CONTRADICTS, UNDECIDED = "supports", "contradicts", "cannot decide"
MIXED, PARTLY_SUPPORTS, PARTLY_CONTRADICTS = "mixed", "partly supports", "partly contradicts"


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _num(x: Any, digits: int = 2, signed: bool = True) -> str:
    return "n/a" if not _ok(x) else (f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}")


def _ci(lo: Any, hi: Any, digits: int = 2, signed: bool = True) -> str:
    return f"[{_num(lo, digits, signed)}, {_num(hi, digits, signed)}]" if _ok(lo) and _ok(hi) else "(no interval)"


def _verdict(lo: Any, hi: Any, n: int, support_above: float | None = None, support_below: float | None = None,
             contradict_above: float | None = None, contradict_below: float | None = None) -> tuple[str, str]:
    """(verdict, reason) from an interval [lo, hi] over n facts: supports when it lies entirely above
    `support_above` (or below `support_below`), contradicts when it lies entirely above `contradict_above` (or
    below `contradict_below`), else cannot decide."""
    if n < MIN_N:
        return UNDECIDED, f"fewer than {MIN_N} facts (n = {n})"
    if not (_ok(lo) and _ok(hi)):
        return UNDECIDED, "no interval"
    if support_above is not None and lo > support_above or support_below is not None and hi < support_below:
        return SUPPORTS, ""
    if contradict_above is not None and lo > contradict_above or contradict_below is not None and hi < contradict_below:
        return CONTRADICTS, ""
    return UNDECIDED, "the interval is too wide for either rule"


def _combine(parts: list[tuple[str, str]]) -> tuple[str, str]:
    """One verdict from the (verdict, reason) of each method / group: the common verdict when they agree;
    "mixed" when some support and some contradict; "partly supports" / "partly contradicts" when the others
    cannot decide. The reason counts the comparisons of each kind."""
    verdicts = [v for v, _ in parts]
    if len(set(verdicts)) == 1:
        return parts[0][0], "; ".join(sorted({r for _, r in parts if r}))
    n_yes, n_no, n_open = (verdicts.count(v) for v in (SUPPORTS, CONTRADICTS, UNDECIDED))
    counts = ", ".join(f"{k} {word}" for k, word in ((n_yes, "support"), (n_no, "contradict"),
                                                     (n_open, "cannot decide")) if k)
    if n_yes and n_no:
        return MIXED, f"the methods or groups disagree: {counts} of {len(parts)}"
    return (PARTLY_SUPPORTS if n_yes else PARTLY_CONTRADICTS), f"{counts} of {len(parts)}"


def _pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["model"], r["method"]) for r in rows))


def findings(summary: dict) -> list[dict]:
    """The findings of a study summary (summary.json's content), in the paper's order; each
    ``{"question", "claim", "verdict", "text", "reason"}`` with verdict supports / contradicts / cannot decide /
    mixed / partly supports / partly contradicts (see :func:`_combine`) / not run."""
    cfg = summary.get("config", {})
    view = "on" if float(cfg.get("specificity", 1.0) or 1.0) < 1 else "off"
    out = []

    def add(question: str, claim: str, parts: list[tuple[str, tuple[str, str]]], missing_key: str | None) -> None:
        if missing_key is not None:
            out.append({"question": question, "claim": claim, "verdict": "not run",
                        "text": f"Not measured: the study has no {missing_key} results.", "reason": "not run"})
            return
        verdict, reason = _combine([v for _, v in parts]) if parts else ("not run", "no rows")
        out.append({"question": question, "claim": claim, "verdict": verdict,
                    "text": " ".join(text for text, _ in parts), "reason": reason})

    rows = [r for r in summary.get("consistency", []) if r.get("threshold_kind") == "static"
            and r.get("specificity", "off") == view]
    parts = []
    for r in rows:
        if not _ok(r.get("null_gap")):
            parts.append((f"{r['method']}: no null baseline ({r.get('note') or 'no pseudo-fact'}).",
                          (UNDECIDED, r.get("note") or "no null baseline")))
            continue
        p = r.get("null_p")
        verdict = (UNDECIDED, r.get("note") or "no test") if not _ok(p) else \
            (SUPPORTS, "") if r["null_gap"] > 0 and p < 0.05 else \
            (CONTRADICTS, "") if r["null_gap"] <= 0 and p >= 0.05 else (UNDECIDED, "gap and test disagree")
        parts.append((f"{r['method']}: mean CS exceeds the template-matched null by {_num(r['null_gap'], 3)} "
                       f"(permutation p = {p:.2g}, {r['n_facts']} facts, {r['n_null']} pseudo-facts)."
                       if _ok(p) else f"{r['method']}: gap {_num(r['null_gap'], 3)}, no test.", verdict))
    add("Do a fact's paraphrases share knowledge neurons beyond chance?",
        "paraphrases share KNs (the premise of knowledge localization)", parts,
        None if rows else "consistency")

    parts = [(f"{r['method']}: {_num(r['k_i_fraction'], 2, False)} {_ci(r['k_i_ci_low'], r['k_i_ci_high'], 2, False)} "
              f"of {r['n_facts']} facts are K_I (static tau {r['threshold']:.2f}).",
              _verdict(r["k_i_ci_low"], r["k_i_ci_high"], r["n_facts"], support_above=0.2, contradict_below=0.1))
             for r in rows]
    add("What share of facts is inconsistent (K_I)?", "K_I is a substantial share of facts (> 20%)", parts,
        None if rows else "consistency")

    rows = [r for r in summary.get("modification_contrasts", []) if r.get("operation") == "erase"]
    parts = [(f"{r['method']}: Gen after erasing N_i is {_num(r['k_c'], 2, False)} for K_C and "
              f"{_num(r['k_i'], 2, False)} for K_I, a difference of {_num(r['diff'])} {_ci(r['ci_low'], r['ci_high'])} "
              f"({r['n_k_c']} / {r['n_k_i']} facts).",
              _verdict(r["ci_low"], r["ci_high"], min(r["n_k_c"], r["n_k_i"]), support_above=0.0,
                       contradict_below=0.05))
             for r in rows]
    add("Do edits of one query's KNs generalize to its paraphrases, K_C vs K_I?",
        "K_C generalizes, K_I does not (Gen K_C > Gen K_I)", parts,
        None if "modification_contrasts" in summary else "modification")

    rows = [r for r in summary.get("query_mapping_contrasts", []) if r.get("intervention") == "suppress"]
    parts = [(f"{r['method']} {r['group']}: suppressing the own KNs changes P(gold) by {_num(r['diff'], 3)} "
              f"{_ci(r['ci_low'], r['ci_high'], 3)} relative to a neighbor's KNs (n {r['n']}).",
              _verdict(r["ci_low"], r["ci_high"], r["n"], support_below=0.0, contradict_above=0.0)) for r in rows]
    add("Do a query's own KNs matter more than its neighbors'?", "KNs belong to the query (Query-KN mapping)",
        parts, None if "query_mapping_contrasts" in summary else "query-mapping")

    rows = [r for r in summary.get("attention_contrasts", []) if r.get("alpha") == 0.0
            and r.get("metric") == "dkn_activation"]
    parts = [(f"{r['method']} {r['group']}: suppressing subject-related synapses changes the KN activations by "
              f"{_num(r['diff'], 3)} {_ci(r['ci_low'], r['ci_high'], 3)} relative to irrelevant ones (n {r['n']}).",
              _verdict(r["ci_low"], r["ci_high"], r["n"], support_below=0.0, contradict_above=0.0)) for r in rows]
    add("Does attention to the subject select the KNs?", "knowledge synapses select the KNs", parts,
        None if "attention_contrasts" in summary else "attention")

    rows = [r for r in summary.get("cas_comparison", []) if r.get("operation") == "erase"
            and r.get("protocol") == "transductive" and r.get("budget") == "free"]
    parts = [(f"{r['method']} {r['group']}: Avg of CAS minus {r['baseline']} is {_num(r['avg_diff'], 3)} "
              f"{_ci(r['ci_low'], r['ci_high'], 3)} (n {r['n']}).",
              _verdict(r["ci_low"], r["ci_high"], r["n"], support_above=0.0, contradict_below=0.0)) for r in rows]
    add("Does CAS beat N_i and N_g?", "CAS edits better (about +8% over N_i, +9% over N_g Avg)", parts,
        None if "cas_comparison" in summary else "cas")
    return out


def markdown(items: list[dict]) -> list[str]:
    """The findings as a Markdown section."""
    lines = ["## Findings", "", "Each question of the paper, answered from this study (95% bootstrap intervals "
             f"over facts; none below {MIN_N} facts); the verdict is about the paper's claim.", ""]
    for k, f in enumerate(items, start=1):
        why = f" ({f['reason']})" if f["reason"] and f["verdict"] not in (SUPPORTS, CONTRADICTS) else ""
        lines.append(f"{k}. **{f['question']}** Paper: {f['claim']}. Verdict: **{f['verdict']}**{why}. {f['text']}")
    return lines + [""]
