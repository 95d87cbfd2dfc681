"""Neuron specificity: is a "knowledge neuron" specific to a fact, or a KN of everything?

Attribution methods single out some neurons for almost any prompt: on SmolLM2-135M, neurons with massive
activations (Sun et al. 2024, "Massive activations in large language models") such as (29, 1197) are in the
IG knowledge-neuron (KN) set of most queries of unrelated relations. Erasing "a fact's KNs" then erases them
too and measures damage rather than knowledge. The profile below measures that on reference prompts that are
independent of the studied facts (their own next tokens), and the filter removes such neurons from every
neuron set before it is used.

For reference prompts ``r = 1..R`` with KN sets ``K_r`` (same method and selection rule as the study) and
absolute activations ``|a_r(u)|`` at the last position:

    ref_frequency(u)    = (1/R) * #{r : u in K_r}
    activation_ratio(u) = median_r ( |a_r(u)| / median_{u' in layer(u)} |a_r(u')| )
    non-specific at F   = {u : ref_frequency(u) > F}           (F = 1 removes nothing: the paper's behaviour)

Filtering removes the non-specific neurons from a neuron set after it is selected by its usual rule
(e.g. N_i = {u : A(u) > t * max A}, Dai et al. 2022), so the set keeps the paper's definition minus the
neurons that are KNs of anything. (:func:`mask_scores` zeroes neurons in an attribution map instead, which
re-selects relative to the strongest remaining neuron; on SmolLM2-135M that roughly quadrupled N_i and cost
locality, docs/editing.md.)

Reference queries of the fact's own relation never count against it. A user's relation labels are free
strings, so "own" is decided twice: by id (case-insensitive), and by answer type. For a studied relation R with
distinct objects O_R and a vocabulary V_T per answer type T (``knowloc/resources/answer_types.json``):

    types(R)    = {T : |{o in O_R : casefold(o) in V_T}| >= TYPE_SHARE * |O_R|}
    excluded(R) = {reference relation S : id(S) == id(R) or type(S) in types(R)}

so a study of "languages spoken" (P1412) counts no reference query whose answer is a language, whatever its id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from knowloc.analysis.neurons import Neuron
from knowloc.errors import KnowlocError

__all__ = ["kn_frequency", "activation_ratio", "nonspecific_neurons", "mask_scores", "answer_types",
           "excluded_reference_relations", "normalized_prompt", "TYPE_SHARE"]

# A studied relation has an answer type when at least this share of its distinct objects is in the type's vocabulary
TYPE_SHARE = 0.5


def kn_frequency(kn_sets: Sequence[Iterable[Neuron]], shape: tuple[int, int]) -> np.ndarray:
    """Share of the sets that contain each neuron: ``[n_layers, n_neurons]`` float64 in [0, 1].

    Args:
        kn_sets: one KN set (or list) per prompt; a neuron counts once per set.
        shape: ``(n_layers, n_neurons)`` of the model.

    Returns:
        ``freq[l, i] = #{sets containing (l, i)} / len(kn_sets)`` (all zeros when there is no set).

    Example:
        >>> kn_frequency([{(0, 1)}, {(0, 1), (1, 0)}], (2, 2)).tolist()
        [[0.0, 1.0], [0.5, 0.0]]
    """
    counts = np.zeros(shape, dtype=np.float64)
    for kn in kn_sets:
        for layer, index in set(map(tuple, kn)):
            if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
                raise KnowlocError(f"neuron {(layer, index)} is outside a model of shape {shape}")
            counts[layer, index] += 1
    return counts / len(kn_sets) if len(kn_sets) else counts


def activation_ratio(abs_activations: torch.Tensor | np.ndarray) -> np.ndarray:
    """``median_r(|a_r(u)| / median_{u' in layer} |a_r(u')|)`` per neuron, ``[n_layers, n_neurons]``.

    Args:
        abs_activations: ``[R, n_layers, n_neurons]`` activations at the reference prompts' last positions
            (their absolute value is taken here).

    Returns:
        float64 ratios; a layer whose median |a| is 0 on a prompt contributes ``inf`` for its non-zero neurons
        and 0 for the others on that prompt.
    """
    arr = np.abs(np.asarray(abs_activations.float() if isinstance(abs_activations, torch.Tensor)
                            else abs_activations, dtype=np.float64))
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise KnowlocError(f"activations must be [R >= 1, n_layers, n_neurons], got shape {arr.shape}")
    medians = np.median(arr, axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(medians > 0, arr / np.where(medians > 0, medians, 1.0), np.where(arr > 0, np.inf, 0.0))
    return np.median(ratios, axis=0)


def nonspecific_neurons(ref_frequency: np.ndarray, max_frequency: float) -> set[Neuron]:
    """``{(l, i) : ref_frequency[l, i] > max_frequency}``; ``max_frequency >= 1`` gives the empty set."""
    if not 0 <= max_frequency <= 1:
        raise KnowlocError(f"the specificity threshold must be in [0, 1], got {max_frequency}")
    layers, indices = np.nonzero(np.asarray(ref_frequency) > max_frequency)
    return {Neuron(int(l), int(i)) for l, i in zip(layers, indices)}


def mask_scores(scores: torch.Tensor, excluded: Iterable[Neuron]) -> torch.Tensor:
    """A copy of an attribution map ``[n_layers, n_neurons]`` (or a stack ``[n, n_layers, n_neurons]``) with
    the excluded neurons' scores set to 0, so no selection rule can pick them."""
    out = scores.clone()
    pairs = list(excluded)
    if pairs:
        layers = torch.tensor([l for l, _ in pairs], dtype=torch.long, device=out.device)
        indices = torch.tensor([i for _, i in pairs], dtype=torch.long, device=out.device)
        out[..., layers, indices] = 0
    return out


