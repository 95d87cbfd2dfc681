"""`knowloc bench editors`: what one edit of each editor costs, and what it holds in memory; `knowloc bench
mass-editing`: what many edits cost, in one batch and in sequence.

On ``queries`` built-in queries (the first of each of the first facts, in file order), each edited to another
object of its relation: the seconds to compute ROME's key statistics C of the edit layer once (over ``samples``
samples of 64 tokens of the model's own text), then per editor the median seconds of one edit (computed and
applied, the weights restored; C already stored for rome; ``rome-stop`` is rome with ROME's early stop at a loss
of 5e-2, ``--rome-stop 0.05``), its Rel, and the bytes of weights it keeps to restore
against the model's size (no editor holds a second copy of the model). ``kn`` and ``kn-ft`` edit a stand-in N_i:
the 10 neurons of the upper half of the layers with the largest activation on the query (a KN set needs an
attribution; its size and layers are typical of the filtered sets).

The mass-editing benchmark (:func:`run_mass_editing_benchmark`) edits the first query of the first ``edits``
built-in facts (each to another object of its relation) and keeps the first queries of the next facts, unedited,
as locality prompts: the seconds of C for every layer the editors read (one pass), MEMIT's (and AlphaEdit's) batch of all
edits (with C: the issue's figure), then each editor's ``edits`` sequential edits, seconds per edit; after the
last edit, the share of all edits that hold (Rel: P(o') > P(o) on each edited query) and of the locality prompts
whose argmax is unchanged (Loc).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch

from knowloc.data import load_facts
from knowloc.editing.editors import CovarianceStore, EditRequest, Editor, TextSample
from knowloc.editing.editors.finetune import FineTune, FtSettings
from knowloc.editing.editors.memit import AlphaEdit, Memit
from knowloc.editing.editors.kn import UpdateSettings
from knowloc.editing.editors.rome import SAMPLES, RomeSettings
from knowloc.editing.evaluate import compute_baseline
from knowloc.editing.session import choose_new_object
from knowloc.editing.trials import measure_edit
from knowloc.errors import KnowlocError
from knowloc.models import load_model
from knowloc.models.hooks import observe_saved_weights
from knowloc.models.loading import resolve_device
from knowloc.models.scoring import next_token_distributions


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
    # UpdateSettings: calibrated, lambda1 = lambda2 = 1) and its C sample (64 tokens each, seed 0); ft's bound is
    # FineTune's default (a study calibrates it per model; the time of an edit does not depend on it)
    rome, ft = RomeSettings(samples=samples), FtSettings()
    editors = {"kn": UpdateSettings().editor(), "kn-ft": ft.editor(neurons=True, bound=FineTune.bound),
               "ft": ft.editor(bound=FineTune.bound),
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


MASS_EDITORS = ("kn", "kn-ft", "ft", "rome", "memit", "alphaedit")


def run_mass_editing_benchmark(model: str = "smollm2-135m", *, edits: int = 100, editors=MASS_EDITORS,
                               modes=("batch", "sequential"), layer: int | None = None, samples: int = SAMPLES,
                               device=None, echo: Callable[[str], None] = print) -> dict:
    """Print and return the figures of the module docstring (mass editing).

    Args:
        model: the model; edits: built-in facts edited (at most the set's size minus one: the rest are locality
            prompts); editors: of :data:`MASS_EDITORS`; modes: ``batch`` (memit's and alphaedit's) and / or
            ``sequential``; layer: the single-layer editors' layer (default the middle); samples: samples of 64
            tokens of C; device: where the model runs.

    Returns:
        ``{"c_s", "batch": {editor: {"seconds", "with_c_s", "rel", "loc"}}, "sequential": {editor: {"s_per_edit",
        "rel", "loc"}}, "edits"}``.

    Example:
        >>> run_mass_editing_benchmark("smollm2-135m", edits=10, editors=("memit",))["batch"]["memit"]["seconds"]
    """
    unknown = [e for e in editors if e not in MASS_EDITORS]
    if unknown or not editors:
        raise KnowlocError(f"mass-editing editors must be among {', '.join(MASS_EDITORS)}, got {list(editors)}")
    if not modes or set(modes) - {"batch", "sequential"}:
        raise KnowlocError(f"mass-editing modes must be batch and / or sequential, got {list(modes)}")
    lm = load_model(model, device=device)
    layer = lm.n_layers // 2 if layer is None else layer
    facts = _queries(len(load_facts("builtin")))
    if not 1 <= edits < len(facts):
        raise KnowlocError(f"--edits must be in 1..{len(facts) - 1} (the built-in set has {len(facts)} facts)")
    cases = [(prompt, subject, gold, choose_new_object(lm, gold, objects, seed=0))
             for prompt, subject, gold, objects in facts]
    edited = [c for c in cases if c[3] is not None][:edits]
    locality = [c[0] for c in cases if c not in edited][:20]
    base = compute_baseline(lm, [c[0] for c in edited])  # activations for kn's stand-in N_i
    requests = [EditRequest(prompt, subject, gold, new, layers=layer, neurons=_stand_in_kn(base, i, lm.n_layers),
                            activations={(l, n): float(base.activations[i][l, n])
                                         for l, n in _stand_in_kn(base, i, lm.n_layers)})
                for i, (prompt, subject, gold, new) in enumerate(edited)]
    loc_before = [d.top_ids[0] for d in next_token_distributions(lm, locality, top_k=1)]
    echo(f"{model} on {resolve_device(device)} with {torch.get_num_threads()} threads: {len(requests)} built-in "
         f"facts edited, {len(locality)} locality prompts; single-layer editors at layer {layer}")
    covariance = CovarianceStore(None)
    rome = RomeSettings(samples=samples)
    ft = FtSettings()
    built: dict[str, Editor] = {
        "kn": UpdateSettings().editor(), "kn-ft": ft.editor(neurons=True, bound=FineTune.bound),
        "ft": ft.editor(bound=FineTune.bound), "rome": rome.editor(covariance),
        "memit": Memit(**rome.arguments(covariance)), "alphaedit": AlphaEdit(**rome.arguments(covariance))}
    chosen = {name: built[name] for name in editors}
    layers = sorted(({layer} if "rome" in chosen else set())
                    | {x for name in ("memit", "alphaedit") if name in chosen for x in built[name].range_of(lm)})
    start = time.perf_counter()
    if layers:
        covariance.ensure(lm, layers, TextSample(n=samples))
    c_s = time.perf_counter() - start
    echo(f"C of layer {', '.join(map(str, layers)) or '-'} over {samples} x 64 tokens: {c_s:.1f} s")

    def scores() -> tuple[float, float]:
        dists = next_token_distributions(lm, [r.prompt for r in requests], top_k=1)
        rel = sum(float(d.probs[lm.first_target_token(r.new_object)] > d.probs[lm.first_target_token(r.gold)])
                  for d, r in zip(dists, requests)) / len(requests)
        after = [d.top_ids[0] for d in next_token_distributions(lm, locality, top_k=1)]
        return rel, sum(a == b for a, b in zip(after, loc_before)) / max(len(locality), 1)
    out: dict = {"c_s": c_s, "edits": len(requests), "batch": {}, "sequential": {}}
    for name in ("memit", "alphaedit"):
        if name in chosen and "batch" in modes:
            start = time.perf_counter()
            with chosen[name].apply(lm, requests):
                seconds = time.perf_counter() - start
                rel, loc = scores()
            out["batch"][name] = {"seconds": seconds, "with_c_s": seconds + c_s, "rel": rel, "loc": loc}
            echo(f"  {name} batch of {len(requests)}: {seconds:.1f} s ({seconds + c_s:.1f} s with C); Rel {rel:.2f}, "
                 f"Loc {loc:.2f}")
    for name, editor in chosen.items() if "sequential" in modes else ():
        measured: list[tuple[float, float]] = []
        spent = [0.0]

        def after(k: int, applied) -> None:
            if k == len(requests) - 1:
                begin = time.perf_counter()
                measured.append(scores())
                spent[0] += time.perf_counter() - begin
        start = time.perf_counter()
        editor.sequential(lm, requests, after)
        per_edit = (time.perf_counter() - start - spent[0]) / len(requests)
        rel, loc = measured[0]
        out["sequential"][name] = {"s_per_edit": per_edit, "rel": rel, "loc": loc}
        echo(f"  {name:9s} {len(requests)} sequential edits: {per_edit:.2f} s per edit; after the last, Rel "
             f"{rel:.2f} of all edits, Loc {loc:.2f}")
    echo("mass_editing " + " ".join(
        [f"c_s={c_s:.1f}"] + [f"{n}_batch_s={v['seconds']:.1f}" for n, v in out["batch"].items()]
        + [f"{n}_s_per_edit={v['s_per_edit']:.2f}" for n, v in out["sequential"].items()]))
    return out
