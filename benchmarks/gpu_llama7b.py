"""GPU check (run only where a GPU is lent): IG on a random-init LLaMA-7B-shaped model in bf16.

Prints seconds per query and peak GPU memory against the weights' memory (EasyEdit's KN needs 42 GB on 7B;
the goal is at most 1.3x the weights). Usage: python benchmarks/gpu_llama7b.py [--steps 20] [--queries 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from knowloc.attribution import attribute
from knowloc.models.lm import LanguageModel
from knowloc.models.registry import resolve
from knowloc.models.tiny import tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="activation budget of the engine")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this script needs a CUDA GPU"
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="eager")
    model.eval().requires_grad_(False)
    tokenizer = tiny_tokenizer(False)  # any tokenizer: ids < 512 are valid for a 32k vocabulary
    lm = LanguageModel(model=model, tokenizer=tokenizer, arch=resolve(model), name="random-llama-7b")
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
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
