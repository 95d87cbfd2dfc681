"""load_facts: our JSONL format, ParaRel directories, filters and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowloc.data import Dataset, Fact, load_facts
from knowloc.errors import KnowlocError

CAPITAL_TEMPLATES = ["The capital of [X] is [Y].", "In [X], the capital is [Y] .", "The capital of [X] is [Y] ."]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(subject: str, obj: str, relation: str = "P36", templates: list[str] | None = None, **extra: object) -> dict:
    return {"relation": relation, "subject": subject, "object": obj, "templates": templates or CAPITAL_TEMPLATES, **extra}


def one_line_error(excinfo: pytest.ExceptionInfo[KnowlocError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "facts.jsonl",
        [
            row("France", "Paris", id="cap-fr"),
            row("Kenya", "Africa", relation="P30", templates=["[X] is a country in [Y]."]),
            "",  # blank lines are skipped
            row(" Japan ", "Tokyo"),  # surrounding whitespace stripped; default id
            row("Peru", "Lima", note="extra keys are ignored"),
        ],
    )


# ------------------------------------------------------------------------------------- JSONL


def test_jsonl_user_format(user_file: Path) -> None:
    data = load_facts(str(user_file))
    assert isinstance(data, Dataset)
    assert data.relations == ["P36", "P30"]  # order of first appearance
    assert len(data) == 4
    assert [f.subject for f in data.facts] == ["France", "Japan", "Peru", "Kenya"]  # grouped by relation
    fact, queries = data[0]
    assert fact == Fact(id="cap-fr", relation="P36", subject="France", object="Paris")
    # the two "The capital of [X] is [Y]" variants give one prompt
    assert [q.text for q in queries] == ["The capital of France is", "In France, the capital is"]
    assert data[1][0].id == "P36:4"  # default id: relation and line number
    assert data.templates["P36"] == CAPITAL_TEMPLATES[:2]
    assert data.templates["P30"] == ["[X] is a country in [Y]."]
    assert [q.text for q in data.by_relation("P30")[0][1]] == ["Kenya is a country in"]
    # iterating gives (fact, queries) pairs, like the list form
    pairs = list(data)
    assert pairs == data.items and all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    assert len(data.queries) == 2 * 3 + 1
    assert data.queries_of("cap-fr") == queries and data.queries_of(fact) == queries
    with pytest.raises(KnowlocError, match="fact 'nope' not in dataset"):
        data.queries_of("nope")


def test_relations_filter_and_limit(user_file: Path) -> None:
    data = load_facts(str(user_file), relations=["P30"])
    assert data.relations == ["P30"] and [f.subject for f in data.facts] == ["Kenya"]
    data = load_facts(str(user_file), limit=2)
    assert [f.subject for f in data.facts] == ["France", "Japan", "Kenya"]  # first 2 per relation, file order
    data = load_facts(str(user_file), relations=["P30", "P36"], limit=1)
    assert data.relations == ["P36", "P30"]
    assert [f.subject for f in data.facts] == ["France", "Kenya"]


def test_unknown_relation_lists_available(user_file: Path) -> None:
    with pytest.raises(KnowlocError) as info:
        load_facts(str(user_file), relations=["P36", "P999"])
    message = one_line_error(info)
    assert "'P999'" in message and "available: P36, P30" in message


@pytest.mark.parametrize("limit", [0, -3, 1.5, True])
def test_bad_limit(user_file: Path, limit: object) -> None:
    with pytest.raises(KnowlocError, match="limit must be a positive integer"):
        load_facts(str(user_file), limit=limit)  # type: ignore[arg-type]


def test_empty_relation_filter(user_file: Path) -> None:
    with pytest.raises(KnowlocError, match="empty relation filter"):
        load_facts(str(user_file), relations=[])


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ('{"relation": "P36", "subject": "Spain",', r"malformed JSON"),
        ("[1, 2]", r"expected a JSON object, got list"),
        ("1" * 5000, r"malformed JSON"),  # too long an integer (ValueError, not JSONDecodeError)
        ("[" * 100_000, r"malformed JSON"),  # too deep (RecursionError)
        (json.dumps({"relation": "P36", "object": "Madrid", "templates": CAPITAL_TEMPLATES}), r"missing key 'subject'"),
        (json.dumps({"relation": "P36"}), r"missing keys 'subject', 'object', 'templates'"),
        (json.dumps(row("", "Madrid")), r"empty subject"),
        (json.dumps(row("Spain", "   ")), r"empty object"),
        (json.dumps(row("Spain", "Madrid", relation="")), r"empty relation"),
        (json.dumps(row("Spain", 7)), r"'object' must be a string"),
        (json.dumps(row("Spain", "Madrid", templates=["The capital is [Y]."])), r"lacks \[X\]"),
        (json.dumps(row("Spain", "Madrid", templates=["The capital of [X]."])), r"lacks \[Y\]"),
        (json.dumps(row("Spain", "Madrid", templates=["[Y] is the capital of [X]."])), r"causal"),
        (json.dumps({**row("Spain", "Madrid"), "templates": []}), r"'templates' must be a non-empty list"),
        (json.dumps({**row("Spain", "Madrid"), "templates": "The capital of [X] is [Y]."}), r"'templates' must be a non-empty list"),
        (json.dumps(row("Spain", "Madrid", templates=[3])), r"template must be a string"),
        (json.dumps(row("Spain", "Madrid", id="cap-fr")), r"duplicate fact id 'cap-fr' \(first on line 1\)"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, bad_line: str, pattern: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [row("France", "Paris", id="cap-fr"), "", bad_line, row("Peru", "Lima")])
    with pytest.raises(KnowlocError, match=pattern) as info:
        load_facts(str(path))
    assert f"{path}:3: " in one_line_error(info)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(row("Sao Tome", "x")).replace("Sao", "S\u00e3o").encode("latin-1") + b"\n")
    with pytest.raises(KnowlocError, match="not UTF-8"):
        load_facts(str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(KnowlocError, match="no facts"):
        load_facts(str(path))


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(KnowlocError, match="not found") as info:
        load_facts(str(missing))
    assert str(missing) in one_line_error(info)


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(KnowlocError, match="empty fact-set source"):
        load_facts(spec)


# ------------------------------------------------------------------------------------- ParaRel


def make_pararel(root: Path, patterns: dict[str, list[str]], facts: dict[str, list[str]]) -> Path:
    (root / "patterns").mkdir(parents=True)
    (root / "facts").mkdir()
    for rel, lines in patterns.items():
        (root / "patterns" / f"{rel}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for rel, lines in facts.items():
        (root / "facts" / f"{rel}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def pattern(text: str) -> str:
    return json.dumps({"pattern": text, "lemma": "x"})


def trex(sub: str, obj: str, uuid: str | None = None) -> str:
    return json.dumps({"sub_label": sub, "obj_label": obj, **({"uuid": uuid} if uuid else {})})


def test_pararel_real_directory_p36(pararel_dir: Path) -> None:
    data = load_facts(f"pararel:{pararel_dir}", relations=["P36"])
    assert data.relations == ["P36"]
    templates = data.templates["P36"]
    assert "[Y] is the capital of [X]." not in templates
    assert "[Y], the capital city of [X]." not in templates
    assert templates[0] == "The capital of [X] is [Y] ."
    assert "The capital city of [X] is [Y]." in templates
    assert len({t.replace(" .", ".") for t in templates}) == len(templates)
    lines = (pararel_dir / "facts" / "P36.jsonl").read_text(encoding="utf-8").splitlines()
    # one line repeats an earlier fact (England -> London under two uuids): merged into the first
    assert len(data) == len(lines) - 1 and len(data.merged) == 1
    fact, queries = data[0]
    first = json.loads(lines[0])
    assert fact == Fact(id=f"P36:{first['uuid']}", relation="P36", subject=first["sub_label"], object=first["obj_label"])
    assert fact.subject == "Cook County" and fact.object == "Chicago"
    assert queries[0].text == "The capital of Cook County is"
    assert len(queries) == len(templates)
    texts = [q.text for q in queries]
    assert len(set(texts)) == len(texts)
    assert all(not t.endswith((" ", ".")) for t in texts)
    assert all(q.text[slice(*q.subject_span)] == "Cook County" for q in queries)


def test_pararel_real_directory_all_relations_and_limit(pararel_dir: Path) -> None:
    data = load_facts(f"pararel:{pararel_dir}", limit=3)
    both = {p.stem for p in (pararel_dir / "patterns").glob("*.jsonl")} & {p.stem for p in (pararel_dir / "facts").glob("*.jsonl")}
    assert set(data.relations) <= both and "P36" in data.relations and "P103" in data.relations
    assert "P31" not in data.relations  # facts without a patterns file
    assert len(data) == 3 * len(data.relations)
    assert [item[0].subject for item in data.by_relation("P36")] == ["Cook County", "Fort Bend County", "Cayuga County"]
    assert all(queries for _, queries in data)
    assert all(not q.text.endswith((" ", "\t")) for q in data.queries)
    # a plain directory path (no "pararel:" prefix) works too
    same = load_facts(str(pararel_dir), relations=["P36"], limit=3)
    assert same.items == data.by_relation("P36")


def test_pararel_real_unknown_relation(pararel_dir: Path) -> None:
    with pytest.raises(KnowlocError) as info:
        load_facts(f"pararel:{pararel_dir}", relations=["P9999"])
    message = one_line_error(info)
    assert "'P9999'" in message and "P36" in message and "available:" in message


def test_pararel_synthetic(tmp_path: Path) -> None:
    root = make_pararel(
        tmp_path / "pr",
        patterns={
            "P1": [pattern("[X] lives in [Y] ."), pattern("[X] lives in [Y]."), pattern("[Y] is home to [X]."), pattern("[X] has its home in [Y]")],
            "P2": [pattern("[Y] is where [X] is.")],  # no causal template
            "P3": [pattern("[X] x [Y].")],  # no facts file
        },
        facts={"P1": [trex("Ann", "Oslo", "u1"), "", trex("Bob", "Rome"), trex("Cy", "Lima", "u3")], "P2": [trex("A", "B")], "P4": [trex("A", "B")]},
    )
    data = load_facts(f"pararel:{root}")
    assert data.relations == ["P1"]
    assert data.templates["P1"] == ["[X] lives in [Y] .", "[X] has its home in [Y]"]
    assert [f.id for f in data.facts] == ["P1:u1", "P1:3", "P1:u3"]  # no uuid: line number
    assert [q.text for q in data[1][1]] == ["Bob lives in", "Bob has its home in"]
    with pytest.raises(KnowlocError, match=r"'P2'.*no template with \[Y\] at the end.*available: P1"):
        load_facts(f"pararel:{root}", relations=["P2"])
    with pytest.raises(KnowlocError, match=r"unknown relation 'P3'"):
        load_facts(f"pararel:{root}", relations=["P3"])


def test_pararel_relation_order_is_numeric(tmp_path: Path) -> None:
    rels = ["P101", "P17", "P36"]
    root = make_pararel(tmp_path / "pr", {r: [pattern("[X] is [Y].")] for r in rels}, {r: [trex("a", "b")] for r in rels})
    assert load_facts(f"pararel:{root}").relations == ["P17", "P36", "P101"]


@pytest.mark.parametrize(
    ("patterns", "facts", "bad_file", "line", "message"),
    [
        (["not json"], [trex("a", "b")], "patterns/P1.jsonl", 1, "malformed JSON"),
        ([pattern("[X] is [Y]."), json.dumps({"lemma": "x"})], [trex("a", "b")], "patterns/P1.jsonl", 2, "missing key 'pattern'"),
        ([pattern("[X] is [Y]."), pattern("[X] is here.")], [trex("a", "b")], "patterns/P1.jsonl", 2, r"lacks \[Y\]"),
        ([pattern("[X] is [Y]."), pattern("It is [Y].")], [trex("a", "b")], "patterns/P1.jsonl", 2, r"lacks \[X\]"),
        ([pattern("[X] is [Y].")], [trex("a", "b"), "{oops"], "facts/P1.jsonl", 2, "malformed JSON"),
        ([pattern("[X] is [Y].")], [trex("a", "b"), json.dumps({"sub_label": "c"})], "facts/P1.jsonl", 2, "missing key 'obj_label'"),
        ([pattern("[X] is [Y].")], [trex("", "b")], "facts/P1.jsonl", 1, "empty sub_label"),
        ([pattern("[X] is [Y].")], [trex("a", "b"), trex("c", " ")], "facts/P1.jsonl", 2, "empty obj_label"),
    ],
)
def test_pararel_bad_input_names_file_and_line(
    tmp_path: Path, patterns: list[str], facts: list[str], bad_file: str, line: int, message: str
) -> None:
    root = make_pararel(tmp_path / "pr", {"P1": patterns}, {"P1": facts})
    with pytest.raises(KnowlocError, match=message) as info:
        load_facts(f"pararel:{root}")
    assert f"{root / bad_file}:{line}: " in one_line_error(info)


def test_pararel_directory_without_patterns_and_facts(tmp_path: Path) -> None:
    (tmp_path / "facts").mkdir()
    with pytest.raises(KnowlocError, match=r"not a ParaRel directory \(missing patterns/\)"):
        load_facts(f"pararel:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KnowlocError, match=r"missing patterns/ and facts/"):
        load_facts(str(empty))


def test_pararel_directory_without_common_relation(tmp_path: Path) -> None:
    root = make_pararel(tmp_path / "pr", {"P1": [pattern("[X] is [Y].")]}, {"P2": [trex("a", "b")]})
    with pytest.raises(KnowlocError, match="no relation has both"):
        load_facts(f"pararel:{root}")


def test_pararel_nonexistent_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KnowlocError, match="not found"):
        load_facts(f"pararel:{tmp_path / 'missing'}")
    a_file = write_jsonl(tmp_path / "f.jsonl", [row("France", "Paris")])
    with pytest.raises(KnowlocError, match="is not a directory"):
        load_facts(f"pararel:{a_file}")
    with pytest.raises(KnowlocError, match="needs a directory"):
        load_facts("pararel:")


# ------------------------------------------------------------------------- BOM and duplicate facts (issue 24)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 file saved with a BOM (Windows editors) loads like one without: the BOM is not content."""
    plain = write_jsonl(tmp_path / "plain.jsonl", [row("France", "Paris", id="cap-fr"), row("Peru", "Lima")])
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_facts(str(bom)).items == load_facts(str(plain)).items
    root = make_pararel(tmp_path / "pr", {"P1": [pattern("[X] lives in [Y].")]}, {"P1": [trex("Ann", "Oslo", "u1")]})
    for name in ("patterns", "facts"):
        path = root / name / "P1.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [f.id for f in load_facts(f"pararel:{root}").facts] == ["P1:u1"]


