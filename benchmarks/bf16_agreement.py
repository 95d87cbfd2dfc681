"""bf16 against fp32 on the builtin facts: attribution agreement, editing agreement and speed (issue 20).

For a seeded sample of builtin queries that SmolLM2 answers (fp32 top-1), each method attributes the gold object
with the model loaded in fp32 and in bf16 (``--compute-dtype``), one thread each. Printed per method:

* top-20 overlap: |top20(fp32) ∩ top20(bf16)| / 20 of the attribution maps;
* KN Jaccard: |K ∩ K'| / |K ∪ K'| of the KN sets (score > 0.2 x max, Dai et al.);
* prob: max |F_fp32 - F_bf16| of the attributed objective;
* erase N_i (the fp32 KN set) measured on each model: agreement of Rel and of the locality Loc (share of the
  locality prompts whose argmax is kept), max |dprob_self| difference;
* seconds per attribution in each dtype.

Usage: ``python benchmarks/bf16_agreement.py [--queries 8] [--methods ig,amig] [--seed 0]``
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from knowloc.attribution import attribute
from knowloc.data import load_facts
from knowloc.editing import KnErase
from knowloc.editing.session import EditSession
from knowloc.data import load_neutral_texts
from knowloc.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--methods", default="ig,amig")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {dt: load_model("smollm2-135m", device="cpu", dtype=dt) for dt in ("fp32", "bf16")}
    ref = models["fp32"]
    pairs = [(q.text, fact.object, fact.relation) for fact, queries in load_facts("builtin") for q in queries]
    random.Random(args.seed).shuffle(pairs)
    chosen, locality = [], []
    for prompt, obj, relation in pairs:
        with torch.no_grad():
            logits = ref.model(input_ids=torch.tensor([ref.encode(prompt).prompt_ids])).logits[0, -1]
        if int(logits.argmax()) == ref.first_target_token(obj):
            (chosen if len(chosen) < args.queries else locality).append((prompt, obj, relation))
        if len(chosen) >= args.queries and len(locality) >= 5:
            break
    texts = load_neutral_texts()[:3]
    print(f"{len(chosen)} queries, steps {args.steps}, 1 thread, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    for method in args.methods.split(","):
        overlap, jaccard, dprob, rel_agree, loc_diff, dself, secs = [], [], [], [], [], [], {"fp32": [], "bf16": []}
        for prompt, obj, relation in chosen:
            attrs = {}
            for dt, lm in models.items():
                start = time.perf_counter()
                attrs[dt] = attribute(lm, prompt, obj, method=method, steps=args.steps, warn=False)
                secs[dt].append(time.perf_counter() - start)
            a, b = attrs["fp32"].scores, attrs["bf16"].scores.float()
            top_a = set(torch.topk(a.flatten(), 20).indices.tolist())
            top_b = set(torch.topk(b.flatten(), 20).indices.tolist())
            overlap.append(len(top_a & top_b) / 20)
            ka, kb = set(attrs["fp32"].neurons(0.2)), set(attrs["bf16"].neurons(0.2))
            jaccard.append(len(ka & kb) / max(1, len(ka | kb)))
            dprob.append(abs(attrs["fp32"].prob - attrs["bf16"].prob))
            loc_prompts = [p for p, _, r in locality if r != relation][:5] or [p for p, _, _ in locality[:5]]
            loc_objects = [o for p, o, r in locality if p in loc_prompts]
            measured = {dt: EditSession(lm, [prompt], obj, None, loc_prompts, loc_objects, texts)
                        .measure(KnErase(), 0, sorted(ka)) for dt, lm in models.items()}
            rel_agree.append(measured["fp32"]["rel"] == measured["bf16"]["rel"])
            loc_diff.append(abs(measured["fp32"]["loc"] - measured["bf16"]["loc"]))
            dself.append(abs(measured["fp32"]["dprob_self"] - measured["bf16"]["dprob_self"]))
        print(f"{method}: top-20 overlap mean {np.mean(overlap):.3f} (min {min(overlap):.2f}); KN Jaccard mean "
              f"{np.mean(jaccard):.3f} (min {min(jaccard):.2f}); max |dF| {max(dprob):.4f}; erase N_i: Rel agrees "
              f"{sum(rel_agree)}/{len(rel_agree)}, max |dLoc| {max(loc_diff):.2f}, max |d dprob_self| "
              f"{max(dself):.3f}; s/attribution fp32 {np.mean(secs['fp32']):.2f}, bf16 {np.mean(secs['bf16']):.2f} "
              f"({np.mean(secs['bf16']) / np.mean(secs['fp32']):.1f}x)")


if __name__ == "__main__":
    main()
