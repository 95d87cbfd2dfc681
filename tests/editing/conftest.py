import pytest

from knowloc.editing import compute_baseline


@pytest.fixture(scope="module")
def setup(tiny_models, request):
    """``get(name)``: a tiny model and its unedited Baseline on the test module's PROMPTS, LOCALITY and TEXTS,
    computed once per module."""
    module = request.module
    cache = {}

    def get(name):
        if name not in cache:
            lm = tiny_models(name)
            cache[name] = (lm, compute_baseline(lm, module.PROMPTS, module.LOCALITY, module.TEXTS))
        return cache[name]
    return get
