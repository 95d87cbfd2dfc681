import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# deterministic property tests: the same examples on every run
settings.register_profile("knowloc", derandomize=True, deadline=None)
settings.load_profile("knowloc")

# Tiny models gain nothing from threads, and OpenMP spin-waits make them crawl when the cores are shared.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PARAREL = REPO.parent / "shared" / "data" / "pararel"


@pytest.fixture(scope="session")
def pararel_dir() -> Path:
    if not (PARAREL / "patterns").is_dir():
        pytest.skip("ParaRel data not found beside the checkout (../shared/data/pararel)")
    return PARAREL


@pytest.fixture(scope="session")
def tiny_models():
    from knowloc.models import load_model

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def smollm2():
    from knowloc.models import load_model

    try:
        return load_model("smollm2-135m")
    except Exception as exc:  # the wheel is installed by `make test`; skip only outside it
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded model unavailable: {exc}")
