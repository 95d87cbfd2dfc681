"""knowloc's command line: a thin layer over the library. Bad input -> one line on stderr, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from knowloc import __version__
from knowloc.errors import KnowlocError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge-neuron localization and query localization for Hugging Face causal LMs.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print their figures.")
data_app = typer.Typer(no_args_is_help=True, help="Data sets.")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="built-in name, .gguf path, HF directory or hub id")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
DtypeOpt = typer.Option(None, "--dtype", help="fp32 (default), bf16 or fp16")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"knowloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    pass


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@app.command()
def models() -> None:
    """Built-in model names and registered architecture families."""
    from knowloc.models import REGISTRY, builtin_names

    typer.echo("built-in models:")
    for name, about in builtin_names().items():
        typer.echo(f"  {name:<16} {about}")
    typer.echo("registered families (config.model_type -> family):")
    for model_type, spec in sorted(REGISTRY.items()):
        typer.echo(f"  {model_type:<16} {spec.family}")


@app.command()
def probe(model: str = ModelOpt, data: str = typer.Option("builtin", "--data", "-d",
                                                          help="builtin, pararel:DIR or a JSONL path"),
          relations: Optional[str] = typer.Option(None, help="comma-separated relation ids, e.g. P36,P103"),
          limit: Optional[int] = typer.Option(None, help="at most N facts per relation", min=1),
          min_known: int = typer.Option(2, help="a fact is usable when at least this many queries are answered",
                                        min=1),
          candidates: bool = typer.Option(False, help="restrict the argmax to the relation's objects (LAMA)"),
          as_json: bool = typer.Option(False, "--json"), device: Optional[str] = DeviceOpt,
          dtype: Optional[str] = DtypeOpt) -> None:
    """Per relation: facts, queries, top-1/top-5 accuracy and facts usable for a study."""
    from knowloc.data import load_facts
    from knowloc.data.filtering import probe_facts
    from knowloc.models import load_model

    dataset = load_facts(data, relations=_split(relations), limit=limit)
    lm = load_model(model, device=device, dtype=dtype)
    probes = probe_facts(lm, list(dataset), candidates=candidates)
    rows = []
    for relation in dataset.relations:
        facts = [p for p in probes if p.fact.relation == relation]
        queries = [q for p in facts for q in p.queries]
        rows.append({
            "relation": relation, "facts": len(facts), "queries": len(queries),
            "top1": sum(q.top1 for q in queries) / max(len(queries), 1),
            "top5": sum(q.top5 for q in queries) / max(len(queries), 1),
            "usable_facts": sum(p.n_known >= min_known for p in facts),
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


@app.command()
def localize(prompt: str = typer.Option(..., help="the query prompt, without the answer"),
             target: str = typer.Option(..., help="the gold object, scored as ' ' + target"),
             model: str = ModelOpt, method: str = typer.Option("ig", help="ig, sig, amig or grad_x_act"),
             steps: int = typer.Option(20, help="integration steps m"),
             threshold: float = typer.Option(0.2, help="keep neurons with score > threshold x max"),
             top: int = typer.Option(20, help="print at most this many neurons"),
             objective: str = typer.Option("prob", help="prob or logprob"),
             as_json: bool = typer.Option(False, "--json"), device: Optional[str] = DeviceOpt,
             dtype: Optional[str] = DtypeOpt) -> None:
    """Attribute a prompt's target to neurons and print the knowledge neurons."""
    from knowloc.attribution import attribute
    from knowloc.attribution.methods import MethodConfig
    from knowloc.models import load_model

    MethodConfig(method, steps, objective)  # validate before the model loads
    if not 0 <= threshold <= 1:
        raise KnowlocError(f"--threshold must be in [0, 1], got {threshold}")
    lm = load_model(model, device=device, dtype=dtype)
    result = attribute(lm, prompt, target, method=method, steps=steps, objective=objective)
    neurons = result.neurons(threshold)
    shown = [(l, i, float(result.scores[l, i])) for l, i in neurons[:top]]
    if as_json:
        typer.echo(json.dumps({"model": model, "prompt": result.prompt, "target": target, "method": method,
                               "steps": result.steps, "baseline": result.baseline, "prob": result.prob,
                               "threshold": threshold, "n_neurons": len(neurons),
                               "neurons": [{"layer": l, "index": i, "score": s} for l, i, s in shown]}, indent=2))
        return
    typer.echo(f"{result.prompt!r} -> {target!r}  P={result.prob:.4f}  method={method} steps={result.steps}")
    typer.echo(f"{len(neurons)} knowledge neurons (score > {threshold} x max); top {len(shown)}:")
    for l, i, s in shown:
        typer.echo(f"  L{l:<3} #{i:<6} {s:.6g}")


