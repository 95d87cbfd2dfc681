"""What the results store holds per fact and per neuron: the per-fact drill-down and the heatmaps' neurons.

The drill-down shows the groups and KN sets the experiments used, as the study stored them
(:func:`knowloc.study.groups.save_groups`); it computes none itself. A store written before knowloc stored groups
has none: the drill-down is then one line that says to rerun the study (:data:`OLD_STORE`).
"""

from __future__ import annotations


from knowloc.data.filtering import ProbedFact
from knowloc.report.tables import esc, render_table
from knowloc.study.config import StudyConfig
from knowloc.study.facts import select_facts
from knowloc.study.registry import experiments
from knowloc.study.reader import StudyReader
from knowloc.study.tables import DASH, Column, fmt_num, missing

KN_SHOWN = 30  # neurons listed per query in the drill-down
OLD_STORE = ("This results store predates stored groups (written by an older knowloc): no groups or KN sets as the "
             "experiments used them; rerun the study (the same command, --out {out}) to show them here.")


# --------------------------------------------------------------------------- KN lists


def _kn_table(rows: list[dict], descriptions: dict) -> str:
    """The drill-down's KN lists: like :func:`render_table`, with the neuron list truncated to KN_SHOWN."""
    head = "".join(f"<th>{h}</th>" for h in ("query", "prompt", "|KN|", "knowledge neurons"))
    body = "".join(f'<tr><td>{esc(r["q"])}</td><td class="wrap">{esc(r["prompt"])}</td><td class="num">{r["n"]}'
                   f'</td><td class="wrap">{_kn_text(r["neurons"], descriptions)}</td></tr>' for r in rows)
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _describe(description: dict | None, k: int = 5) -> str:
    if not description:
        return ""
    return ("promotes " + ", ".join(repr(t) for t, _ in description["promoted"][:k]) + "; suppresses "
            + ", ".join(repr(t) for t, _ in description["suppressed"][:k]))


def _kn_text(neurons: list, descriptions: dict | None = None) -> str:
    """A KN list, each neuron with what its value vector writes as a hover title (when the study stored it)."""
    descriptions = descriptions or {}
    spans = []
    for l, i in neurons[:KN_SHOWN]:
        title = _describe(descriptions.get((l, i)))
        spans.append(f'<span title="{esc(title)}">L{l}#{i}</span>' if title else f"L{l}#{i}")
    more = f" &hellip; (+{len(neurons) - KN_SHOWN} more)" if len(neurons) > KN_SHOWN else ""
    return f'<span class="kn">{", ".join(spans) if spans else "(empty)"}{more}</span>'


# --------------------------------------------------------------------------- the heatmaps' neurons


def figure_neurons_section(study: StudyReader, summary: dict) -> str:
    """The neurons drawn in the heatmaps, with the tokens their value vectors promote and suppress."""
    if not study.has_store:
        return ""
    store = study.store()
    rows = []
    described: dict[str, dict] = {}
    for experiment in experiments():
        for r in summary.get(experiment.shown_neurons, []) if experiment.shown_neurons else []:
            described.setdefault(r["model"], store.neuron_descriptions(r["model"]))
            rows.append({"figure": f"kn_heatmap_{r['group']}", "fact": r.get("fact_id"), **r})
    if not rows:
        return ""
    for r in rows:
        d = described.get(r["model"], {}).get((r["layer"], r["index"]))
        r["promoted"] = ", ".join(repr(t) for t, _ in d["promoted"][:6]) if d else DASH
        r["suppressed"] = ", ".join(repr(t) for t, _ in d["suppressed"][:6]) if d else DASH
    return ('<p class="muted">What each neuron of the heatmaps writes to the vocabulary: the tokens its value '
            "vector promotes and suppresses through the final norm and the unembedding (`knowloc neuron` prints "
            "more).</p>" + render_table(rows, [
                Column("figure", "figure"), Column("fact", "fact"),
                Column("neuron", "layer", value=lambda r: f"L{r['layer']}#{r['index']}"),
                Column("promotes", "promoted", wrap=True), Column("suppresses", "suppressed", wrap=True)]))


# --------------------------------------------------------------------------- per fact