def normalized_prompt(text: str) -> str:
    """A prompt compared across sets: case-folded, whitespace collapsed (``"The  Cat" -> "the cat"``)."""
    return " ".join(text.split()).casefold()


def answer_types(objects: Iterable[str], vocabularies: dict[str, Iterable[str]],
                 share: float = TYPE_SHARE) -> set[str]:
    """The answer types of a relation from its objects (see the module docstring).

    Args:
        objects: the relation's objects (repeats count once, compared case-folded).
        vocabularies: ``{type: words}`` (words case-folded, as :func:`knowloc.data.load_answer_types` gives).
        share: the least share of distinct objects a type's vocabulary must hold.

    Returns:
        ``{T : share of the distinct objects in vocabularies[T] >= share}`` (empty without objects).

    Example:
        >>> sorted(answer_types(["French", "English", "Paris"], {"language": {"french", "english"}, "city": {"paris"}}))
        ['language']
    """
    if not 0 < share <= 1:
        raise KnowlocError(f"share must be in (0, 1], got {share}")
    distinct = {o.strip().casefold() for o in objects if o.strip()}
    if not distinct:
        return set()
    return {t for t, words in vocabularies.items()
            if len(distinct & set(words)) >= share * len(distinct)}


def excluded_reference_relations(relation: str, objects: Iterable[str], reference_types: dict[str, str],
                                 vocabularies: dict[str, Iterable[str]], share: float = TYPE_SHARE) -> set[str]:
    """The reference relations whose queries do not count for facts of `relation` (see the module docstring).

    Args:
        relation: the studied relation's label (any string).
        objects: its facts' objects.
        reference_types: ``{reference relation: its answer type}``.
        vocabularies: ``{type: words}``, case-folded.

    Returns:
        the reference relations with the same id (case-insensitive) or an answer type of `relation`.

    Example:
        >>> sorted(excluded_reference_relations("languages", ["French", "German"],
        ...        {"P37": "language", "P38": "currency", "languages": "word"}, {"language": {"french", "german"}}))
        ['P37', 'languages']
    """
    types = answer_types(objects, vocabularies, share)
    own = relation.strip().casefold()
    return {r for r, t in reference_types.items() if r.strip().casefold() == own or t in types}