@bench_app.command("attribution")
def bench_attribution(model: str = ModelOpt, steps: int = typer.Option(20), method: str = typer.Option("ig"),
                      repeats: int = typer.Option(5, min=1, help="timed runs of each engine (median)"),
                      queries: int = typer.Option(1, min=1, help="built-in queries to time"),
                      device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt) -> None:
    """Reference vs fast engine, alternately on the same queries; ends with one summary line."""
    from knowloc.attribution.bench import run_attribution_benchmark

    run_attribution_benchmark(model, method=method, steps=steps, repeats=repeats, n_queries=queries,
                              device=device, dtype=dtype, echo=typer.echo)


@data_app.command("pararel")
def data_pararel(download: Path = typer.Option(..., "--download", help="directory to write patterns/ and facts/"),
                 base_url: Optional[str] = typer.Option(None, help="mirror of raw GitHub content")) -> None:
    """Fetch the official ParaRel files from a pinned commit, verifying sha256."""
    from knowloc.data import download_pararel

    kwargs = {"base_url": base_url} if base_url else {}
    path = download_pararel(download, **kwargs)
    typer.echo(f"ParaRel written to {path}")


SweepBeta1 = typer.Option(None, "--sweep-beta1", help="cas-sweep grid, comma-separated (1)")
SweepBeta2 = typer.Option(None, "--sweep-beta2", help="cas-sweep grid, comma-separated (0,0.5,1,2)")
SweepThresholds = typer.Option(None, "--sweep-thresholds", help="cas-sweep grid of t, comma-separated "
                               "(0.1,0.2,0.3,0.5)")


@app.command()
def study(model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="repeat for several models"),
          data: Optional[str] = typer.Option(None, "--data", "-d", help="builtin, pararel:DIR or a JSONL path"),
          methods: Optional[str] = typer.Option(None, help="comma-separated: ig,sig,amig,grad_x_act"),
          experiments: Optional[str] = typer.Option(None, help="comma-separated: consistency,modification,"
                                                    "query-mapping,attention,cas,cas-sweep,update-sweep"),
          relations: Optional[str] = typer.Option(None, help="comma-separated relation ids"),
          facts: Optional[int] = typer.Option(None, help="at most N known facts per model (seeded sample)"),
          seed: Optional[int] = typer.Option(None), steps: Optional[int] = typer.Option(None),
          threshold: Optional[float] = typer.Option(None, help="KN set: attribution > threshold x max"),
          tau: Optional[float] = typer.Option(None, help="static K_C/K_I threshold on the CS score"),
          split: Optional[str] = typer.Option(None, help="groups for later experiments: static or otsu"),
          min_known: Optional[int] = typer.Option(None, help="paraphrases a fact must be answered in"),
          candidates: Optional[bool] = typer.Option(None, "--candidates/--no-candidates",
                                                    help="answered = argmax among the relation's objects (LAMA)"),
          attention_k: Optional[int] = typer.Option(None, help="knowledge synapses per attention row (3)"),
          attention_layers: Optional[str] = typer.Option(None, help="manipulate KS in layers a-b only"),
          attention_renormalize: Optional[bool] = typer.Option(None, "--attention-renormalize/--no-attention-renormalize",
                                                               help="rescale manipulated attention rows to sum 1"),
          cas_beta1: Optional[float] = typer.Option(None, help="CAS = beta1 mean - beta2 std (1)"),
          cas_beta2: Optional[float] = typer.Option(None, help="(1)"),
          cas_threshold: Optional[float] = typer.Option(None, help="CAS selection: CAS > t x max CAS (0.2)"),
          cas_top_k: Optional[int] = typer.Option(None, help="cap the CAS selection at k neurons"),
          sweep_beta1: Optional[str] = SweepBeta1, sweep_beta2: Optional[str] = SweepBeta2,
          sweep_thresholds: Optional[str] = SweepThresholds,
          specificity: Optional[str] = typer.Option(
              None, help="remove neurons that are KNs of more than this share of fact-free reference prompts from "
              "every neuron set; 'off' (= 1) keeps them, as the paper (0.1)"),
          specificity_prompts: Optional[int] = typer.Option(None, help="reference prompts of the specificity "
                                                            "profile (48)"),
          update_rule: Optional[str] = typer.Option(None, help="dai, signed or calibrated (calibrated)"),
          lambda1: Optional[float] = typer.Option(None, help="update: weight of the old object's direction (1)"),
          lambda2: Optional[float] = typer.Option(None, help="update: weight of the new object's direction "
                                                  "(default of the rule: dai/signed 8, calibrated 2)"),
          locality: Optional[int] = typer.Option(None, help="locality prompts per fact (10)"),
          ppl_texts: Optional[int] = typer.Option(None, help="neutral sentences for dlogPPL (5)"),
          sweep_lambda2: Optional[str] = typer.Option(None, help="update-sweep lambda2 grid, comma-separated "
                                                      "(0.25,0.5,1,2,4,8,16)"),
          sweep_rules: Optional[str] = typer.Option(None, help="update-sweep rules (dai,signed,calibrated)"),
          sweep_queries: Optional[int] = typer.Option(None, help="update-sweep: edited queries per fact (2)"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (resumable)"),
          config: Optional[Path] = typer.Option(None, "--config", help="TOML file with the same keys"),
          executor: Optional[str] = typer.Option(None, help="local (default) or ray"),
          ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)"),
          workers: Optional[int] = typer.Option(None, help="Ray workers (actors)"),
          gpus_per_worker: Optional[float] = typer.Option(None, help="GPUs per Ray worker"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and an estimated time, run nothing"),
          gpu: bool = typer.Option(False, "--gpu", help="same as --device cuda"),
          device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
          no_progress: bool = typer.Option(False, "--no-progress")) -> None:
    """Run (or resume) a study: probe, attribute, experiments, outputs in --out."""
    overrides = {"models": model or None, "data": data, "methods": _split(methods), "experiments": _split(experiments),
                 "relations": _split(relations), "facts": facts, "seed": seed, "steps": steps, "threshold": threshold,
                 "tau": tau, "split": split, "min_known": min_known, "candidates": candidates,
                 "attention_k": attention_k, "attention_layers": attention_layers,
                 "attention_renormalize": attention_renormalize, "out": str(out) if out else None,
                 "device": "cuda" if gpu and device is None else device, "dtype": dtype,
                 "progress": False if no_progress else None, "executor": executor, "ray_address": ray_address,
                 "workers": workers, "gpus_per_worker": gpus_per_worker, "cas_beta1": cas_beta1,
                 "cas_beta2": cas_beta2, "cas_threshold": cas_threshold, "cas_top_k": cas_top_k,
                 "cas_sweep_beta1": sweep_beta1, "cas_sweep_beta2": sweep_beta2,
                 "cas_sweep_thresholds": sweep_thresholds, "specificity": specificity,
                 "specificity_prompts": specificity_prompts, "update_rule": update_rule, "lambda1": lambda1,
                 "lambda2": lambda2, "locality": locality, "ppl_texts": ppl_texts,
                 "update_sweep_lambda2": sweep_lambda2, "update_sweep_rules": sweep_rules,
                 "update_sweep_queries": sweep_queries}
    _run_study(overrides, config, dry_run)


