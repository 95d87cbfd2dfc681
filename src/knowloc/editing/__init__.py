"""Knowledge-neuron editing (erase / update of value vectors) and its evaluation (Rel, Gen, Loc, Avg, ΔPPL).

Follows Dai et al. 2022 (Knowledge Neurons) for the edits and Chen et al. ICLR 2025 for the evaluation;
see ``docs/editing.md``.
"""

from knowloc.editing.evaluate import (
    Baseline,
    EditTrial,
    TrialResult,
    compute_baseline,
    log_perplexity_of_texts,
    perplexity_of_texts,
    text_nll,
)
from knowloc.editing.session import EditSession, choose_new_object, locality_sample
from knowloc.editing.operations import (
    OPERATIONS,
    UPDATE_RULES,
    erase,
    modified,
    normalize_neurons,
    rule_deltas,
    unembedding_row,
    update,
    update_delta,
)

__all__ = [
    "EditSession",
    "choose_new_object",
    "locality_sample",
    "OPERATIONS",
    "UPDATE_RULES",
    "log_perplexity_of_texts",
    "rule_deltas",
    "Baseline",
    "EditTrial",
    "TrialResult",
    "compute_baseline",
    "erase",
    "modified",
    "normalize_neurons",
    "perplexity_of_texts",
    "text_nll",
    "unembedding_row",
    "update",
    "update_delta",
]
