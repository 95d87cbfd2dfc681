"""The measurement behind knowloc's editing defaults: the specificity threshold F and the update rule / lambda2.

Usage:
    python benchmarks/editing_defaults.py STUDY_DIR [--model M] [--facts 30] [--methods ig,amig] [--skip-update]
        [--specificity 0.02,0.05,0.1,0.2,0.3,1] [--rules dai,signed,calibrated] [--lambda2 0.25,...,16]
        [--rule-specificity 0.1] [--lambda1 1 | --tied] [--queries 2] [--threads 2]

STUDY_DIR is a `knowloc study` directory of the model whose attributions, reference attributions and probe are
stored (any study run by this version stores them): a finished one (its settings are read from summary.json), or
one still running on another model with `--config FILE.toml` holding the study's settings. On a seeded sample of its facts the script

1. erases each query's own KNs N_i, filtered at every F of --specificity, and prints per method and F: mean
   |N_i|, Rel, Gen, Loc, the median over facts of dlogPPL and the mean dprob_self (the same trials, metrics
   and fact-level aggregation as the `modification` experiment, 95% bootstrap CIs over facts);
2. updates N_i (filtered at --rule-specificity) with every rule at every lambda2 and prints Rel, Gen, Loc and
   median dlogPPL (as the `update-sweep` experiment: a seeded --queries of each fact's neighbor queries), with
   lambda1 = --lambda1, or lambda1 = lambda2 at every point with --tied (as `--sweep-tied`).

Nothing is written to STUDY_DIR (its store is opened read-only).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, fact_level_ci
from knowloc.study.tables import fmt_dlogppl
from knowloc.study.store import Store


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _row(label: str, fact_trials: list[list[dict]], n_boot: int = 1000) -> str:
    cells = []
    for metric in ("rel", "gen", "loc"):
        e = fact_level_ci(fact_trials, metric, n_boot, 0)
        cells.append(f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]")
    med = fact_level_ci(fact_trials, "dlogppl", n_boot, 0, stat=np.median)
    cells.append(f"{fmt_dlogppl(med.value)} [{fmt_dlogppl(med.low)}, {fmt_dlogppl(med.high)}]")
    dprob = fact_level_ci(fact_trials, "dprob_self", n_boot, 0)
    n, dp = dprob.n, dprob.value
    size = np.mean([np.mean([r["n_neurons"] for r in rows]) for rows in fact_trials if rows])
    return f"| {label} | {n} | {size:.1f} | " + " | ".join(cells) + f" | {dp:+.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--facts", type=int, default=30)
    parser.add_argument("--methods", default="ig,amig")
    parser.add_argument("--specificity", default="0.02,0.05,0.1,0.2,0.3,1")
    parser.add_argument("--rules", default="dai,signed,calibrated")
    parser.add_argument("--lambda2", default="0.25,0.5,1,2,4,8,16")
    parser.add_argument("--rule-specificity", type=float, default=0.1)
    parser.add_argument("--lambda1", type=float, default=1.0)
    parser.add_argument("--tied", action="store_true", help="lambda1 = lambda2 at every point")
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--skip-erase", action="store_true")
    parser.add_argument("--skip-update", action="store_true")
    parser.add_argument("--model", default=None, help="one of the study's models (default: its first)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the study's settings as a `knowloc study --config` TOML file (default: summary.json's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.config is not None:
        saved = StudyConfig.from_toml(args.config, {}).as_dict()
    else:
        saved = json.loads((args.study / "summary.json").read_text())["config"]
    base = {k: v for k, v in saved.items() if k in {f for f in StudyConfig.__dataclass_fields__}}
    store = Store(args.study / "results.sqlite", readonly=True)
    model = args.model or base["models"][0]
    if model not in base["models"]:
        parser.error(f"--model {model} is not a model of {args.study} ({', '.join(base['models'])})")

    models = None  # one loaded model shared by every context

    def context(specificity: float) -> StudyContext:
        nonlocal models
        cfg = StudyConfig(**{**base, "specificity": specificity, "lambda1": args.lambda1, "out": str(args.study),
                             "progress": False})
        ctx = StudyContext(config=cfg, store=store, out=args.study, echo=lambda _: None, models=models)
        models = ctx.models
        ctx.load_facts(model)
        return ctx

    ctx0 = context(1.0)
    facts = ctx0.facts[model]
    facts = sorted(random.Random(0).sample(facts, min(args.facts, len(facts))), key=lambda f: f.fact_id)
    start = time.perf_counter()
    sessions = {f.fact_id: ctx0.edit_session(model, f) for f in facts}
    levels = _floats(args.specificity)
    print(f"{model}: {len(facts)} facts (seeded sample), {base['locality']} locality prompts, "
          f"{base['ppl_texts']} neutral texts per fact")
    print("\n## Erase N_i at each specificity threshold F\n")
    print("| method, F | n | mean N_i | Rel | Gen | Loc | dlogPPL median | dprob_self |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(",") if not args.skip_erase else []:
        for level in levels:
            ctx = context(level)
            fact_trials = []
            for fact in facts:
                kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
                rows = []
                for q, neurons in sorted(kn.items()):
                    scores = sessions[fact.fact_id].measure("erase", neurons, q)
                    rows.append({"n_neurons": len(neurons), **(scores or {}), "skipped": scores is None})
                fact_trials.append(rows)
            n_drop = np.mean([len(ctx.neurons.excluded(model, method, r)) for r in {f.relation for f in facts}])
            print(_row(f"{method}, F={level:g} ({n_drop:.0f} removed)", fact_trials), flush=True)
    if args.skip_update:
        print(f"\n{time.perf_counter() - start:.0f} s")
        store.close()
        return
    lambda1 = "lambda2" if args.tied else f"{args.lambda1:g}"
    print(f"\n## Update N_i (F = {args.rule_specificity:g}) with each rule and lambda2, lambda1 = {lambda1}\n")
    print("| method, rule, lambda2 | n | mean N_i | Rel | Gen | Loc | dlogPPL median | dprob_self |")
    print("|---|---|---|---|---|---|---|---|")
    ctx = context(args.rule_specificity)
    for method in args.methods.split(","):
        kns = {f.fact_id: ctx.neurons.kn_lists(model, method, f.fact_id) for f in facts}
        for rule in args.rules.split(","):
            for lambda2 in _floats(args.lambda2):
                fact_trials = []
                for fact in facts:
                    rows = []
                    edited = random.Random(f"{fact.fact_id}:{method}").sample(
                        sorted(kns[fact.fact_id]), min(args.queries, len(kns[fact.fact_id])))
                    for q in sorted(edited):
                        neurons = kns[fact.fact_id][q]
                        scores = sessions[fact.fact_id].measure("update", neurons, q, rule=rule, lambda2=lambda2,
                                                                lambda1=lambda2 if args.tied else None)
                        rows.append({"n_neurons": len(neurons), **(scores or {}), "skipped": scores is None})
                    fact_trials.append(rows)
                print(_row(f"{method}, {rule}, {lambda2:g}", fact_trials), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")
    store.close()


if __name__ == "__main__":
    main()