def _run_study(overrides: dict, config: Optional[Path], dry_run: bool) -> None:
    from knowloc.study.config import StudyConfig
    from knowloc.study.runner import run_study

    if config is not None:
        cfg = StudyConfig.from_toml(config, overrides)
    else:
        cfg = StudyConfig(**{k: v for k, v in overrides.items() if v is not None})
    if dry_run:
        from knowloc.study.plan import print_plan

        print_plan(cfg, echo=typer.echo)
        return
    run_study(cfg, echo=typer.echo)


@app.command("cas-sweep")
def cas_sweep(model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="repeat for several models"),
              data: Optional[str] = typer.Option(None, "--data", "-d", help="builtin, pararel:DIR or a JSONL path"),
              methods: Optional[str] = typer.Option(None, help="comma-separated: ig,sig,amig,grad_x_act"),
              relations: Optional[str] = typer.Option(None, help="comma-separated relation ids"),
              facts: Optional[int] = typer.Option(None, help="at most N known facts per model (seeded sample)"),
              seed: Optional[int] = typer.Option(None),
              beta1: Optional[str] = SweepBeta1, beta2: Optional[str] = SweepBeta2,
              thresholds: Optional[str] = SweepThresholds,
              out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (resumable; may be "
                                                 "an earlier study's, whose attributions are reused)"),
              config: Optional[Path] = typer.Option(None, "--config", help="TOML file with the study's keys"),
              dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and an estimated time"),
              device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
              no_progress: bool = typer.Option(False, "--no-progress")) -> None:
    """Sweep CAS's beta1, beta2 and t: `knowloc study --experiments cas-sweep` with the grid as options;
    writes the Avg heatmaps and the cas_sweep table into --out."""
    overrides = {"models": model or None, "data": data, "methods": _split(methods), "experiments": ["cas-sweep"],
                 "relations": _split(relations), "facts": facts, "seed": seed, "cas_sweep_beta1": beta1,
                 "cas_sweep_beta2": beta2, "cas_sweep_thresholds": thresholds, "out": str(out) if out else None,
                 "device": device, "dtype": dtype, "progress": False if no_progress else None}
    _run_study(overrides, config, dry_run)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="output directory"), model: str = ModelOpt,
         facts: int = typer.Option(10, min=1, help="facts in the demo study")) -> None:
    """The main job: the whole study on the embedded default, then the HTML report (see README)."""
    from knowloc.demo import run_demo

    path = run_demo(out, model=model, facts=facts, echo=typer.echo)
    typer.echo(f"report: {path}")


@app.command()
def report(directory: Path = typer.Argument(..., help="a study directory (--out of knowloc study)")) -> None:
    """Rebuild DIR/report.html from the store and outputs, without recomputing anything."""
    from knowloc.report.html import build_report

    if not (directory / "results.sqlite").is_file() or not (directory / "summary.json").is_file():
        raise KnowlocError(f"{directory} is not a finished study (no results.sqlite / summary.json)")
    typer.echo(f"report: {build_report(directory)}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="knowloc", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
