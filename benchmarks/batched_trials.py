"""One fact's editing trials measured one by one (measure_edit) and in batched replays (measure_edits).

Usage:
    python benchmarks/batched_trials.py [--model smollm2-135m] [--trials 12] [--threads 1] [--repeats 2]
        [--max-rows 256] [--device cpu]

A built-in fact of the model (its first fact, all its paraphrases), 10 locality prompts of other relations and
5 neutral texts (the study's defaults --locality 10, --ppl-texts 5) make the baseline. The trials alternate
erase and update (rules dai, signed, calibrated in turn, the study's lambda2 per rule) on seeded neuron sets
like a study's: 5-20 neurons each, in layers from a per-trial lowest layer in [10, 25] up to the last layer
(29 on SmolLM2). Printed: the best of --repeats wall times of the single-trial loop and of measure_edits under
each schedule (join, lowest, grouped), the speed-ups, the largest absolute difference of any float metric of
the TrialResults (ppl_after and dppl relative to ppl_before) and whether every success flag, Rel, Gen, Loc
and Avg is identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time

import torch

from knowloc.data.loaders import load_facts
from knowloc.data.texts import load_neutral_texts
from knowloc.editing import Trial, compute_baseline, kn_trial, measure_edit, measure_edits
from knowloc.models import load_model

RULES = (("dai", 8.0), ("signed", 8.0), ("calibrated", 1.0))


def trials_of(lm, prompts: list[str], gold: str, new: str, n: int, seed: int = 0) -> list[Trial]:
    rng = random.Random(seed)
    top = lm.n_layers - 1
    out = []
    for k in range(n):
        low = rng.randint(min(10, top), min(25, top))
        size = rng.randint(5, 20)
        neurons = {(rng.randint(low, top), rng.randrange(lm.n_neurons)) for _ in range(size)}
        neurons.add((low, rng.randrange(lm.n_neurons)))
        operation = "erase" if k % 2 == 0 else "update"
        rule, lambda2 = RULES[(k // 2) % len(RULES)]
        out.append(kn_trial(prompts, k % len(prompts), gold, sorted(neurons), operation,
                            new if operation == "update" else None, lambda2=lambda2, update_rule=rule))
    return out


def differences(single, many, ppl_before: float) -> tuple[float, bool]:
    """(largest absolute difference of the float metrics, every thresholded metric identical)."""
    worst, same = 0.0, True
    for a, b in zip(single, many):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name in ("rel", "gen", "loc", "avg", "success", "operation", "n_neurons"):
                same = same and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)))
                continue
            xs, ys = (x, y) if isinstance(x, tuple) else ((x,), (y,))
            scale = ppl_before if f.name in ("ppl_after", "dppl", "ppl_before") else 1.0
            for u, v in zip(xs, ys):
                if not (math.isnan(u) and math.isnan(v)):
                    worst = max(worst, abs(u - v) / scale)
    return worst, same


def timed(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)

    data = load_facts("builtin")
    fact, queries = data.items[0]
    prompts = [q.text for q in queries]
    new = next(f.object for f in data.facts if f.relation == fact.relation
               and lm.first_target_token(f.object) != lm.first_target_token(fact.object))
    locality = [q.text for f, qs in data.items if f.relation != fact.relation for q in qs[:1]][:10]
    texts = load_neutral_texts()[:5]
    baseline = compute_baseline(lm, prompts, locality, texts)
    trials = trials_of(lm, prompts, fact.object, new, args.trials)
    starts = sorted(min(layer for layer, _ in t.neurons) for t in trials)
    print(f"model {args.model} ({lm.n_layers} layers, {lm.n_neurons} neurons), device {lm.device}, "
          f"{args.threads} thread(s); fact {fact.id}: {len(prompts)} prompts + {len(locality)} locality prompts, "
          f"{len(texts)} texts; {len(trials)} trials, lowest layers {starts}, "
          f"{min(len(t.neurons) for t in trials)}-{max(len(t.neurons) for t in trials)} neurons")

    measure_edits(baseline, trials[:2], max_rows=args.max_rows)  # warm-up
    single_s, single = timed(lambda: [measure_edit(baseline, *t)[0] for t in trials], args.repeats)
    print(f"single   {single_s:7.2f} s ({single_s / len(trials) * 1000:.0f} ms / trial)")
    for schedule in ("join", "lowest", "grouped"):
        many_s, many = timed(lambda: measure_edits(baseline, trials, max_rows=args.max_rows, schedule=schedule),
                             args.repeats)
        worst, same = differences(single, many, baseline.ppl)
        print(f"batched  {many_s:7.2f} s ({many_s / len(trials) * 1000:.0f} ms / trial)  schedule={schedule:8s} "
              f"speedup={single_s / many_s:.2f}x  max_abs_diff={worst:.2e}  thresholds_identical={same}")


if __name__ == "__main__":
    main()
