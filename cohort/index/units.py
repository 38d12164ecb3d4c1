"""UCUM units the index understands, and conversion between compatible ones.

Numbers are stored in their field's unit (the one its template config or attribute declares), so a
query converts its value once instead of converting every stored row.
"""

from __future__ import annotations

import difflib

from cohort.errors import SpecError

# unit -> (dimension, factor to the dimension's base unit). Keys are UCUM codes plus a few spellings
# that real exports use ("bpm", "ml", "sec").
_UNITS: dict[str, tuple[str, float]] = {
    "us": ("time", 1e-6), "ms": ("time", 1e-3), "s": ("time", 1.0), "sec": ("time", 1.0),
    "min": ("time", 60.0), "h": ("time", 3600.0), "d": ("time", 86400.0), "wk": ("time", 604800.0),
    "mo": ("time", 2629800.0), "a": ("time", 31557600.0),
    "um": ("length", 1e-6), "mm": ("length", 1e-3), "cm": ("length", 1e-2), "m": ("length", 1.0),
    "mm2": ("area", 1e-6), "cm2": ("area", 1e-4), "m2": ("area", 1.0),
    "mm3": ("volume", 1e-9), "cm3": ("volume", 1e-6), "mL": ("volume", 1e-6), "ml": ("volume", 1e-6),
    "L": ("volume", 1e-3), "l": ("volume", 1e-3),
    "g": ("mass", 1.0), "kg": ("mass", 1000.0), "mg": ("mass", 1e-3),
    "Hz": ("frequency", 1.0), "kHz": ("frequency", 1000.0),
    "/min": ("rate", 1.0), "{beats}/min": ("rate", 1.0), "bpm": ("rate", 1.0),
    "uV": ("voltage", 1e-6), "mV": ("voltage", 1e-3), "V": ("voltage", 1.0), "kV": ("voltage", 1e3),
    "deg": ("angle", 1.0), "rad": ("angle", 57.29577951308232),
    "%": ("ratio", 1.0),
    "mg/dL": ("concentration", 1.0), "umol/L": ("molar_concentration", 1.0),
    "kg/m2": ("bmi", 1.0),
    "[hnsf'U]": ("hounsfield", 1.0),
    "1": ("count", 1.0), "{count}": ("count", 1.0),
}


def known_units() -> tuple[str, ...]:
    """Every unit code the index can convert."""
    return tuple(_UNITS)


def dimension(unit: str) -> str | None:
    """The physical dimension of ``unit`` ("time", "length", ...), None if unknown."""
    entry = _UNITS.get(unit)
    return entry[0] if entry else None


def compatible(a: str, b: str) -> bool:
    """True when values in ``a`` can be converted to ``b``."""
    if a == b:
        return True
    da, db = dimension(a), dimension(b)
    return da is not None and da == db


def convert(value: float, from_unit: str, to_unit: str, *, field: str = "") -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``; SpecError when they are incompatible."""
    if from_unit == to_unit:
        return float(value)
    if from_unit not in _UNITS:
        close = difflib.get_close_matches(from_unit, _UNITS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known units: {', '.join(_UNITS)}"
        raise SpecError(f"unknown unit {from_unit!r}{_for(field)}{hint}")
    if not compatible(from_unit, to_unit):
        same = [u for u, (d, _) in _UNITS.items() if d == dimension(to_unit)] or [to_unit]
        raise SpecError(
            f"unit {from_unit!r} is not compatible with {to_unit!r}{_for(field)}; "
            f"use one of {', '.join(same)}"
        )
    # Rounded to 12 significant digits so 0.12 s is 120 ms exactly, not 119.99999999999999.
    return float(f"{float(value) * _UNITS[from_unit][1] / _UNITS[to_unit][1]:.12g}")


def _for(field: str) -> str:
    return f" (field {field!r})" if field else ""
