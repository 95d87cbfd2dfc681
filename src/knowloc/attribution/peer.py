"""EleutherAI's `knowledge-neurons==0.0.2` on the same weights, prompt and Riemann grid as knowloc's engine.

`knowloc bench attribution --peer` and `benchmarks/vs_knowledge_neurons.py` time its ``get_scores`` beside
knowloc's fast engine and check that both compute the same number (Pearson r over every score, top-20 overlap).

What is computed, identically on both sides: IG of F(x) = P(target token | prompt; a^l <- x) (Dai et al. 2022),
the softmax probability of a one-token target at the last prompt position, zero baseline, every MLP neuron of
every layer (each layer on its own, the others clean), read where knowledge-neurons hooks GPT models: the output
of the first MLP projection before its activation (``mlp.c_fc`` in GPT-2, ``mlp.fc_in`` in GPT-J), which is
knowloc's ``site="pre_act"``.

Known differences, and what is done about them:
    1. The Riemann rule. knowledge-neurons' ``scaled_input`` integrates at alpha = linspace(0, 1, m) (both ends,
       each weighted 1/m); knowloc at alpha = k/m, k = 1..m (the right Riemann sum of Dai et al.'s formula).
       :func:`same_grid` swaps ``KnowledgeNeurons.scaled_input`` for knowloc's grid while timing (restored on
       exit; the installed files are never touched); its cost is the same m rows per layer.
    2. Multi-token targets: knowledge-neurons averages the IG of each token with the prompt extended by the
       model's argmax tokens, knowloc teacher-forces the gold tokens; for a one-token target the two coincide,
       so :func:`one_token_query` picks one.
    3. GPT-J: knowledge-neurons 0.0.2 knows GPT-2's MLP names only; for GPT-J they are set to
       ``mlp.fc_in`` / ``mlp.fc_out`` (:data:`MLP_NAMES`).

Installation: knowledge-neurons is imported as it is where it is installed (the GPU machine gets its wheel from
``../shared/gpu/wheels.sh``); otherwise this interpreter's pip installs it ``--no-deps`` into a scratch directory
with its one import-time dependency knowloc lacks, ``einops`` (:func:`load_knowledge_neurons`); the venv is not
modified.
"""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from knowloc.errors import KnowlocError
from knowloc.models.lm import Encoding, LanguageModel

KN_VERSION = "0.0.2"
EINOPS_VERSION = "0.8.2"
DEFAULT_SCRATCH = Path(tempfile.gettempdir()) / f"knowloc-bench-knowledge-neurons-{KN_VERSION}"
# model_type -> (knowledge-neurons' input_ff_attr, output_ff_attr) in each block of `transformer.h`
MLP_NAMES = {"gpt2": ("mlp.c_fc", "mlp.c_proj.weight"), "gptj": ("mlp.fc_in", "mlp.fc_out.weight")}


def load_knowledge_neurons(scratch: Path = DEFAULT_SCRATCH):
    """The `knowledge_neurons` module: imported where installed, else pip-installed ``--no-deps`` (with einops)
    into `scratch`, which goes first on sys.path.

    Raises:
        KnowlocError: it is not installed and pip cannot install it (e.g. no network), in one line.
    """
    try:
        return importlib.import_module("knowledge_neurons")
    except ImportError:
        pass
    wanted = {f"knowledge-neurons=={KN_VERSION}": scratch / f"knowledge_neurons-{KN_VERSION}.dist-info",
              f"einops=={EINOPS_VERSION}": scratch / f"einops-{EINOPS_VERSION}.dist-info"}
    missing = [spec for spec, marker in wanted.items() if not marker.is_dir()]
    if missing:
        scratch.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                               str(scratch), *missing], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise KnowlocError(f"could not install {' '.join(missing)} into {scratch} for --peer: {last}")
    sys.path.insert(0, str(scratch))
    importlib.invalidate_caches()
    return importlib.import_module("knowledge_neurons")


def right_riemann_scaled_input(activations: torch.Tensor, steps: int = 20, device="cpu") -> torch.Tensor:
    """knowledge-neurons' ``scaled_input`` on knowloc's grid: m copies of `activations` [b, d] scaled by
    alpha = k/m, k = 1..m (its own uses linspace(0, 1, m)); returns [m * b, d]."""
    alphas = torch.arange(1, steps + 1, device=device, dtype=activations.dtype) / steps  # [m]
    return (activations.unsqueeze(0).to(device) * alphas[:, None, None]).flatten(0, 1)


@contextmanager
def same_grid(kn_class) -> Iterator[None]:
    """knowledge-neurons integrates on knowloc's grid inside the block; its own ``scaled_input`` is restored."""
    stock = kn_class.__dict__["scaled_input"]
    kn_class.scaled_input = staticmethod(right_riemann_scaled_input)
    try:
        yield
    finally:
        kn_class.scaled_input = stock


