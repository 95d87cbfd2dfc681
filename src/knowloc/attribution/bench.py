"""`knowloc bench attribution`: the per-layer reference against the fast engine, in one process.

Besides the seconds per query of both, the summary line says how well the fast engine uses the machine: its
matrix throughput (``tflops``, the profiler's FLOP count of one attribution over its median time) against the
measured matmul peak of the model's dtype, its **operator calls** per attribution (``op_calls``: the profiler's
events, nested ATen calls included; a CPU-measurable proxy of the kernel launches that bound it on a GPU), and,
on CUDA, its peak memory over the model's weights (``peak_ratio``; ``n/a`` on the CPU, where the allocator
keeps no peak). With ``batch=N`` (N > 1) the fast engine attributes N built-in queries of one shape in one
staircase (:func:`knowloc.attribution.engine.attribute_fast_many`, what ``attribute_many`` runs for them): ``fast_s``,
``tflops`` and ``op_calls`` are then per attribution (one group's over N), ``peak_ratio`` that of one group, and the
line ends with ``batch=N``. With ``peer=True`` it also times EleutherAI's knowledge-neurons on the same weights
(:mod:`knowloc.attribution.peer`) and adds ``peer_s=``, ``peer_speedup=``, ``peer_pearson=`` and ``peer_top20=``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from knowloc.attribution.engine import attribute_fast, attribute_fast_many, batch_key
from knowloc.attribution.engine.memory import memory_budget_gb
from knowloc.attribution.methods import MethodConfig
from knowloc.attribution.peer import check_peer_model, run_peer
from knowloc.attribution.reference import attribute_reference
from knowloc.data import load_facts
from knowloc.errors import KnowlocError
from knowloc.models import load_model


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul throughput (GFLOP/s) of an n x n x n product: the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def count_flops(fn: Callable[[], object], device) -> float:
    """Floating-point operations of fn (matmuls of forward and backward) as the PyTorch profiler counts them."""
    return profile_counts(fn, device)[0]


def profile_counts(fn: Callable[[], object], device) -> tuple[float, int]:
    """(floating-point operations, operator calls) of one call of fn, as the PyTorch profiler counts them: the
    FLOPs of its matmuls (forward and backward) and its CPU-side operator events (nested ATen calls included)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities, with_flops=True) as prof:
        fn()
    events = prof.events()
    calls = sum(1 for event in events if event.device_type == torch.autograd.DeviceType.CPU)
    return float(sum(event.flops or 0 for event in events)), calls


def peak_memory_ratio(lm, fn: Callable[[], object]) -> float | None:
    """Peak memory allocated during one call of fn over the bytes of the model's weights (CUDA only; None
    elsewhere)."""
    if lm.device.type != "cuda":
        return None
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    torch.cuda.synchronize(lm.device)
    torch.cuda.reset_peak_memory_stats(lm.device)
    fn()
    torch.cuda.synchronize(lm.device)
    return torch.cuda.max_memory_allocated(lm.device) / weights


def benchmark_queries(lm, n: int, tokens: int = 13) -> list:
    """n built-in queries whose prompt length is closest to `tokens` tokens (the issue's reference setting)."""
    queries = load_facts("builtin").queries
    ranked = sorted(queries, key=lambda q: (abs(len(lm.encode(q.text).prompt_ids) - tokens), q.text))
    return [lm.encode(q.text, q.fact.object) for q in ranked[:n]]


def same_shape_queries(lm, n: int, config: MethodConfig, tokens: int = 13) -> list:
    """n built-in queries of one shape (:func:`knowloc.attribution.engine.batch_key`), so that one staircase
    carries them: of the shapes with at least n queries, the one whose prompt length is closest to `tokens`.

    Raises:
        KnowlocError: no shape has n built-in queries.
    """
    groups: dict[tuple, list] = {}
    for q in sorted(load_facts("builtin").queries, key=lambda q: q.text):
        enc = lm.encode(q.text, q.fact.object)
        groups.setdefault(batch_key(lm, enc, config), []).append(enc)
    fit = [key for key, encs in groups.items() if len(encs) >= n]
    if not fit:
        raise KnowlocError(f"no {n} built-in queries share one shape on this tokenizer (at most "
                           f"{max(len(encs) for encs in groups.values())}); choose a smaller --batch")
    best = min(fit, key=lambda key: (abs(key[0] + 1 - tokens), -len(groups[key]), key))
    return groups[best][:n]


