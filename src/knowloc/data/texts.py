"""Small text resources shipped with knowloc (``knowloc/resources/*.txt``), written for the project.

- :func:`load_neutral_texts`: about 20 short neutral English sentences (no facts a knowledge edit
  could plausibly touch), used to measure perplexity before and after an intervention.
- :func:`load_amig_reference_prompts`: about 20 neutral prompts without factual content, one per
  line and never ending with whitespace (e.g. ``"The weather today is"``), used as reference
  inputs for AMIG-style attributions.
- :func:`load_specificity_prompts`: 48 fact-free prompts, disjoint from both sets above, whose own next tokens
  are attributed to find neurons that are "knowledge neurons" for anything (the specificity profile).
- :func:`load_specificity_queries`: the specificity profile's reference queries, written for knowloc (29
  relations, 10-16 cloze queries each, none of the builtin set's relations, subjects or wordings, and no
  ParaRel template filled with a ParaRel subject), each with its relation id, answer type and expected answer.
- :func:`load_answer_types`: a vocabulary per answer type (languages, countries, cities, ...), which tells when a
  studied relation's answers have the type of some reference relation (docs/editing.md).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from knowloc.data.loaders import json_lines
from knowloc.errors import KnowlocError

NEUTRAL_TEXT_RESOURCE = "neutral_text.txt"
AMIG_REFERENCE_RESOURCE = "amig_reference_prompts.txt"
SPECIFICITY_RESOURCE = "specificity_prompts.txt"
SPECIFICITY_QUERIES_RESOURCE = "specificity_queries.jsonl"
ANSWER_TYPES_RESOURCE = "answer_types.json"
REFERENCE_QUERY_FIELDS = ("relation", "name", "answer_type", "prompt", "answer")


def resource_text(name: str) -> str:
    """The text of ``knowloc/resources/<name>`` (KnowlocError if it is not shipped)."""
    try:
        return (resources.files("knowloc") / "resources" / name).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise KnowlocError(f"resource {name!r} is missing from the knowloc installation") from None


def _lines(name: str) -> list[str]:
    """Non-blank lines, right-stripped, lines starting with '#' skipped."""
    out = [line.rstrip() for line in resource_text(name).splitlines()]
    return [line for line in out if line.strip() and not line.lstrip().startswith("#")]


def load_neutral_texts() -> list[str]:
    """Neutral English sentences, one string per sentence."""
    return _lines(NEUTRAL_TEXT_RESOURCE)


def load_amig_reference_prompts() -> list[str]:
    """Neutral, fact-free prompts; none ends with whitespace."""
    return _lines(AMIG_REFERENCE_RESOURCE)


def load_specificity_prompts() -> list[str]:
    """Fact-free reference prompts of the neuron specificity profile; none ends with whitespace."""
    return _lines(SPECIFICITY_RESOURCE)


@cache
def _specificity_queries() -> tuple[dict, ...]:
    rows = []
    for k, row in json_lines(resource_text(SPECIFICITY_QUERIES_RESOURCE), SPECIFICITY_QUERIES_RESOURCE):
        if any(not isinstance(row.get(f), str) or not row[f].strip() for f in REFERENCE_QUERY_FIELDS):
            raise KnowlocError(f"{SPECIFICITY_QUERIES_RESOURCE}:{k}: needs the string fields "
                               f"{', '.join(REFERENCE_QUERY_FIELDS)}")
        rows.append({f: row[f] if f == "prompt" else row[f].strip() for f in REFERENCE_QUERY_FIELDS})
    return tuple(rows)


def load_specificity_queries() -> list[dict]:
    """The reference queries of the specificity profile, in file order (grouped by relation).

    Returns:
        ``[{"relation", "name", "answer_type", "prompt", "answer"}, ...]``: ``relation`` a Wikidata id (``P38``)
        or a kebab-case id (``chemical-symbol``), ``prompt`` a cloze prefix that ends right before the answer
        (no trailing whitespace). The study attributes the model's *own* next token, so ``answer`` documents the
        intended one.

    Example:
        >>> load_specificity_queries()[0]["relation"]
        'P38'
    """
    return [dict(row) for row in _specificity_queries()]


@cache
def _answer_types() -> dict[str, frozenset[str]]:
    try:
        raw = json.loads(resource_text(ANSWER_TYPES_RESOURCE))
        types = raw["types"]
        vocab = {str(t): frozenset(v.strip().casefold() for v in words) for t, words in types.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise KnowlocError(f"{ANSWER_TYPES_RESOURCE} is not {{'types': {{type: [words]}}}}") from None
    for row in _specificity_queries():  # a type's vocabulary holds its reference queries' answers
        vocab[row["answer_type"]] = vocab.get(row["answer_type"], frozenset()) | {row["answer"].casefold()}
    return vocab


def load_answer_types() -> dict[str, frozenset[str]]:
    """A vocabulary per answer type, case-folded: ``{"language": {"english", ...}, "country": {...}, ...}``
    (each type's reference query answers included).

    Example:
        >>> "french" in load_answer_types()["language"]
        True
    """
    return dict(_answer_types())
