"""Layer lists: one grammar for every setting that names a model's layers (``--edit-layer``, ``--lve-layers``,
``--attention-layers``).

A layer list is one or more comma-separated terms:

* ``N``: layer N (0 is the first);
* ``mid``: layer ``n_layers // 2``;
* ``everyN``: layers 0, N, 2N, ... of the model (N >= 1);
* ``a-b``: layers a to b, both included (a <= b), cut at the model's last layer.

E.g. ``mid,15``, ``0,6,12``, ``every3``, ``2-5``. A list is parsed and checked once, when the study's config is
made (:meth:`LayerSpec.parse`: bad syntax is one line naming the flag), and resolved against a model once
(:meth:`LayerSpec.resolve`: a layer the model does not have is one line). Each term has one canonical spelling
(``05`` is ``5``, ``MID`` is ``mid``), which is what a config keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from knowloc.errors import KnowlocError

GRAMMAR = ("layer numbers, 'mid' (n_layers // 2), 'everyN' (layers 0, N, 2N, ...) or 'a-b' (layers a to b), "
           "comma-separated")


def _number(text: str) -> int | None:
    """An integer spelled as Python's int() reads it, else None."""
    try:
        return int(text)
    except ValueError:
        return None


def _term(item: str, flag: str) -> str:
    """The canonical spelling of one term (one-line KnowlocError naming the flag when it is not a term)."""
    item = item.strip().lower()
    if item == "mid":
        return item
    value = _number(item)
    if value is not None:
        if value < 0:
            raise KnowlocError(f"{flag} must be >= 0, got {value}")
        return str(value)
    if item.startswith("every"):
        step = _number(item[len("every"):])
        if step is None or step < 1:
            raise KnowlocError(f"{flag}: 'everyN' needs a step N >= 1, got {item!r}")
        return f"every{step}"
    parts = item.split("-")
    if len(parts) == 2 and all(_number(p) is not None for p in parts):
        first, last = (int(p) for p in parts)
        if not first <= last:
            raise KnowlocError(f"{flag}: a range a-b needs 0 <= a <= b, got {item!r}")
        return f"{first}-{last}"
    raise KnowlocError(f"{flag} must be layer numbers or 'mid', 'everyN', 'a-b' (comma-separated), got {item!r}")


@dataclass(frozen=True)
class LayerSpec:
    """A parsed layer list (module docstring): ``items``, the distinct terms in their canonical spelling, in the
    order given; ``flag``, the setting it came from (named by every error)."""

    flag: str
    items: tuple[str, ...]

    @classmethod
    def parse(cls, value: str | int | list | tuple, flag: str) -> "LayerSpec":
        """The layer list of a comma-separated string or a list of them (one-line KnowlocError naming ``flag``).

        Example:
            >>> LayerSpec.parse("mid, 05,every3", "--edit-layer").items
            ('mid', '5', 'every3')
        """
        parts = [value] if isinstance(value, (str, int)) else list(value)
        pieces = [piece for part in parts for piece in str(part).split(",") if piece.strip()]
        if not pieces:
            raise KnowlocError(f"{flag} needs at least one layer ({GRAMMAR})")
        return cls(flag, tuple(dict.fromkeys(_term(piece, flag) for piece in pieces)))

    @property
    def text(self) -> str:
        """The list as one comma-separated string."""
        return ",".join(self.items)

    def resolve(self, n_layers: int) -> list[int]:
        """The layers of a model of ``n_layers`` layers, in the order the terms name them, each once (``everyN``
        and ``a-b`` ascending); a number, or the start of a range, that is not a layer of the model is a one-line
        KnowlocError.

        Example:
            >>> LayerSpec.parse("mid,0-2,every10", "--edit-layer").resolve(30)
            [15, 0, 1, 2, 10, 20]
        """
        out: list[int] = []
        for item in self.items:
            if item == "mid":
                out.append(n_layers // 2)
            elif item.startswith("every"):
                out.extend(range(0, n_layers, int(item[len("every"):])))
            else:
                first, _, last = item.partition("-")
                if not 0 <= int(first) < n_layers:
                    raise KnowlocError(f"{self.flag} {item} out of range: the model has {n_layers} layers "
                                       f"(0-{n_layers - 1})")
                out.extend(range(int(first), min(int(last or first), n_layers - 1) + 1))
        return list(dict.fromkeys(out))


__all__ = ["GRAMMAR", "LayerSpec"]
