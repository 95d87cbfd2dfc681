"""GPU check (run only where a GPU is lent): IG on a random-init LLaMA-7B-shaped model in bf16.

Prints seconds per query and peak GPU memory against the weights' memory (EasyEdit's KN needs 42 GB on 7B;
the goal is at most 1.3x the weights). Usage: python benchmarks/gpu_llama7b.py [--steps 20] [--queries 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from knowloc.attribution import attribute
from knowloc.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="activation budget of the engine")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this script needs a CUDA GPU"
    # built on the GPU in bf16 (no fp32 or CPU copy), with the tiny models' tokenizer (ids < 512)
    lm = load_model("random:llama2-7b", device="cuda", dtype="bf16", seed=0)
    weights_gb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**30
    prompt = "In which country is the city of Lyon? The answer is"
    attribute(lm, prompt, "France", steps=args.steps, memory_gb=args.memory_gb)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.queries):
        torch.cuda.synchronize()
        start = time.perf_counter()
        attribute(lm, prompt, "France", steps=args.steps, memory_gb=args.memory_gb)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    print(f"device={torch.cuda.get_device_name()} steps={args.steps} layers=32 neurons=11008")
    print(f"s_per_query={statistics.median(times):.3f} peak_gb={peak_gb:.1f} weights_gb={weights_gb:.1f} "
          f"ratio={peak_gb / weights_gb:.2f}")


if __name__ == "__main__":
    main()
