"""The shipped resources: built-in fact set, neutral texts, AMIG reference prompts, manifest."""

from __future__ import annotations

import collections
import json
import re
from importlib import resources
from pathlib import Path

from knowloc.data import is_causal_template, load_amig_reference_prompts, load_facts, load_neutral_texts


def test_builtin_size_and_shape() -> None:
    data = load_facts("builtin")
    assert len(data) >= 80
    assert len(data.relations) >= 6
    per_relation = collections.Counter(fact.relation for fact in data.facts)
    assert set(per_relation) == set(data.relations)
    assert min(per_relation.values()) >= 10
    for relation in data.relations:
        assert len(data.templates[relation]) >= 5, relation
        assert all(is_causal_template(t) for t in data.templates[relation])
    ids = [fact.id for fact in data.facts]
    assert len(set(ids)) == len(ids)
    assert len({(f.relation, f.subject) for f in data.facts}) == len(data)


def test_builtin_queries() -> None:
    data = load_facts("builtin")
    for fact, queries in data:
        assert len(queries) >= 5, fact.id
        texts = [q.text for q in queries]
        assert len(set(texts)) == len(texts), fact.id
        for q in queries:
            assert q.fact is fact
            assert q.text == q.text.strip() and not q.text[-1].isspace()
            start, end = q.subject_span
            assert q.text[start:end] == fact.subject
            # the answer is not given away (as a whole word: "Germany" -> "German" is fine)
            assert not re.search(rf"\b{re.escape(fact.object)}\b", q.text), (fact.id, q.text)
        assert fact.object == fact.object.strip() and fact.subject == fact.subject.strip()


def test_builtin_filters() -> None:
    data = load_facts("builtin", relations=["P36", "P30"], limit=4)
    assert data.relations == ["P36", "P30"]
    assert collections.Counter(f.relation for f in data.facts) == {"P36": 4, "P30": 4}
    assert data.items == load_facts("builtin", relations=["P30", "P36"], limit=4).items


def test_builtin_templates_not_copied_from_pararel(pararel_dir: Path) -> None:
    def norm(template: str) -> str:
        return " ".join(template.replace(" .", ".").split()).lower()

    pararel = {
        norm(json.loads(line)["pattern"])
        for path in (pararel_dir / "patterns").glob("*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    ours = {t for templates in load_facts("builtin").templates.values() for t in templates}
    assert not {t for t in ours if norm(t) in pararel}


def test_neutral_texts() -> None:
    texts = load_neutral_texts()
    assert 15 <= len(texts) <= 40
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert text == text.strip() and len(text.split()) >= 5
        assert text[-1] in ".!?"


def test_amig_reference_prompts() -> None:
    prompts = load_amig_reference_prompts()
    assert 15 <= len(prompts) <= 40
    assert "The weather today is" in prompts
    assert len(set(prompts)) == len(prompts)
    for prompt in prompts:
        assert prompt and prompt == prompt.strip()
        assert not prompt.endswith((".", "!", "?"))  # a prompt to continue, not a sentence
        assert "[X]" not in prompt and "[Y]" not in prompt


def test_pararel_manifest_shape() -> None:
    manifest = json.loads((resources.files("knowloc") / "resources" / "pararel_manifest.json").read_text(encoding="utf-8"))
    assert manifest["commit"] == "cb5554678457beb5ac163d888f1ce8cf174b3f0b"
    files = manifest["files"]
    assert "patterns/P36.jsonl" in files and "facts/P36.jsonl" in files
    assert all(re.fullmatch(r"(patterns|facts)/P\d+\.jsonl", name) for name in files)
    assert all(re.fullmatch(r"[0-9a-f]{64}", sha) for sha in files.values())
    assert sum(name.startswith("patterns/") for name in files) == 39
    assert sum(name.startswith("facts/") for name in files) == 41
