"""`knowloc bench editors`: what one edit of each editor costs, and what it holds in memory.

On ``queries`` built-in queries (the first of each of the first facts, in file order), each edited to another
object of its relation: the seconds to compute ROME's key statistics C of the edit layer once (over ``samples``
samples of 64 tokens of the model's own text), then per editor the median seconds of one edit (computed and
applied, the weights restored; C already stored for rome; ``rome-stop`` is rome with ROME's early stop at a loss
of 5e-2, ``--rome-stop 0.05``), its Rel, and the bytes of weights it keeps to restore
against the model's size (no editor holds a second copy of the model). ``kn`` and ``kn-ft`` edit a stand-in N_i:
the 10 neurons of the upper half of the layers with the largest activation on the query (a KN set needs an
attribution; its size and layers are typical of the filtered sets).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch

from knowloc.data import load_facts
from knowloc.editing.editors import CovarianceStore, EditRequest, TextSample
from knowloc.editing.editors.finetune import FtSettings
from knowloc.editing.editors.kn import UpdateSettings
from knowloc.editing.editors.rome import SAMPLES, RomeSettings
from knowloc.editing.evaluate import compute_baseline
from knowloc.editing.session import choose_new_object
from knowloc.editing.trials import measure_edit
from knowloc.models import load_model
from knowloc.models.hooks import observe_saved_weights
from knowloc.models.loading import resolve_device


def _queries(n: int):
    """(prompt, subject, gold, objects of the relation) of the first query of the first n facts."""
    dataset = load_facts("builtin")
    objects: dict[str, list[str]] = {}
    for fact, _ in dataset:
        objects.setdefault(fact.relation, []).append(fact.object)
    out = []
    for fact, queries in dataset:
        if len(out) == n:
            break
        out.append((queries[0].text, fact.subject, fact.object, objects[fact.relation]))
    return out


def _stand_in_kn(base, index: int, n_layers: int, k: int = 10) -> tuple[tuple[int, int], ...]:
    acts = base.activations[index][n_layers // 2:]  # [upper layers, n_neurons]
    top = torch.topk(acts.flatten(), k).indices
    return tuple((n_layers // 2 + int(i) // acts.shape[1], int(i) % acts.shape[1]) for i in top)


def run_editors_benchmark(model: str = "smollm2-135m", *, layer: int | None = None, queries: int = 3,
                          samples: int = SAMPLES, device=None, echo: Callable[[str], None] = print) -> dict:
    """Print and return the figures of the module docstring.

    Returns:
        ``{"c_s": seconds of C, "editors": {name: {"median_s", "rel", "restore_bytes"}}, "model_bytes"}``.

    Example:
        >>> run_editors_benchmark("smollm2-135m", queries=3)["editors"]["rome"]["median_s"]
    """
    lm = load_model(model, device=device)
    layer = lm.n_layers // 2 if layer is None else layer
    model_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    echo(f"{model} on {resolve_device(device)} with {torch.get_num_threads()} threads; edit layer {layer}; "
         f"{queries} built-in queries")
    covariance = CovarianceStore(None)
    sample = TextSample(n=samples)  # 64 tokens each, seed 0: a study's sample (its default --seed)
    start = time.perf_counter()
    covariance.get(lm, layer, sample)
    c_s = time.perf_counter() - start
    echo(f"C of layer {layer} over {samples} x {sample.length} tokens of the model's own text: {c_s:.1f} s (once per model, "
         "layer and sample; stored)")
    # the editors a study runs with its default settings: its sections' defaults (RomeSettings, FtSettings,
    # UpdateSettings: calibrated, lambda1 = lambda2 = 1) and its C sample (64 tokens each, seed 0)
    rome = RomeSettings(samples=samples)
    editors = {"kn": UpdateSettings().editor(), "kn-ft": FtSettings().editor(neurons=True), "ft": FtSettings().editor(),
               "rome": rome.editor(covariance),
               "rome-stop": dataclasses.replace(rome, stop=0.05).editor(covariance)}  # ROME's early stop
    restore_bytes: dict[str, int] = {}

    def count_saved(layer_index: int, original: torch.Tensor) -> None:  # bytes of the originals each editor keeps
        restore_bytes[current] = restore_bytes.get(current, 0) + original.numel() * original.element_size()

    results: dict[str, dict] = {}
    cases = []
    for prompt, subject, gold, objects in _queries(queries):
        base = compute_baseline(lm, [prompt], [], [])
        new = choose_new_object(lm, gold, objects, seed=0)
        if new is not None:
            neurons = _stand_in_kn(base, 0, lm.n_layers)
            acts = base.activations[0]  # the neurons' activations on the query (kn's sign-aware rule)
            cases.append((base, EditRequest(prompt, subject, gold, new, layers=layer, neurons=neurons,
                                            activations={(l, i): float(acts[l, i]) for l, i in neurons})))
    with observe_saved_weights(count_saved):  # the originals each editor saves to restore
        for name, editor in editors.items():
            seconds, rels = [], []
            for base, request in cases:
                current = name
                restore_bytes[name] = 0
                result, _, s = measure_edit(base, editor, 0, request)
                seconds.append(s)
                rels.append(result.rel)
            results[name] = {"median_s": statistics.median(seconds), "rel": sum(rels) / len(rels),
                             "restore_bytes": restore_bytes.get(name, 0)}
            echo(f"  {name:6s} {results[name]['median_s']:6.2f} s per edit (median of {len(seconds)}), Rel "
                 f"{results[name]['rel']:.2f}, keeps {results[name]['restore_bytes'] / 2**20:.1f} MiB of weights to "
                 f"restore ({100 * results[name]['restore_bytes'] / model_bytes:.1f}% of the model's "
                 f"{model_bytes / 2**20:.0f} MiB)")
    return {"c_s": c_s, "editors": results, "model_bytes": model_bytes}
