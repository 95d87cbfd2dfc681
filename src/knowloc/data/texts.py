"""Small text resources shipped with knowloc (``knowloc/resources/*.txt``), written for the project.

- :func:`load_neutral_texts`: about 20 short neutral English sentences (no facts a knowledge edit
  could plausibly touch), used to measure perplexity before and after an intervention.
- :func:`load_amig_reference_prompts`: about 20 neutral prompts without factual content, one per
  line and never ending with whitespace (e.g. ``"The weather today is"``), used as reference
  inputs for AMIG-style attributions.
- :func:`load_specificity_prompts`: 48 fact-free prompts, disjoint from both sets above, whose own next tokens
  are attributed to find neurons that are "knowledge neurons" for anything (the specificity profile).
"""

from __future__ import annotations

from importlib import resources

from knowloc.errors import KnowlocError

NEUTRAL_TEXT_RESOURCE = "neutral_text.txt"
AMIG_REFERENCE_RESOURCE = "amig_reference_prompts.txt"
SPECIFICITY_RESOURCE = "specificity_prompts.txt"


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
