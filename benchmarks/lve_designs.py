"""Which reduced localization-vs-editing design decides Hase et al.'s finding, from one study's stored edits.

Usage:
    python benchmarks/lve_designs.py STUDY_DIR [--facts 8,10,12]
        [--designs "rome,ft:every3;rome:every3;rome:every6;rome:every9"]

STUDY_DIR is a finished study that ran `localization-vs-editing` with every editor and layer the designs name
(e.g. the demo's settings with `--lve-editors rome,ft --lve-layers every3 --lve-facts 16`); its store is read, never
written. A design is editors and a layer list (`rome:every9`); for each design and each N of ``--facts`` it prints
the rows the finding would read (the design's editors x the tracing and kn signals, over the study's first N
localization-vs-editing facts, restricted to the design's layers): Hase et al.'s delta R^2 with its bootstrap
interval (:func:`knowloc.analysis.localization.hase_delta_r2_ci`, the study's n_boot and seed), and the finding's
verdict (supports below 0.05, contradicts above, the rows combined as a study combines them). docs/performance.md
("The demo: designed to decide") shows its output on two seeded samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knowloc.analysis import Estimate
from knowloc.analysis.localization import hase_delta_r2_ci
from knowloc.study.context import StudyContext
from knowloc.study.experiments import common, lve
from knowloc.study.findings import combine, verdict
from knowloc.study.layers import LayerSpec
from knowloc.study.reader import stored_config
from knowloc.study.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--facts", default="8,10,12")
    parser.add_argument("--designs", default="rome,ft:every3;rome:every3;rome:every6;rome:every9")
    args = parser.parse_args()
    out = Path(args.study)
    cfg = stored_config(json.loads((out / "summary.json").read_text()))
    ctx = StudyContext(config=cfg, store=Store(out / "results.sqlite"), out=out, echo=lambda _: None)
    model, method = cfg.models[0], cfg.methods[0]
    ctx.load_facts(model)
    n_layers = ctx.model(model).n_layers
    edits = common.rows_once_per_fact(ctx, lve.NAME, model, "editor")
    order = [f for f in common.first_studied(ctx, model, len(ctx.facts[model])) if f in edits]
    traces = common.fact_traces(ctx, model)
    signals = {"tracing": {f: lve.tracing_signal(traces.get(f, [])) for f in order},
               "kn": {f: common.kn_profile(ctx, model, method, f, 0) for f in order}}
    print(f"{out}: {model}, {len(order)} facts with stored edits, seed {cfg.seed}, n_boot {cfg.n_boot}")
    for design in args.designs.split(";"):
        editors, layer_list = design.split(":")
        layers = set(LayerSpec.parse(layer_list.split(","), "--designs").resolve(n_layers))
        for n in (int(x) for x in args.facts.split(",")):
            parts, lines = [], []
            for editor in editors.split(","):
                for signal, by_fact in signals.items():
                    facts = lve.regression_facts(edits, by_fact, editor, order[:n], layers)
                    _, _, delta, low, high = hase_delta_r2_ci(facts, n_boot=cfg.n_boot, seed=cfg.seed)
                    e = Estimate(len(facts), delta, low, high)
                    parts.append(verdict(e, support_below=lve.SMALL, contradict_above=lve.SMALL))
                    lines.append(f"    {editor} {signal}: {e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}] "
                                 f"({e.n} facts) {parts[-1][0]}")
            print(f"{design}, first {n} facts: {combine(parts)[0]}")
            print("\n".join(lines))


if __name__ == "__main__":
    main()
