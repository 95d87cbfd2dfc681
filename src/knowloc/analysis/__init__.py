"""Pure analysis functions: neuron selection, consistency scores, statistics, editing metrics, CAS.

Implements the measurements of Chen et al. (ICLR 2025), "Knowledge Localization: Mission Not
Accomplished? Enter Query Localization!". Everything here works on numpy arrays, torch tensors and
Python sets; no model is loaded. See ``docs/analysis.md`` for the formulas.
"""

from knowloc.analysis.cas import cas_components, cas_scores, cas_select
from knowloc.analysis.consistency import (
    GROUPS,
    K_C,
    K_I,
    consistency_scores,
    cs_pairwise,
    cs_share,
    cs_strict,
    jaccard,
    otsu_threshold,
    split_groups,
)
from knowloc.analysis.editing_metrics import (
    avg_score,
    delta_log_ppl,
    delta_ppl,
    erase_success,
    locality_kept,
    log_perplexity,
    perplexity,
    relative_change,
    update_success,
)
from knowloc.analysis.neurons import KnSet, Neuron, kn_list, kn_set, relative_mask, select_neurons
from knowloc.analysis.specificity import (TYPE_SHARE, activation_ratio, answer_types, excluded_reference_relations,
                                         kn_frequency, mask_scores, nonspecific_neurons, normalized_prompt)
from knowloc.analysis.stats import (MIN_N, Estimate, bootstrap_ci, paired_bootstrap_diff, permutation_test_diff,
                                   unpaired_bootstrap_diff, welch_t)

__all__ = [
    "MIN_N",
    "Estimate",
    "GROUPS",
    "K_C",
    "K_I",
    "KnSet",
    "Neuron",
    "kn_list",
    "kn_set",
    "unpaired_bootstrap_diff",
    "activation_ratio",
    "kn_frequency",
    "mask_scores",
    "nonspecific_neurons",
    "TYPE_SHARE",
    "answer_types",
    "excluded_reference_relations",
    "normalized_prompt",
    "avg_score",
    "bootstrap_ci",
    "cas_components",
    "cas_scores",
    "cas_select",
    "consistency_scores",
    "cs_pairwise",
    "cs_share",
    "cs_strict",
    "delta_log_ppl",
    "delta_ppl",
    "erase_success",
    "jaccard",
    "locality_kept",
    "log_perplexity",
    "otsu_threshold",
    "paired_bootstrap_diff",
    "perplexity",
    "permutation_test_diff",
    "relative_change",
    "relative_mask",
    "select_neurons",
    "split_groups",
    "update_success",
    "welch_t",
]
