"""knowloc's fast attribution engine against EleutherAI's `knowledge-neurons==0.0.2` (issue 20).

Usage:
    python benchmarks/vs_knowledge_neurons.py [--scratch DIR] [--repeats 3] [--steps 20] [--threads 1]

Both tools attribute the same prompt and target on the same in-memory model, a GPT-2-small-shaped
`GPT2LMHeadModel` (12 layers, 768 wide, 12 heads, 3072 MLP neurons, 50257-token vocabulary, 1024 positions)
with seeded random weights: nothing is downloaded from a model hub.

The scratch environment: `knowledge-neurons==0.0.2` is installed with this interpreter's pip as
`pip install --no-deps --target DIR` (default: `<tempdir>/knowloc-bench-knowledge-neurons-0.0.2`, reused when
it is already there), together with its one import-time dependency that knowloc's venv lacks, `einops==0.8.2`
(pinned; transformers, torch, numpy and tqdm come from the venv; seaborn, also in its metadata, is never
imported). DIR is put first on sys.path; the venv is not modified.

The tokenizer: knowledge-neurons calls `tokenizer(prompt, return_tensors="pt")`, `tokenizer.encode(target)`
and `tokenizer.decode(ids)`. knowloc's tiny byte-level BPE tokenizer (`knowloc.models.tiny.tiny_tokenizer`,
trained in code, 512 tokens, no BOS) is a `PreTrainedTokenizerFast`, so it is passed as it is, unwrapped. Its
ids are < 512, valid for the 50257-row embedding; the logits and the softmax still run over all 50257 rows,
as with GPT-2's own tokenizer. The target " Paris" is one token of it.

What is computed, identically on both sides:
    IG of F(x) = P(target token | prompt; a^l <- x), the softmax probability of the target's token at the last
    prompt position, with a zero baseline, over every MLP neuron of every layer (each layer on its own, the
    others clean), read at the output of `mlp.c_fc` (the pre-activation, before GELU): knowledge-neurons'
    hook site for GPT models (`input_ff_attr = "mlp.c_fc"`), which is knowloc's `site="pre_act"` (knowloc's
    default site, the input of `mlp.c_proj`, would be a different quantity).
    knowledge-neurons: `get_scores(prompt, ground_truth=" Paris", batch_size=20, steps=20)`, model_type
    "gpt2" (the name its own `model_type("gpt2")` gives). Its `tokenizer.encode(target)` adds no space, so it
    is given " " + target, the continuation knowloc scores.
    knowloc: `attribute(lm, prompt, "Paris", method="ig", steps=20)` on a `LanguageModel` wrapping the same
    model object (site "pre_act").

Known differences, and what the script does about them:
    1. The Riemann rule. knowledge-neurons' `scaled_input` integrates at alpha = linspace(0, 1, m) (both
       ends, m points, each weighted 1/m); knowloc at alpha = k/m, k = 1..m (the right Riemann sum of Dai et
       al.'s formula). The timed runs swap `KnowledgeNeurons.scaled_input` for knowloc's grid
       (`knowloc.attribution.peer.same_grid`, in this process only; the installed files are not touched), so
       that both compute the same number; its cost is unchanged (the same m rows per layer). One untimed stock
       run (which also warms knowledge-neurons up) measures the difference the stock rule makes.
    2. Multi-token targets: knowledge-neurons (model_type "gpt") averages the IG of each token with the
       prompt extended by the model's *argmax* tokens; knowloc teacher-forces the gold tokens and averages
       the probability. For a one-token target, as here, the two coincide; the script refuses another.
No other patch was needed for transformers 5.x: knowledge-neurons 0.0.2 imports and runs as it is.

Fairness: both run the model as built here, with PyTorch's fused attention (sdpa, transformers' default for
GPT-2; knowloc's engine would also switch to it), frozen parameters (knowledge-neurons differentiates with
`torch.autograd.grad` w.r.t. the activations only, so freezing them spares it no matmul), fp32, on the same
number of threads, alternating, after one untimed warm-up of each. knowloc's warm-up also records the block
calls for this prompt shape (`engine_cache(lm)`), which later queries of the same shape reuse; the first, cold call
of knowloc is printed too.

Measured (1 CPU thread, 2-core AVX2 machine shared with other work): on the default 5-token prompt knowloc
1.39 s, knowledge-neurons 8.94 s (6.4x); on a 15-token prompt ("Paris is the capital city of France, and the
capital city of Italy is" -> " Rome", --repeats 1) 1.37 s against 22.5 s (16.4x): knowledge-neurons re-runs the
whole sequence through the whole model for every layer and step, so its cost grows with the prompt's length,
while knowloc's is dominated by the 50257-token unembedding of its rows. Same grid: Pearson r = 1.000000,
top-20 overlap 20/20, max relative difference 5e-7; knowledge-neurons' stock grid: r = 0.9996, overlap 18-20/20.

Output: both medians, the speed-up, a correctness line (Pearson r over all 12 x 3072 scores, top-20 overlap,
max |difference| / max |score|), and the last line
`speedup=... knowloc_s=... kn_s=... top20_overlap=...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

def build_model(n_layer: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2 small's shape; token ids 0 (<|endoftext|>) as in the tiny tokenizer
    config = GPT2Config(n_layer=n_layer, n_embd=768, n_head=12, n_inner=None, vocab_size=50257, n_positions=1024,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.config._attn_implementation = "sdpa"
    model.eval().requires_grad_(False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where knowledge-neurons is installed (reused when already there)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=int, default=12, help="n_layer of the model (12: GPT-2 small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--target", default="Paris")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its thread pool
    import torch

    from knowloc.attribution.peer import DEFAULT_SCRATCH, agreement as compare, load_knowledge_neurons, same_grid

    torch.set_num_threads(args.threads)
    knowledge_neurons = load_knowledge_neurons(args.scratch or DEFAULT_SCRATCH)
    KnowledgeNeurons = knowledge_neurons.KnowledgeNeurons

    import knowloc
    from knowloc.models import LanguageModel, resolve
    from knowloc.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(False)
    model = build_model(args.layers, args.seed)
    lm = LanguageModel(model=model, tokenizer=tokenizer, arch=resolve(model), name="random-gpt2-small",
                       site="pre_act")
    enc = lm.encode(args.prompt, args.target)
    if enc.n_target != 1:
        raise SystemExit(f"target {args.target!r} is {enc.n_target} tokens; the comparison needs a one-token target "
                         "(knowledge-neurons and knowloc treat longer ones differently)")
    kn = KnowledgeNeurons(model, tokenizer, model_type="gpt2", device="cpu")
    prompt, kn_target = args.prompt.rstrip(), " " + args.target.strip()
    assert tokenizer(prompt)["input_ids"] == list(enc.prompt_ids)
    assert tokenizer.encode(kn_target) == list(enc.target_ids)

    def run_knowloc():
        return knowloc.attribute(lm, prompt, args.target, method="ig", steps=args.steps, warn=False).scores

    def run_kn():
        return kn.get_scores(prompt, ground_truth=kn_target, batch_size=args.steps, steps=args.steps,
                             pbar=False).detach().float()

    print(f"model=GPT2LMHeadModel random(seed={args.seed}) layers={lm.n_layers} neurons={lm.n_neurons} "
          f"vocab={model.config.vocab_size} attn={lm.attention_implementation} prompt_tokens={len(enc.prompt_ids)} "
          f"target={kn_target!r} steps={args.steps} threads={torch.get_num_threads()} "
          f"knowledge_neurons={knowledge_neurons.__file__}", flush=True)

    # untimed warm-ups: knowledge-neurons with its own Riemann rule (also measures what that rule changes),
    # then knowloc (cold: it records this prompt shape's block calls)
    start = time.perf_counter()
    kn_stock = run_kn()
    kn_stock_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = run_knowloc()
    cold_s = time.perf_counter() - start
    print(f"warm-up: kn (stock rule) {kn_stock_s:.2f} s, knowloc (cold) {cold_s:.2f} s", flush=True)

    ours_times, kn_times = [], []
    with same_grid(KnowledgeNeurons):  # knowloc's grid while timing; the stock rule is restored after
        for run in range(args.repeats):  # alternate, so that machine noise hits both alike
            start = time.perf_counter()
            ours = run_knowloc()
            ours_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs = run_kn()
            kn_times.append(time.perf_counter() - start)
            print(f"run {run + 1}/{args.repeats}: knowloc {ours_times[-1]:.3f} s, kn {kn_times[-1]:.3f} s",
                  flush=True)

    same = compare(ours, theirs)
    stock = compare(ours, kn_stock)
    prob = float(torch.softmax(model(torch.tensor([enc.prompt_ids])).logits[0, -1], -1)[enc.target_ids[0]])
    print(f"P(target)={prob:.3e}  max |score| knowloc={float(ours.abs().max()):.3e} kn={float(theirs.abs().max()):.3e}")
    print(f"correctness (same grid alpha=k/m): pearson={same['pearson']:.6f} top20_overlap={same['top_overlap']}/20 "
          f"max_rel_diff={same['max_rel_diff']:.2e}")
    print(f"correctness (kn's stock grid linspace(0,1,m)): pearson={stock['pearson']:.6f} "
          f"top20_overlap={stock['top_overlap']}/20 max_rel_diff={stock['max_rel_diff']:.2e}")
    ours_s, kn_s = statistics.median(ours_times), statistics.median(kn_times)
    print(f"knowloc {ours_s:.3f} s/query (median of {args.repeats}), knowledge-neurons {kn_s:.3f} s/query: "
          f"{kn_s / ours_s:.1f}x")
    print(f"speedup={kn_s / ours_s:.1f} knowloc_s={ours_s:.3f} kn_s={kn_s:.3f} top20_overlap={same['top_overlap']}")


if __name__ == "__main__":
    main()