def test_duplicate_facts_are_merged_into_the_first_with_one_warning(tmp_path: Path, caplog) -> None:
    """The same (relation, subject, object) under two ids is one fact: studied once, under its first id, with
    the templates of both; one warning line names the merge; the limit counts distinct facts."""
    path = write_jsonl(tmp_path / "dup.jsonl", [
        row("France", "Paris", id="a", templates=CAPITAL_TEMPLATES[:1]),
        row("Peru", "Lima", id="b"),
        row("France", "Paris", id="a2", templates=["In [X], the capital is [Y]."]),
        row("France", "Paris", relation="P1376", id="other-relation"),  # another relation: another fact
        row("Chile", "Santiago", id="c"),
    ])
    with caplog.at_level("WARNING", logger="knowloc.data"):
        data = load_facts(str(path))
    assert [f.id for f in data.facts] == ["a", "b", "c", "other-relation"]
    assert data.merged == [("a2", "a")]
    assert [q.text for q in data.queries_of("a")] == ["The capital of France is", "In France, the capital is"]
    lines = [r.getMessage() for r in caplog.records if r.name == "knowloc.data"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"warning: {path}: 1 duplicate fact") and "'a2' into 'a'" in lines[0]
    assert [f.id for f in load_facts(str(path), limit=2).facts] == ["a", "b", "other-relation"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="knowloc.data"):
        assert load_facts(str(path), relations=["P1376"]).merged == []  # nothing merged among the kept facts
    assert not caplog.records


