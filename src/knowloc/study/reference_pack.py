"""`knowloc reference build`: regenerate a built-in model's shipped specificity reference
(:mod:`knowloc.attribution.shipped`).

The items are the reference sets that the given study configurations use on their data (by default `knowloc
study`'s defaults and `make demo`'s, both on the builtin facts): their union, each attributed with every given
method at the configuration's steps, full precision, through the attribution cache.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from knowloc import attribution
from knowloc.attribution.disk_cache import attribution_key
from knowloc.attribution.methods import MethodConfig
from knowloc.attribution.shipped import encode_entry, write_pack
from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.runner import probe_stage
from knowloc.study.store import Store


def reference_items(configs: Iterable[StudyConfig], model: str) -> tuple[list[dict], StudyContext]:
    """The union (first-seen order) of the reference items the configurations use for ``model``, and the
    context that probed them (its model loaded)."""
    items: dict[tuple, dict] = {}
    ctx = None
    with tempfile.TemporaryDirectory(prefix="knowloc-reference-") as tmp:
        stores: dict[tuple, Store] = {}  # one probe per (data, relations, candidates)
        for config in configs:
            cfg = replace(config, models=[model], out=tmp)
            probe = (cfg.data, tuple(cfg.relations or ()), cfg.candidates)
            if probe not in stores:
                stores[probe] = Store(Path(tmp) / f"probe-{len(stores)}.sqlite")
            ctx = StudyContext(config=cfg, store=stores[probe], out=Path(tmp), echo=lambda _: None,
                               models=None if ctx is None else ctx.models)
            probe_stage(ctx, model, cfg.dataset())
            for item in ctx.neurons.reference_items(model):
                items.setdefault((item["prompt"], item["target"]), item)
        for store in stores.values():
            store.close()
    if ctx is None:
        raise KnowlocError("no configuration to build a reference for")
    return list(items.values()), ctx


def build_reference_pack(model: str, out: str | Path, configs: list[StudyConfig], methods: list[str],
                         echo: Callable[[str], None] = print) -> Path:
    """Attribute every reference item of ``configs`` with ``methods`` and write the pack to ``out``.

    Args:
        model: a built-in model name; out: the pack's path (``.json.gz``);
        configs: the study configurations whose reference sets are shipped (their steps must agree);
        methods: attribution methods.

    Returns:
        The path written.

    Example:
        >>> build_reference_pack("smollm2-135m", "src/knowloc/resources/reference/smollm2-135m.json.gz",
        ...                      [StudyConfig()], ["ig", "amig"])
    """
    steps = {c.steps for c in configs}
    if len(steps) != 1:
        raise KnowlocError(f"the configurations use different --steps ({sorted(steps)}); build one pack per steps")
    (steps,) = steps
    items, ctx = reference_items(configs, model)
    lm = ctx.model(model)
    cache = ctx.attribution_cache
    entries = {}
    work = [(m, item) for m in methods for item in items]
    for method, item in tqdm(work, desc=f"reference {model}", unit="attribution"):
        if item["target"] is None:
            attr = attribution.attribute_next_token(lm, item["prompt"], method=method, steps=steps, cache=cache)
            token = attr.extra["token_id"]
        else:
            attr = attribution.attribute(lm, item["prompt"], item["target"], method=method, steps=steps,
                                         warn=False, cache=cache)
            token = lm.first_target_token(item["target"])
        key = attribution_key(lm, MethodConfig(method, steps), item["prompt"], item["target"])
        entries[key] = encode_entry(attr.scores, attr.prob, token, attr.target, method=method, steps=steps,
                                    prompt=item["prompt"], target=item["target"])
    path = write_pack(out, model, entries)
    echo(f"wrote {len(entries)} reference attributions ({len(items)} items x {len(methods)} methods) of {model} "
         f"to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path
