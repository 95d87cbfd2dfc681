"""Where a subject's tokens are in a text, as the model reads it (ROME's rule, special tokens included)."""

from __future__ import annotations

from knowloc.models.lm import LanguageModel


def subject_span(lm: LanguageModel, text: str, subject: str) -> tuple[int, int] | None:
    """(first, last) token positions of the subject's last occurrence in ``text`` (inclusive), or None when the
    subject does not occur in it.

    last = len(tokens of the text up to the end of the subject) - 1 (ROME's rule); first = the number of tokens of
    the text before the subject (its trailing whitespace removed: BPE tokenizers fold the space into the subject's
    first token), at most ``last``.

    Example:
        >>> subject_span(lm, "The Eiffel Tower is in", "Eiffel Tower")  # doctest: +SKIP
        (1, 3)
    """
    text = text.rstrip()
    name = subject.strip() if subject else ""
    at = text.rfind(name) if name else -1
    if at < 0:
        return None
    n_text = len(lm.tokenizer(text)["input_ids"])
    last = min(len(lm.tokenizer(text[:at + len(name)])["input_ids"]), n_text) - 1
    first = min(len(lm.tokenizer(text[:at].rstrip())["input_ids"]), last)
    return first, last
