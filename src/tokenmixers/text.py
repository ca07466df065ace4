"""Text helpers every command shares: plain-text tables, "did you mean" hints, comma lists."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["close_matches", "did_you_mean", "format_table", "split_list"]

T = TypeVar("T")


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: str = "") -> str:
    """A plain-text table: ``align`` has one letter per column, ``l`` or ``r`` (default l)."""
    align = align.ljust(len(header), "l")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[Any]) -> str:
        cells = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(row, widths, align)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def close_matches(
    word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6
) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``word``, best first (for hints that do not fit
    :func:`did_you_mean`'s ``"; did you mean ..."`` wording)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` with the choices closest to ``word``, or ``""``."""
    close = close_matches(word, choices, n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""


def split_list(
    text: str | Sequence[str] | None, cast: Callable[[str], T] = str, *, what: str = "value"
) -> list[T]:
    """``"a, b,,c"`` -> ``[cast("a"), cast("b"), cast("c")]`` (blanks dropped); a sequence is
    taken as already split. A value ``cast`` rejects raises ``ValueError`` naming ``what``."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            out.append(cast(item))
        except ValueError:
            raise ValueError(
                f"{what} {item!r} in {text!r} is not valid: expected a comma-separated list "
                f"of {getattr(cast, '__name__', 'value')}s, e.g. 160,224,288"
            ) from None
    return out
