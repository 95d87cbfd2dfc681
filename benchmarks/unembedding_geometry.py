"""Why an update's locality peaks at lambda2 = lambda1: the answer tokens' unembedding rows share one direction.

Usage:
    python benchmarks/unembedding_geometry.py [--model smollm2-135m] [--data builtin] [--pairs 500]

The update rules add ``lambda2 e' - lambda1 e`` to each edited value vector (``e = E(o)``, ``e' = E(o')``; unit
rows for ``calibrated``), which splits into

    lambda2 e' - lambda1 e = (lambda1 + lambda2) / 2 * (e' - e) + (lambda2 - lambda1) / 2 * (e' + e).

If the rows of different tokens share a common direction ``d`` (the mean of the unit rows), ``e' - e`` has
almost no component along ``d`` while ``e' + e`` has a large one, so for ``lambda2 != lambda1`` the edit also
pushes every prompt's residual stream along ``d``: a change that is not about the edited fact and shifts
unrelated answers. The script prints, over the first tokens of the dataset's answers, the cosine of each unit row
with ``d``, the mean pairwise cosine, and over seeded random answer pairs the mean |component along d| of
``e' + e`` and of ``e' - e`` (unit rows).
"""

from __future__ import annotations

import argparse
import random

import torch

from knowloc.data import load_facts
from knowloc.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--pairs", type=int, default=500)
    args = parser.parse_args()
    lm = load_model(args.model)
    rows = lm.arch.unembed(lm.model).weight.detach().float()
    unit = rows / rows.norm(dim=1, keepdim=True)
    mean = unit.mean(0)
    d = mean / mean.norm()
    facts = load_facts(args.data).facts
    ids = sorted({lm.tokenizer(" " + f.object, add_special_tokens=False).input_ids[0] for f in facts})
    cos = unit[ids] @ d
    pair_cos = unit[ids] @ unit[ids].T
    n = len(ids)
    rng = random.Random(0)
    pairs = [tuple(rng.sample(ids, 2)) for _ in range(args.pairs)]
    plus = torch.stack([(unit[a] + unit[b]) @ d for a, b in pairs]).abs().mean()
    minus = torch.stack([(unit[b] - unit[a]) @ d for a, b in pairs]).abs().mean()
    print(f"{args.model}: {rows.shape[0]} tokens, width {rows.shape[1]}; |mean unit row| = {mean.norm():.3f}")
    print(f"all tokens: mean cos(row, d) = {(unit @ d).mean():.3f}")
    print(f"{n} answer first tokens of {args.data}: cos(row, d) mean {cos.mean():.3f} "
          f"[min {cos.min():.3f}, max {cos.max():.3f}]; mean pairwise cos {(pair_cos.sum() - n) / (n * n - n):.3f}")
    print(f"{len(pairs)} seeded answer pairs: mean |(e' + e) . d| = {plus:.3f}, mean |(e' - e) . d| = {minus:.3f}")


if __name__ == "__main__":
    main()
