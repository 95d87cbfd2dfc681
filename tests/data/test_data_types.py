"""Templates, prompts, facts and queries (knowloc.data.types)."""

from __future__ import annotations

import dataclasses

import pytest

from knowloc.data import Fact, Query, is_causal_template, make_prompt, make_query, queries_for
from knowloc.errors import KnowlocError


def fact(subject: str = "France", obj: str = "Paris") -> Fact:
    return Fact(id="t:1", relation="P36", subject=subject, object=obj)


@pytest.mark.parametrize(
    ("template", "subject", "prompt"),
    [
        ("[X] is located in [Y].", "France", "France is located in"),  # subject first
        ("The capital of [X] is [Y].", "France", "The capital of France is"),  # middle
        ("Everyone knows the capital of [X][Y].", "Chad", "Everyone knows the capital of Chad"),  # last
        ("The capital of [X] is [Y] .", "France", "The capital of France is"),  # " ." after [Y]
        ("The capital of [X] is [Y]", "France", "The capital of France is"),  # nothing after [Y]
        ("The capital of [X] is [Y].  \n", "France", "The capital of France is"),  # trailing whitespace
        ("The capital of [X] is   [Y].", "Cook County", "The capital of Cook County is"),
        ("[X], which has the capital [Y].", "Peru", "Peru, which has the capital"),
    ],
)
def test_make_prompt_fills_and_cuts(template: str, subject: str, prompt: str) -> None:
    assert make_prompt(template, subject) == prompt
    assert is_causal_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "[Y] is the capital of [X].",  # [Y] first
        "[X] is a [Y] city.",  # words after [Y]
        "[X] speaks [Y] fluently.",
        "Is [X] in [Y]?",  # other punctuation
        "[X] and [Y], [X].",
        "[X] is [Y]. [Y].",  # two [Y]
    ],
)
def test_non_causal_template_rejected(template: str) -> None:
    assert not is_causal_template(template)
    with pytest.raises(KnowlocError, match="causal") as info:
        make_prompt(template, "France")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("template", "missing"), [("The capital is [Y].", r"\[X\]"), ("The capital of [X].", r"\[Y\]")])
def test_template_without_marker_rejected(template: str, missing: str) -> None:
    assert not is_causal_template(template)
    with pytest.raises(KnowlocError, match=f"lacks {missing}"):
        make_prompt(template, "France")


def test_template_without_both_markers_names_both() -> None:
    with pytest.raises(KnowlocError, match=r"lacks \[X\] and \[Y\]"):
        make_prompt("no markers here.", "France")


def test_make_prompt_empty_subject() -> None:
    with pytest.raises(KnowlocError, match="empty subject"):
        make_prompt("The capital of [X] is [Y].", "  ")


def test_subject_inside_y_is_not_substituted() -> None:
    # [X] is filled only in the part before [Y]; a subject containing "[Y]" cannot confuse the cut
    assert make_prompt("About [X]: [Y].", "a [Y] b") == "About a [Y] b:"


def test_repeated_subject_marker_filled_everywhere() -> None:
    q = make_query(fact("Chad"), "[X] is [X], and the capital of [X] is [Y].")
    assert q.text == "Chad is Chad, and the capital of Chad is"
    assert q.subject_span == (0, 4)


@pytest.mark.parametrize(
    ("template", "span"),
    [
        ("[X] is located in [Y].", (0, 11)),
        ("The capital of [X] is [Y].", (15, 26)),
        ("Everyone knows the capital of [X][Y].", (30, 41)),
    ],
)
def test_subject_span(template: str, span: tuple[int, int]) -> None:
    q = make_query(fact("Cook County", "Chicago"), template)
    assert q.subject_span == span
    start, end = q.subject_span
    assert q.text[start:end] == "Cook County"


def test_subject_span_uses_template_position_not_first_match() -> None:
    # the subject's words also occur earlier in the template's own text
    q = make_query(fact("Paris", "France"), "Paris is lovely; the city of [X] is in [Y].")
    assert q.text == "Paris is lovely; the city of Paris is in"
    assert q.subject_span == (29, 34)


def test_subject_span_for_hand_built_query() -> None:
    q = Query(fact=fact(), template="custom", text="Tell me: France has the capital")
    assert q.subject_span == (9, 15)


def test_query_validation() -> None:
    with pytest.raises(KnowlocError, match="does not contain the subject"):
        Query(fact=fact(), template="[X] is in [Y].", text="Germany is in")
    with pytest.raises(KnowlocError, match="ends with whitespace"):
        Query(fact=fact(), template="[X] is in [Y].", text="France is in ")
    with pytest.raises(KnowlocError, match="empty query text"):
        Query(fact=fact(), template="[X] is in [Y].", text="")


@pytest.mark.parametrize(("subject", "obj", "field"), [("", "Paris", "subject"), ("France", "", "object"), ("  ", "Paris", "subject")])
def test_fact_rejects_empty_fields(subject: str, obj: str, field: str) -> None:
    with pytest.raises(KnowlocError, match=f"empty {field}"):
        Fact(id="x", relation="P36", subject=subject, object=obj)


def test_fact_rejects_non_string() -> None:
    with pytest.raises(KnowlocError, match="must be a string"):
        Fact(id="x", relation="P36", subject=3, object="Paris")  # type: ignore[arg-type]


def test_fact_and_query_are_frozen() -> None:
    f = fact()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.subject = "Spain"  # type: ignore[misc]
    q = make_query(f, "[X] is in [Y].")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.text = "x"  # type: ignore[misc]
    assert hash(f) == hash(fact())  # usable as dict keys


def test_queries_for_one_per_template_deduplicated() -> None:
    templates = [
        "The capital of [X] is [Y].",
        "The capital of [X] is [Y] .",  # same prompt as the first
        "In [X], the capital is [Y].",
        "[X]'s capital: [Y]",
    ]
    queries = queries_for(fact(), templates)
    assert [q.text for q in queries] == ["The capital of France is", "In France, the capital is", "France's capital:"]
    assert [q.template for q in queries] == [templates[0], templates[2], templates[3]]
    assert all(q.fact == fact() for q in queries)


def test_queries_for_rejects_non_causal() -> None:
    with pytest.raises(KnowlocError, match="causal"):
        queries_for(fact(), ["The capital of [X] is [Y].", "[Y] is the capital of [X]."])
