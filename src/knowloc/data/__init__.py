"""Facts, neighbor queries and their loaders."""

from knowloc.data.download import download_pararel
from knowloc.data.loaders import Dataset, load_facts
from knowloc.data.texts import load_amig_reference_prompts, load_neutral_texts
from knowloc.data.types import Fact, Query, is_causal_template, make_prompt, make_query, queries_for

__all__ = ["Dataset", "Fact", "Query", "download_pararel", "is_causal_template", "load_amig_reference_prompts",
           "load_facts", "load_neutral_texts", "make_prompt", "make_query", "queries_for"]
