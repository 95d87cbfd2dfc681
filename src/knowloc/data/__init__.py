"""knowloc.data: facts, prompt templates, queries and the fact sets that provide them.

Public API
----------
Types (``knowloc.data.types``):
    ``Fact(id, relation, subject, object)``, ``Query(fact, template, text)`` with
    ``Query.subject_span``; ``make_prompt(template, subject)``, ``is_causal_template(template)``,
    ``make_query(fact, template)``, ``queries_for(fact, templates)``.
Loaders (``knowloc.data.loaders``):
    ``load_facts(spec, relations=None, limit=None) -> Dataset`` with ``spec`` one of
    ``"builtin"``, ``"pararel:DIR"`` or a path to a JSONL file (format in the module docstring and
    ``docs/data.md``); ``Dataset`` iterates over ``(fact, queries)`` pairs.
Download (``knowloc.data.download``):
    ``download_pararel(dest_dir, base_url=DEFAULT_BASE_URL, commit=PINNED_COMMIT, ...)``.
Texts (``knowloc.data.texts``):
    ``load_neutral_texts()``, ``load_amig_reference_prompts()``, ``load_specificity_prompts()``.
"""

from knowloc.data.download import DEFAULT_BASE_URL, PINNED_COMMIT, download_pararel
from knowloc.data.loaders import BUILTIN_SPEC, PARAREL_PREFIX, Dataset, load_facts
from knowloc.data.texts import (load_amig_reference_prompts, load_answer_types, load_neutral_texts,
                                load_specificity_prompts, load_specificity_queries)
from knowloc.data.types import Fact, Query, is_causal_template, make_prompt, make_query, queries_for

__all__ = [
    "load_answer_types",
    "load_specificity_queries",
    "BUILTIN_SPEC",
    "DEFAULT_BASE_URL",
    "PARAREL_PREFIX",
    "PINNED_COMMIT",
    "Dataset",
    "Fact",
    "Query",
    "download_pararel",
    "is_causal_template",
    "load_amig_reference_prompts",
    "load_facts",
    "load_neutral_texts",
    "load_specificity_prompts",
    "make_prompt",
    "make_query",
    "queries_for",
]