def run_attribution_benchmark(model: str, *, method: str = "ig", steps: int = 20, repeats: int = 5,
                              n_queries: int = 1, device=None, dtype=None, peer: bool = False, batch: int = 1,
                              echo: Callable[[str], None] = print) -> dict:
    """Time the reference and the fast engine on `n_queries` built-in queries (and, with `peer`,
    knowledge-neurons); echo the runs and one last ``key=value`` line; return its fields.

    With `batch` N > 1 the queries are max(n_queries, N) built-in queries of one shape
    (:func:`same_shape_queries`), attributed N at a time in one staircase; the fast engine's time, FLOPs and
    operator calls are per attribution.

    Raises:
        KnowlocError: `peer` with a method other than ig, or a model knowledge-neurons cannot attribute
            (:func:`knowloc.attribution.peer.check_peer_model`); `batch` below 1 or larger than any group of
            same-shape built-in queries.
    """
    config = MethodConfig(method, steps)
    if peer and method != "ig":
        raise KnowlocError(f"--peer compares integrated gradients with a zero baseline (ig), not {method}")
    if batch < 1:
        raise KnowlocError(f"--batch must be at least 1, got {batch}")
    lm = load_model(model, device=device, dtype=dtype)
    if peer:
        check_peer_model(lm)  # before any timing
    encs = benchmark_queries(lm, n_queries) if batch == 1 else same_shape_queries(lm, max(n_queries, batch), config)
    groups = [encs[i:i + batch] for i in range(0, len(encs), batch)]

    def fast_scores() -> list[torch.Tensor]:
        return [scores for group in groups for scores, _ in attribute_fast_many(lm, group, config)]

    echo(f"model={model} method={method} steps={config.effective_steps} layers={lm.n_layers} "
         f"neurons={lm.n_neurons} queries={len(encs)} tokens={[len(e.input_ids) for e in encs]} "
         f"threads={torch.get_num_threads()} device={lm.device} memory_gb={memory_budget_gb(lm.device):.1f}"
         + (f" batch={batch}" if batch > 1 else ""))
    fast_scores()  # warm-up (allocator, kernels), not timed
    fast_times, ref_times, errors = [], [], []
    for run in range(repeats):
        # alternate the two engines so that machine noise hits both alike
        start = time.perf_counter()
        ref = [attribute_reference(lm, enc, config) for enc in encs]
        _sync(lm.device)
        ref_times.append((time.perf_counter() - start) / len(encs))
        start = time.perf_counter()
        fast = fast_scores()
        _sync(lm.device)
        fast_times.append((time.perf_counter() - start) / len(encs))
        errors += [float((f - r).abs().max() / r.abs().max()) for f, r in zip(fast, ref)]
        echo(f"run {run + 1}/{repeats}: ref {ref_times[-1]:.3f} s/query, fast {fast_times[-1]:.3f} s/query")
    def one() -> None:  # one attribution, or one group of `batch`
        attribute_fast_many(lm, groups[0], config)
    flops, op_calls = profile_counts(one, lm.device)
    flops, op_calls = flops / len(groups[0]), round(op_calls / len(groups[0]))  # per attribution
    peak_ratio = peak_memory_ratio(lm, one)
    fast_s, ref_s = statistics.median(fast_times), statistics.median(ref_times)
    result = {
        "speedup": ref_s / fast_s, "fast_s": fast_s, "ref_s": ref_s, "max_rel_err": max(errors),
        "gflops": flops / 1e9 / fast_s, "tflops": flops / 1e12 / fast_s,
        "peak_gflops": matmul_peak_gflops(device=lm.device, dtype=lm.dtype),
        "op_calls": op_calls, "peak_ratio": peak_ratio, "batch": batch,
    }
    result["pct_peak"] = 100 * result["gflops"] / result["peak_gflops"]
    peer_fields = ""
    if peer:
        result |= run_peer(lm, load_facts("builtin").queries, config.effective_steps, repeats,
                           lambda pre, enc: attribute_fast(pre, enc, config)[0], echo=echo)
        peer_fields = (f" peer_s={result['peer_s']:.3f} peer_speedup={result['peer_speedup']:.1f} "
                       f"peer_pearson={result['peer_pearson']:.6f} peer_top20={result['peer_top20']}")
    echo(f"speedup={result['speedup']:.1f} fast_s={fast_s:.3f} ref_s={ref_s:.3f} "
         f"max_rel_err={result['max_rel_err']:.2e} gflops={result['gflops']:.1f} "
         f"peak_gflops={result['peak_gflops']:.1f} tflops={result['tflops']:.3f} pct_peak={result['pct_peak']:.0f} "
         f"op_calls={op_calls} peak_ratio={'n/a' if peak_ratio is None else f'{peak_ratio:.2f}'}{peer_fields}"
         + (f" batch={batch}" if batch > 1 else ""))
    return result
