"""Readers of resting-ECG source formats into the common ``EcgRecord``, one module per format.

This package module holds what all readers share: reading (possibly gzipped) input bytes, hardened
XML parsing, and mapping device interpretation statements onto the canonical findings.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
import xml.etree.ElementTree as ET  # only for the Element type and ParseError; parsing uses defusedxml
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from cohort.errors import InputError

__all__ = ["read_input_bytes", "parse_xml", "findings_from_statements", "FINDING_PATTERNS"]

# Canonical finding -> statement patterns (lower case, accents removed) in the languages devices use.
FINDING_PATTERNS: dict[str, tuple[str, ...]] = {
    "sinus_rhythm": (r"\bsinus ?(rhythm|brady|tachy)", r"\bsinus(rhythmus|bradykardie|tachykardie)",
                     r"\britmo sinusale", r"\brythme sinusal"),
    "atrial_fibrillation": (r"\batrial fibrillation", r"\bvorhofflimmern", r"\bfibrillazione atriale",
                            r"\bfibrillation auriculaire", r"\bafib\b"),
    "lbbb": (r"\bleft bundle[- ]branch block", r"\blinksschenkelblock", r"\blbbb\b",
             r"\bblocco di branca sinistra", r"\bbloc de branche gauche"),
    "rbbb": (r"\bright bundle[- ]branch block", r"\brechtsschenkelblock", r"\brbbb\b",
             r"\bblocco di branca destra", r"\bbloc de branche droit"),
    "first_degree_av_block": (r"\b(1st|first)[- ]degree a-?v block", r"\bav-?block (i|1)\b",
                              r"\bav-?block (i|1)\. ?grades", r"\bblocco av di (i|1)", r"\bbav (i|1)\b"),
}
# A statement with one of these is not the complete, present finding (incomplete block, negation).
_QUALIFIERS = re.compile(r"\b(incomplete|inkomplett\w*|incompleto|no|not|kein\w*|nicht|ohne|non|"
                         r"r/o|rule out|ausschluss|ausgeschlossen|possible|moglich\w*|v\.a\.)\b")
_MAX_INPUT_BYTES = 256 * 1024 * 1024


def read_input_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (exports are sometimes archived that way)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", path=str(path)) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                raw = gz.read(_MAX_INPUT_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise InputError(f"gzip stream is damaged ({exc}); re-export or re-compress the file",
                             path=str(path)) from None
        if len(raw) > _MAX_INPUT_BYTES:
            raise InputError("decompressed file exceeds 256 MiB; not an ECG export", path=str(path))
    return raw


def parse_xml(path: Path, data: bytes) -> ET.Element:
    """Parse XML without external entities, entity declarations or network access.

    Raises InputError for entity declarations (XXE, expansion bombs) and for malformed XML.
    """
    try:
        # forbid_dtd=False: real MUSE exports carry <!DOCTYPE RestingECG SYSTEM "restecg.dtd">, which
        # is harmless because the external DTD is never loaded; entity declarations are still refused.
        return fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise InputError(
            f"XML declares entities or external references ({exc}); ECG exports never need them and "
            "they are refused for safety (XXE / entity expansion). Re-export the file from the device",
            path=str(path), field="DOCTYPE") from None
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        raise InputError(f"not well-formed XML at line {line}, column {col} ({exc}); the file may be "
                         "truncated or damaged: re-export it", path=str(path), field="xml") from None


def _normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def findings_from_statements(statements: list[str]) -> list[str]:
    """Canonical findings (values of ``record.FINDINGS``) recognised in the device's statements."""
    found: set[str] = set()
    for statement in statements:
        text = _normalise(statement)
        if _QUALIFIERS.search(text):
            continue
        for finding, patterns in FINDING_PATTERNS.items():
            if any(re.search(p, text) for p in patterns):
                found.add(finding)
    return [f for f in FINDING_PATTERNS if f in found]