def agreement(ours: torch.Tensor, theirs: torch.Tensor, k: int = 20) -> dict:
    """Pearson r over all scores, overlap of the top-k neurons and max |difference| / max |theirs|."""
    x, y = ours.flatten().double().cpu(), theirs.flatten().double().cpu()
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    top = len(set(torch.topk(x, k).indices.tolist()) & set(torch.topk(y, k).indices.tolist()))
    return {"pearson": pearson, "top_overlap": top, "max_rel_diff": float((x - y).abs().max() / y.abs().max())}


def check_peer_model(lm: LanguageModel) -> str:
    """The model's family if knowledge-neurons can attribute it in fp32.

    Raises:
        KnowlocError: another family (knowledge-neurons handles GPT-2 and, with its MLP names set, GPT-J) or a
            dtype other than fp32 (the comparison's premise).
    """
    family = lm.model.config.model_type
    if family not in MLP_NAMES:
        raise KnowlocError(f"--peer compares with knowledge-neurons, which handles {' and '.join(MLP_NAMES)} "
                           f"models; {lm.name} is {family} (try random:gpt2-xl or random:gptj-6b)")
    if lm.dtype != torch.float32:
        raise KnowlocError(f"--peer compares in fp32; {lm.name} is loaded in {lm.dtype} (drop --dtype)")
    return family


def one_token_query(lm: LanguageModel, queries) -> tuple[str, str, Encoding]:
    """(prompt, target, encoding) of the first query whose target is one token (knowledge-neurons and knowloc
    treat longer targets differently) and whose prompt tokenizes alike on its own."""
    for query in queries:
        prompt, target = query.text.rstrip(), query.fact.object
        enc = lm.encode(prompt, target)
        own = lm.tokenizer(prompt)["input_ids"]
        if enc.n_target == 1 and list(own) == list(enc.prompt_ids) and \
                lm.tokenizer.encode(" " + target.strip()) == list(enc.target_ids):
            return prompt, target, enc
    raise KnowlocError(f"no built-in query has a one-token target under {lm.name}'s tokenizer; --peer needs one")


def run_peer(lm: LanguageModel, queries, steps: int, repeats: int,
             ours: Callable[[LanguageModel, Encoding], torch.Tensor], echo: Callable[[str], None] = print) -> dict:
    """Time knowledge-neurons' ``get_scores`` and knowloc (`ours`, at the pre-activation site) on the same
    model, one-token query and grid, alternately (median of `repeats` after one untimed run of each).

    Returns:
        dict with ``peer_s``, ``ours_s`` (seconds per query), ``peer_speedup`` and the :func:`agreement` of the
        two score tables (``peer_pearson``, ``peer_top20``, ``peer_max_rel_diff``).
    """
    check_peer_model(lm)
    kn_module = load_knowledge_neurons()
    pre = replace(lm, site="pre_act")  # knowledge-neurons' hook site; the caches are shared
    prompt, target, enc = one_token_query(pre, queries)
    kn = kn_module.KnowledgeNeurons(lm.model, lm.tokenizer, model_type="gpt2", device=lm.device)
    kn.input_ff_attr, kn.output_ff_attr = MLP_NAMES[lm.model.config.model_type]
    peer_target = " " + target.strip()
    echo(f"peer: knowledge-neurons {getattr(kn_module, '__version__', KN_VERSION)} ({kn_module.__file__}); "
         f"prompt {prompt!r} ({len(enc.prompt_ids)} tokens) -> {peer_target!r}, site pre_act, grid alpha = k/m")

    def theirs() -> torch.Tensor:
        scores = kn.get_scores(prompt, ground_truth=peer_target, batch_size=steps, steps=steps, pbar=False)
        return scores.detach().float()

    times: dict[str, list[float]] = {"ours": [], "peer": []}
    scores: dict[str, torch.Tensor] = {}  # each side's last score table
    with same_grid(kn_module.KnowledgeNeurons):
        theirs(), ours(pre, enc)  # untimed: allocator, kernels, the engine's block calls of this shape
        for _ in range(repeats):  # alternate, so that machine noise hits both alike
            for name, fn in (("ours", lambda: ours(pre, enc)), ("peer", theirs)):
                _sync(lm.device)
                start = time.perf_counter()
                scores[name] = fn()
                _sync(lm.device)
                times[name].append(time.perf_counter() - start)
    same = agreement(scores["ours"], scores["peer"])
    ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
    echo(f"peer: knowloc {ours_s:.3f} s/query, knowledge-neurons {peer_s:.3f} s/query ({peer_s / ours_s:.1f}x); "
         f"pearson {same['pearson']:.6f}, top-20 {same['top_overlap']}/20, max rel diff {same['max_rel_diff']:.1e}")
    return {"peer_s": peer_s, "ours_s": ours_s, "peer_speedup": peer_s / ours_s, "peer_pearson": same["pearson"],
            "peer_top20": same["top_overlap"], "peer_max_rel_diff": same["max_rel_diff"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
