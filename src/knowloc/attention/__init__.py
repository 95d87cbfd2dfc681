"""Knowledge synapses: the attention side of Query Localization (Chen et al., ICLR 2025). See docs/attention.md."""

from knowloc.attention.manipulate import n_heads, scale_attention
from knowloc.attention.synapses import (
    Entry,
    NotEnoughControls,
    attention_rows,
    knowledge_synapses,
    related_and_irrelevant,
    subject_related,
    subject_token_positions,
)

__all__ = ["Entry", "NotEnoughControls", "attention_rows", "knowledge_synapses", "related_and_irrelevant",
           "subject_related", "subject_token_positions", "scale_attention", "n_heads"]
