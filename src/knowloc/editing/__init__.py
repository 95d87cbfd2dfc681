"""Knowledge-neuron editing (erase / update of value vectors) and its evaluation (Rel, Gen, Loc, Avg, ΔPPL).

Follows Dai et al. 2022 (Knowledge Neurons) for the edits and Chen et al. ICLR 2025 for the evaluation;
see ``docs/editing.md``.
"""

from knowloc.editing.editors import AppliedEdit, Editor, EditRequest, KnErase, KnUpdate
from knowloc.editing.evaluate import (
    Baseline,
    TrialResult,
    compute_baseline,
    generation_scores,
    log_perplexity_of_texts,
    perplexity_of_texts,
    text_nll,
)
from knowloc.editing.session import EditSession, choose_new_object, locality_sample
from knowloc.editing.trials import (Calibration, Trial, calibrate, kn_trial, measure_edit, measure_edits,
                                     measure_sequence)
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
    "AppliedEdit",
    "EditRequest",
    "Editor",
    "KnErase",
    "KnUpdate",
    "Trial",
    "Calibration",
    "calibrate",
    "kn_trial",
    "measure_edit",
    "measure_edits",
    "measure_sequence",
    "EditSession",
    "choose_new_object",
    "locality_sample",
    "OPERATIONS",
    "UPDATE_RULES",
    "log_perplexity_of_texts",
    "rule_deltas",
    "Baseline",
    "TrialResult",
    "compute_baseline",
    "generation_scores",
    "erase",
    "modified",
    "normalize_neurons",
    "perplexity_of_texts",
    "text_nll",
    "unembedding_row",
    "update",
    "update_delta",
]
