"""Units of numbers, the one table: a value given in one unit is compared in the field's unit.

Units are UCUM codes as written in SR NUM items (``ms``, ``mm``, ``mm3``, ``[hnsf'U]``), plus a few
spellings people type or exports write (``msec``, ``ml``, ``bpm``). Only units of the same dimension
convert. The index stores numbers in their field's unit (the one its template config or the catalog
declares), so a query converts its value once instead of converting every stored row; the spec
validator, the index (``cohort.index``) and the test oracle all use this module.

Dimensionless numbers: UCUM ``1`` is the unity, a plain fraction (0.35), and ``%`` is ``1/100``
of it, so ``lvef >= 0.35 1`` and ``lvef >= 35 %`` are the same question. Counts (instances, rows,
leads, segments) are a dimension of their own, ``{count}`` (a UCUM annotation), so that a count
is never silently compared with a fraction or a percentage.
"""

from __future__ import annotations

from cohort.spec.errors import SpecPathError, closest

# unit -> (dimension, factor to the dimension's base unit)
_UNITS: dict[str, tuple[str, float]] = {
    "us": ("time", 1e-6), "ms": ("time", 1e-3), "s": ("time", 1.0), "min": ("time", 60.0),
    "h": ("time", 3600.0), "d": ("time", 86400.0), "wk": ("time", 604800.0),
    "mo": ("time", 2629800.0), "a": ("time", 365.25 * 86400.0),
    "um": ("length", 1e-6), "mm": ("length", 1e-3), "cm": ("length", 1e-2), "m": ("length", 1.0),
    "mm2": ("area", 1e-6), "cm2": ("area", 1e-4), "m2": ("area", 1.0),
    "mm3": ("volume", 1e-9), "cm3": ("volume", 1e-6), "mL": ("volume", 1e-6), "L": ("volume", 1e-3),
    "mg": ("mass", 1e-6), "g": ("mass", 1e-3), "kg": ("mass", 1.0),
    "deg": ("angle", 1.0), "rad": ("angle", 57.29577951308232),
    "/min": ("rate", 1.0), "{beats}/min": ("rate", 1.0), "/s": ("rate", 60.0),
    "Hz": ("frequency", 1.0), "kHz": ("frequency", 1e3),
    "1": ("dimensionless", 1.0), "%": ("dimensionless", 0.01),
    "{count}": ("count", 1.0),
    "uV": ("voltage", 1e-6), "mV": ("voltage", 1e-3), "V": ("voltage", 1.0), "kV": ("voltage", 1e3),
    "[hnsf'U]": ("hounsfield", 1.0), "kg/m2": ("bmi", 1.0),
    "mg/dL": ("concentration", 1.0), "umol/L": ("molar_concentration", 1.0),
}
_ALIASES: dict[str, str] = {
    "msec": "ms", "sec": "s", "second": "s", "seconds": "s", "minute": "min", "minutes": "min",
    "hour": "h", "hours": "h", "day": "d", "days": "d", "week": "wk", "weeks": "wk", "year": "a",
    "years": "a", "µm": "um", "ml": "mL", "l": "L", "degree": "deg", "degrees": "deg", "°": "deg",
    "bpm": "/min", "1/min": "/min", "percent": "%", "HU": "[hnsf'U]",
    "µV": "uV", "cm^2": "cm2", "mm^2": "mm2", "mm^3": "mm3", "cm^3": "cm3",
    "count": "{count}", "{counts}": "{count}", "n": "{count}",
}


def canonical_unit(unit: str) -> str | None:
    """The UCUM spelling of ``unit``, or None when the unit is unknown."""
    if unit in _UNITS:
        return unit
    return _ALIASES.get(unit) or _ALIASES.get(unit.lower())


def known_units() -> list[str]:
    """Every unit spelling accepted (UCUM codes first)."""
    return [*_UNITS, *_ALIASES]


def dimension(unit: str) -> str | None:
    """The physical dimension of ``unit`` (e.g. ``"time"``), or None when the unit is unknown."""
    canon = canonical_unit(unit)
    return _UNITS[canon][0] if canon else None


def compatible(unit: str, other: str) -> bool:
    """Whether values in ``unit`` can be converted to ``other``."""
    dim = dimension(unit)
    return dim is not None and dim == dimension(other)


def convert(value: float, from_unit: str, to_unit: str, *, path: str = "", field: str = "") -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``; SpecPathError when they do not convert.

    ``path`` (where in the spec) and ``field`` (whose unit ``to_unit`` is) only make messages clearer.
    The result is rounded to 12 significant digits, so 0.12 s is 120 ms exactly (not
    119.99999999999999): a stored value and a spec value converted the same way compare equal.
    """
    of = f" (field {field!r})" if field else ""
    src, dst = canonical_unit(from_unit), canonical_unit(to_unit)
    if src is None:
        guess = closest(from_unit, known_units())
        hint = f"; did you mean {guess!r}?" if guess else f"; known units: {', '.join(_UNITS)}"
        raise SpecPathError(path, f"unknown unit {from_unit!r}{of}{hint}")
    if dst is None:
        raise SpecPathError(path, f"unknown unit {to_unit!r}{of}")
    if src == dst:
        return float(value)
    (dim_src, f_src), (dim_dst, f_dst) = _UNITS[src], _UNITS[dst]
    if dim_src != dim_dst:
        same = sorted(u for u, (d, _) in _UNITS.items() if d == dim_dst)
        raise SpecPathError(path, f"unit {from_unit!r} ({dim_src}) is not compatible with {to_unit!r} "
                                  f"({dim_dst}){of}; use one of {', '.join(same)}")
    return float(f"{float(value) * f_src / f_dst:.12g}")
