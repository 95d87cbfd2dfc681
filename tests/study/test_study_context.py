"""The study context: one model in memory at a time."""


def test_switching_models_releases_the_previous_model_and_its_caches():
    import gc
    import weakref

    from knowloc.models.fingerprint import weights_hash
    from knowloc.study.context import ModelPool

    pool = ModelPool()
    lm = pool.get("tiny-gpt2")
    weights_hash(lm)
    caches, module = lm.caches, weakref.ref(lm.model)
    assert caches
    pool.switch("tiny-llama")
    assert caches == {} and pool.loaded() == []  # freed at the switch, even with a reference left (lm)
    del lm
    gc.collect()
    assert module() is None
