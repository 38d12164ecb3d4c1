"""Spec errors that know where in the spec they point, and the "did you mean" helper."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from cohort.errors import SpecError


class SpecPathError(SpecError):
    """A SpecError about one place of the spec, named by a dotted path such as ``objects.ecg.where[1].op``.

    ``path`` lets the text parser point a caret at the token the path came from.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice most similar to ``name`` (case-insensitive), or None if none is close."""
    options = list(dict.fromkeys(str(c) for c in choices))
    lowered = {c.lower(): c for c in options}
    if name.lower() in lowered:
        return lowered[name.lower()]
    # Swapped characters ("=>" for ">=") are the commonest operator typo; difflib ranks them low.
    swapped = [c for c in options if len(c) > 1 and sorted(c.lower()) == sorted(name.lower())]
    if swapped:
        return swapped[0]
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def unknown(path: str, what: str, name: str, choices: Iterable[str], *, hint: str = "",
            scope: str = "") -> SpecPathError:
    """An error for an unknown name: says what was expected, the closest match and the valid choices."""
    options = sorted(dict.fromkeys(str(c) for c in choices))
    guess = closest(name, options)
    parts = [f"unknown {what} {name!r}"]
    if guess is not None:
        parts.append(f"did you mean {guess!r}?")
    if options:
        shown = ", ".join(repr(o) for o in options[:25]) + (", ..." if len(options) > 25 else "")
        parts.append(f"valid{' for ' + scope if scope else ''}: {shown}")
    else:
        parts.append(f"no {what} is defined")
    if hint:
        parts.append(hint)
    return SpecPathError(path, "; ".join(parts))
