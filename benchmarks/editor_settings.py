"""How the editors' settings move Rel / Gen / Loc: FT+L's L-infinity bound and ROME's text-sample size.

Usage:
    python benchmarks/editor_settings.py STUDY_DIR [--model M] [--facts 20] [--layer mid]
        [--ft-bound 5e-4,1e-3,2e-3,5e-3,1e-2] [--ft-lr bound | 5e-4] [--rome-samples 16,64,128,512] [--threads 2]

STUDY_DIR is a `knowloc study` directory of the model (its probe is read, read-only; see
benchmarks/editing_defaults.py). On a seeded sample of its facts, each fact's first neighbor query is edited to the
study's new object o' (the same seeded choice as the editors experiment) by `ft` at every bound (learning rate =
the bound, or --ft-lr) and by `rome` with C computed over every sample size; prints Rel, Gen, Loc, median dlogPPL
and dprob_self with 95% bootstrap CIs over facts, and the seconds per edit (C's time once per size).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from editing_defaults import _row
from knowloc.editing.editors import CovarianceStore, FineTune, Rome, TextSample
from knowloc.editing.trials import measure_edit
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--layer", default="mid")
    parser.add_argument("--ft-bound", default="5e-4,1e-3,2e-3,5e-3,1e-2")
    parser.add_argument("--ft-lr", default="bound")
    parser.add_argument("--rome-samples", default="16,64,128,512")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved = json.loads((args.study / "summary.json").read_text())["config"]
    base = {k: v for k, v in saved.items() if k in StudyConfig.__dataclass_fields__}
    store = Store(args.study / "results.sqlite", readonly=True)
    model = args.model or base["models"][0]
    cfg = StudyConfig(**{**base, "out": str(args.study), "progress": False})
    ctx = StudyContext(config=cfg, store=store, out=args.study, echo=lambda _: None)
    ctx.load_facts(model)
    facts = sorted(random.Random(0).sample(ctx.facts[model], min(args.facts, len(ctx.facts[model]))),
                   key=lambda f: f.fact_id)
    sessions = {f.fact_id: ctx.edit_session(model, f) for f in facts}
    lm = ctx.model(model)
    layer = lm.n_layers // 2 if args.layer == "mid" else int(args.layer)
    print(f"{model}: {len(facts)} facts, layer {layer}, the first neighbor query of each edited\n")
    print("| editor | n | mean N_i | Rel | Gen | Loc | dlogPPL median | dprob_self | s / edit |")
    print("|---|---|---|---|---|---|---|---|---|")

    def run(label: str, editor) -> None:
        trials, seconds = [], []
        for fact in facts:
            session = sessions[fact.fact_id]
            if session.target is None:
                continue
            result, _, s = measure_edit(session.baseline, editor, 0, session.request(0, layers=(layer,)),
                                        session.loc_gold)
            seconds.append(s)
            trials.append([{"n_neurons": 0, "rel": result.rel, "gen": result.gen, "loc": result.loc,
                            "dlogppl": result.dlogppl, "dprob_self": result.dprob_self}])
        print(_row(label, trials) + f" {np.median(seconds):.2f} |", flush=True)

    for bound in [float(b) for b in args.ft_bound.split(",") if b]:
        lr = bound if args.ft_lr == "bound" else float(args.ft_lr)
        run(f"ft bound {bound:g}, lr {lr:g}", FineTune(bound=bound, lr=lr))
    for n in [int(v) for v in args.rome_samples.split(",") if v]:
        covariance = CovarianceStore()
        sample = TextSample(n=n, length=64, seed=cfg.seed)
        start = time.perf_counter()
        covariance.get(lm, layer, sample)
        took = time.perf_counter() - start
        run(f"rome, C over {n} x 64 tokens (C: {took:.0f} s)", Rome(sample=sample, covariance=covariance,
                                                                     seed=cfg.seed))
    store.close()


if __name__ == "__main__":
    main()