def test_pararel_duplicates_are_merged(tmp_path: Path, caplog) -> None:
    root = make_pararel(tmp_path / "pr", {"P1": [pattern("[X] lives in [Y]."), pattern("[X] is from [Y].")]},
                        {"P1": [trex("Ann", "Oslo", "u1"), trex("Bob", "Rome", "u2"), trex("Ann", "Oslo", "u3"),
                                trex("Cy", "Lima", "u4")]})
    with caplog.at_level("WARNING", logger="knowloc.data"):
        data = load_facts(f"pararel:{root}", limit=3)
    assert [f.id for f in data.facts] == ["P1:u1", "P1:u2", "P1:u4"] and data.merged == [("P1:u3", "P1:u1")]
    assert len([r for r in caplog.records if r.name == "knowloc.data"]) == 1


def test_the_builtin_set_has_no_duplicate_fact() -> None:
    assert load_facts("builtin").merged == []


def test_across_relations_takes_the_relations_in_turn():
    from types import SimpleNamespace

    from knowloc.data.loaders import Dataset

    items = [(SimpleNamespace(relation=r, n=i), []) for i, r in enumerate("AABAC")]
    dataset = Dataset(items=items, relations=["A", "B", "C"])
    assert [(f.relation, f.n) for f, _ in dataset.across_relations()] == [("A", 0), ("B", 2), ("C", 4), ("A", 1),
                                                                          ("A", 3)]