def facts_section(study: StudyReader, config: StudyConfig) -> str:
    """Every studied fact of every model: paraphrases, answers, per method the KN sets, CS scores and group."""
    if not study.has_store:
        return '<p class="notrun">No results store (results.sqlite) in this directory.</p>'
    out_dir = study.directory
    models = list(config.models)
    methods = list(config.methods)
    score = config.cs_score
    store = study.store()
    parts = []
    for model in models:
        probes = store.probe(model)
        facts = select_facts(probes, int(config.min_known), config.facts, int(config.seed))
        probe_of = {probe.fact_id: probe for probe in probes}
        descriptions = store.neuron_descriptions(model)
        per_method = {method: store.groups(model, method) for method in methods}
        if facts and not all(per_method.values()):  # a study stores every studied fact's group
            return f'<p class="notrun">{OLD_STORE.format(out=esc(str(out_dir)))}</p>'
        parts.append(f"<h3>{esc(model)} &mdash; {len(facts)} facts</h3>")
        if not facts:
            parts.append('<p class="muted">No fact is known in enough paraphrases.</p>')
        for fact in facts:
            parts.append(_fact_html(model, methods, fact, probe_of.get(fact.fact_id), per_method, score,
                                    descriptions))
    intro = (f"<p>Every studied fact: its paraphrases (q<sub>i</sub> numbers the answered ones, the neighbor "
             f"queries of the study), per method the KN set of each query that the experiments used (layer#neuron "
             f"in attribution order, non-specific neurons removed, at most {KN_SHOWN} shown), the consistency "
             f"scores CS1, CS2, CS<sub>p</sub> (p = {fmt_num(float(config.p), 2)}) and the group under the study's "
             f"<b>{esc(config.split)}</b> split of {esc(score.upper())}.</p>")
    return "\n".join([intro] + parts)


def _fact_html(model: str, methods: list[str], fact, probe: ProbedFact | None, per_method: dict, score: str,
               descriptions: dict) -> str:
    badges = []
    for method in methods:
        view = per_method[method].get(fact.fact_id, {})
        g = view.get("group")
        value = view.get(score)
        badges.append(f'{esc(method)}: <span class="g-{esc(g)}">{esc(g or DASH)}</span> '
                      f"({esc(score.upper())} {fmt_num(value, 2)})")
    head = (f"<summary><code>{esc(fact.fact_id)}</code> &nbsp;{esc(fact.subject)} &mdash; "
            f"<i>{esc(fact.relation)}</i> &rarr; {esc(fact.object)} &nbsp;<span class=\"muted\">"
            + " · ".join(badges) + "</span></summary>")
    rows = []
    answered = 0
    for query in probe.queries if probe is not None else ():
        if query.top1:
            label = f"q{answered}"
            answered += 1
        else:
            label = DASH
        top = ", ".join(f"{t!r} {pr:.2f}" for t, pr in query.predictions)
        rows.append({"q": label, "prompt": query.text, "answered": bool(query.top1),
                     "gold": repr(query.gold_token) if query.gold_token else DASH, "prob": query.prob,
                     "top": top or DASH})
    body = [f"<p><b>Subject</b> {esc(fact.subject)} &nbsp; <b>Relation</b> {esc(fact.relation)} &nbsp; "
            f"<b>Object</b> {esc(fact.object)}</p>",
            render_table(rows, [Column("query", "q"), Column("prompt", "prompt", wrap=True),
                                Column("answered (top-1)", "answered", "yesno"), Column("scored token", "gold"),
                                Column("P(token)", "prob", "sig"), Column("model's top-3", "top", wrap=True)])]
    for method in methods:
        view = per_method[method].get(fact.fact_id, {})
        kn = view.get("kn", {})
        g = view.get("group")
        if not missing(view.get("cs1")):
            line = (f"CS1 {fmt_num(view['cs1'], 3)} · CS2 {fmt_num(view['cs2'], 3)} · "
                    f"CS<sub>p</sub> {fmt_num(view['csp'], 3)} · group "
                    f'<span class="g-{esc(g)}">{esc(g or DASH)}</span>')
        elif len(kn) >= 2 and not any(kn.values()):
            line = f"CS {DASH} (every KN set is empty: no consistency score, so no group)"
        else:
            line = f"CS {DASH} (fewer than two attributed queries)"
        body.append(f"<h4>{esc(method)}</h4><p>{line}</p>")
        if not kn:
            body.append('<p class="muted">No attributions stored.</p>')
            continue
        kn_rows = [{"q": f"q{q}", "prompt": fact.prompts[q] if q < len(fact.prompts) else DASH,
                    "n": len(neurons), "neurons": neurons} for q, neurons in sorted(kn.items())]
        body.append(_kn_table(kn_rows, descriptions))
    return f'<details class="fact">{head}\n' + "\n".join(body) + "</details>"
