"""Strings from source files made fit for a DICOM text VR (PS3.5 6.2): repertoire and length.

Devices write what their firmware holds: NUL padding, control characters, a backslash in a name.
In LO and SH a backslash separates values and no control character may appear; ST, LT and UT allow
only CR, LF and FF besides graphic characters (ESC only for ISO 2022 code extensions, which UTF-8
objects do not use). Everything else becomes one space, so words stay apart and nothing is guessed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_CHARS", "fit_vr"]

# Longest value in characters per VR; the unlimited ones (UT) are absent.
MAX_CHARS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_TEXT_CONTROLS = {"\r", "\n", "\f"}  # allowed in ST, LT, UT only
_SPACES = re.compile(r"[ \t]+")


def _allowed(ch: str, vr: str) -> bool:
    if unicodedata.category(ch) != "Cc":  # Cc: C0, DEL and C1 control characters
        return not (ch == "\\" and vr in ("SH", "LO"))
    return vr in ("ST", "LT", "UT") and ch in _TEXT_CONTROLS


def fit_vr(value: str, vr: str) -> str:
    """``value`` with characters ``vr`` does not allow replaced by spaces, trimmed to its length.

    >>> fit_vr("custo\\x07med\\\\CP", "LO")
    'custo med CP'
    """
    if vr not in ("SH", "LO", "ST", "LT", "UT"):
        raise ValueError(f"fit_vr handles the text VRs SH, LO, ST, LT and UT, not {vr!r}")
    cleaned = "".join(ch if _allowed(ch, vr) else " " for ch in value)
    cleaned = _SPACES.sub(" ", cleaned).strip()
    limit = MAX_CHARS.get(vr)
    return cleaned[:limit].rstrip() if limit else cleaned