# --- CounterFact -------------------------------------------------------------------------------------------

COUNTERFACT = [
    {"case_id": 0, "pararel_idx": 2796,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                           "target_new": {"str": "English", "id": "Q1860"},
                           "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
     "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                            "An album was recorded for Capitol Nashville. Danielle Darrieux spoke the language"],
     "neighborhood_prompts": ["The mother tongue of Léon Blum is"], "generation_prompts": ["Danielle Darrieux's"]},
    {"case_id": 7, "requested_rewrite": {"prompt": "{} is located in the continent of", "relation_id": "P30",
                                         "target_new": {"str": "Europe"}, "target_true": {"str": "Asia"},
                                         "subject": "Gobi Desert"},
     "paraphrase_prompts": []},
]


def _counterfact(tmp_path, records, name="cf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_a_counterfact_file_is_read_as_facts_with_the_rewrite_and_paraphrase_prompts(tmp_path):
    dataset = load_facts(f"counterfact:{_counterfact(tmp_path, COUNTERFACT)}")
    assert [f.id for f in dataset.facts] == ["cf:0", "cf:7"] and dataset.relations == ["P103", "P30"]
    fact, queries = next(item for item in dataset if item[0].id == "cf:0")
    assert (fact.relation, fact.subject, fact.object) == ("P103", "Danielle Darrieux", "French")
    assert [q.text for q in queries] == [
        "The mother tongue of Danielle Darrieux is",
        "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
        "An album was recorded for Capitol Nashville. Danielle Darrieux spoke the language"]
    gobi = dataset.queries_of("cf:7")
    assert [q.text for q in gobi] == ["Gobi Desert is located in the continent of"] and len(dataset) == 2
    assert load_facts(f"counterfact:{_counterfact(tmp_path, COUNTERFACT)}", relations=["P30"]).facts[0].id == "cf:7"


@pytest.mark.parametrize("records,pattern", [
    ({"case_id": 0}, "non-empty JSON list"),
    ([], "non-empty JSON list"),
    ([{"requested_rewrite": {}}], r"record 1: missing key 'case_id'"),
    ([{"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", "relation_id": "P36",
                                           "subject": "France"}}], r"record 1: missing key 'target_true'"),
    ([{"case_id": 1, "requested_rewrite": {"prompt": "The capital of France is", "relation_id": "P36",
                                           "subject": "France", "target_true": {"str": "Paris"}}}], r"'\{\}' once"),
    ([COUNTERFACT[1], {"case_id": 2, "requested_rewrite": {"prompt": "{} is in", "relation_id": "P30",
                                                           "subject": "Sahara", "target_true": {"str": "Africa"}},
                       "paraphrase_prompts": ["It lies in"]}], r"record 2: a paraphrase prompt must .* 'Sahara'"),
    ([{"case_id": 3, "requested_rewrite": {"prompt": "{} is in", "relation_id": "P30", "subject": "Sahara",
                                           "target_true": {"str": " "}}}], r"record 1: empty str"),
])
def test_bad_counterfact_records_are_one_line_errors(tmp_path, records, pattern):
    with pytest.raises(KnowlocError, match=pattern):
        load_facts(f"counterfact:{_counterfact(tmp_path, records)}")
    with pytest.raises(KnowlocError, match="counterfact file .* not found"):
        load_facts(f"counterfact:{tmp_path / 'missing.json'}")


def test_a_bad_counterfact_file_exits_2_in_one_line(tmp_path, capsys):
    from knowloc.cli import main

    path = _counterfact(tmp_path, [{"case_id": 1}])
    assert main(["probe", "--model", "tiny-gpt2", "--data", f"counterfact:{path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 1: missing key 'requested_rewrite'" in err[0]
