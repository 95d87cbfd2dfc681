import json
from pathlib import Path

import pytest

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
                    progress=False, seed=1)
        args.update(overrides)
        return args
    return make
