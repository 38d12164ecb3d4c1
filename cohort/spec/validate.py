"""Checks a CohortSpec beyond its shape: names that resolve, ops that fit the field, units, privacy.

Field checks use the catalog the caller passes (a store's: ``cohort.index.catalog.store_catalog``; the
built-in one: ``field_catalog()``); without one only the structure is checked. The spec layer never
reads the index's catalog itself: one catalog per store, passed explicitly by every entry point.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cohort.spec.errors import SpecPathError, unknown
from cohort.spec.model import And, CohortSpec, Expr, Not, Or, Predicate, Scalar
from cohort.spec.privacy import ROW_LEVEL_VALUE_TYPES, IdentifyingRequestError, check_privacy
from cohort.spec.units import canonical_unit, compatible, known_units

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Words of the expression grammar; an object with one of these names could not be referenced.
RESERVED_NAMES = frozenset({"and", "or", "not", "all", "any", "true", "false"})
STANDARD_SUBSET_NAMES = ("CT", "ECG", "CT+ECG")
ORDER_OPS = frozenset({"<", "<=", ">", ">="})
DEFAULT_OPS: dict[str, tuple[str, ...]] = {
    "number": ("=", "!=", "<", "<=", ">", ">=", "in", "exists"),
    "date": ("=", "!=", "<", "<=", ">", ">=", "in", "exists"),
    "code": ("=", "!=", "in", "contains", "exists"),
    "text": ("=", "!=", "in", "contains", "exists"),
    "bool": ("=", "!=", "exists"),
    "point": ("exists",),
    "uid": ("exists",),
}

# Value types as the spec sees them; catalog spellings are mapped onto these.
_TYPE_ALIASES = {
    "num": "number", "numeric": "number", "number": "number", "float": "number", "int": "number",
    "integer": "number", "code": "code", "coded": "code", "text": "text", "string": "text", "str": "text",
    "date": "date", "datetime": "date", "bool": "bool", "boolean": "bool", "uid": "uid",
    "point": "point", "scoord": "point", "scoord3d": "point", "geometric": "point", "geometry": "point",
}


@dataclass(frozen=True)
class FieldFacts:
    """What validation needs to know about one indexed field."""

    name: str
    kinds: frozenset[str]  # object kinds carrying the field
    templates: frozenset[str]  # SR templates carrying it (empty: not an SR template field)
    value_type: str  # number | code | text | date | bool | point | uid
    unit: str | None = None
    operators: tuple[str, ...] = ()  # valid operators; empty: the defaults of the value type
    aliases: tuple[str, ...] = ()  # coded fields: short names for codes

    def valid_ops(self) -> tuple[str, ...]:
        """Operators this field accepts."""
        return self.operators or DEFAULT_OPS.get(self.value_type, ("=", "!=", "in", "exists"))


def _as_set(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(v) for v in value)


def facts_of(name: str, info: Any) -> FieldFacts:
    """Read a catalog entry (FieldInfo object or dict) into FieldFacts, tolerating spelling variants."""
    def get(*keys: str) -> Any:
        for key in keys:
            if isinstance(info, Mapping) and key in info:
                return info[key]
            if hasattr(info, key):
                return getattr(info, key)
        return None

    raw_type = str(get("value_type", "type", "vtype") or "text").lower()
    kinds = _as_set(get("kinds", "kind"))
    templates = _as_set(get("templates", "template"))
    if templates and not kinds:
        kinds = frozenset({"SR"})
    aliases = get("value_aliases") or get("aliases") or ()
    alias_names = tuple(aliases) if isinstance(aliases, Mapping) else tuple(str(a[0]) for a in aliases)
    return FieldFacts(name=name, kinds=kinds, templates=templates,
                      value_type=_TYPE_ALIASES.get(raw_type, raw_type), unit=get("unit") or None,
                      operators=tuple(get("operators") or ()), aliases=alias_names)


def load_catalog(catalog: Mapping[str, Any] | None) -> dict[str, FieldFacts] | None:
    """FieldFacts per field of ``catalog``; None when no catalog is given (structure-only checks)."""
    if catalog is None:
        return None
    return {name: facts_of(name, info) for name, info in catalog.items()}


def fields_for(catalog: Mapping[str, FieldFacts], kind: str, template: str | None) -> list[str]:
    """Names of the fields available on objects of ``kind`` (and SR ``template``)."""
    return sorted(f.name for f in catalog.values() if _applies(f, kind, template))


def _applies(facts: FieldFacts, kind: str, template: str | None) -> bool:
    if facts.kinds and kind not in facts.kinds:
        return False
    if kind == "SR" and facts.templates:
        return template in facts.templates
    return True


def expr_names(expr: Expr) -> list[str]:
    """Object names referenced by a patient-level expression, in order of appearance."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, And):
        return [n for e in expr.all for n in expr_names(e)]
    if isinstance(expr, Or):
        return [n for e in expr.any for n in expr_names(e)]
    return expr_names(expr.not_)


class _Validator:
    def __init__(self, spec: CohortSpec, catalog: dict[str, FieldFacts] | None) -> None:
        self.spec = spec
        self.catalog = catalog
        self.names = list(spec.objects)

    def run(self) -> None:
        check_privacy(self.spec)
        for name in self.spec.objects:
            self._object(name)
        self._within_cycles()
        self._expr(self.spec.cohort, "cohort")
        for sname, expr in self.spec.subsets.items():
            if not sname.strip():
                raise SpecPathError("subsets", "a subset needs a non-empty name")
            self._expr(expr, f"subsets.{sname}")
        self._label()
        self._distributions()

    # --- objects --------------------------------------------------------------------------------
    def _object(self, name: str) -> None:
        obj = self.spec.objects[name]
        path = f"objects.{name}"
        if not NAME_RE.match(name) or name in RESERVED_NAMES:
            raise SpecPathError(path, f"object name {name!r} must be an identifier (letters, digits, _) "
                                      f"and not one of {', '.join(sorted(RESERVED_NAMES))}")
        if obj.kind == "SR" and not obj.template:
            raise SpecPathError(f"{path}.template", "an SR object needs a template, e.g. SR:ecg_report"
                                + self._template_hint())
        if obj.kind != "SR" and obj.template:
            raise SpecPathError(f"{path}.template", f"template is only for SR objects, not {obj.kind}")
        if obj.template and self.catalog is not None:
            templates = {t for f in self.catalog.values() for t in f.templates}
            if obj.template not in templates:
                raise unknown(f"{path}.template", "SR template", obj.template, templates)
        groups: set[str] = set()
        for i, pred in enumerate(obj.where):
            self._predicate(pred, f"{path}.where[{i}]", obj.kind, obj.template)
            if pred.group is not None:
                groups.add(pred.group)
        if "" in groups:
            raise SpecPathError(f"{path}.where", "a group name must not be empty")
        if obj.within is not None:
            w, wpath = obj.within, f"{path}.within"
            if w.of not in self.spec.objects:
                raise unknown(f"{wpath}.of", "object", w.of, self.names)
            if w.of == name:
                raise SpecPathError(f"{wpath}.of", "an object cannot be timed relative to itself")
            if w.min_days is not None and w.max_days is not None and w.min_days > w.max_days:
                raise SpecPathError(wpath, f"min_days ({w.min_days}) is greater than max_days ({w.max_days})")
            other = self.spec.objects[w.of]
            if w.date_field is not None:
                self._date_field(w.date_field, f"{wpath}.date_field", other.kind, other.template)
            if w.own_date_field is not None:
                self._date_field(w.own_date_field, f"{wpath}.own_date_field", obj.kind, obj.template)

    def _template_hint(self) -> str:
        if self.catalog is None:
            return ""
        templates = sorted({t for f in self.catalog.values() for t in f.templates})
        return f"; templates: {', '.join(templates)}" if templates else ""

    def _field(self, field: str, path: str, kind: str, template: str | None) -> FieldFacts | None:
        if not field:
            raise SpecPathError(path, "field name is empty")
        if self.catalog is None:
            return None
        where = f"{kind}:{template}" if template else kind
        facts = self.catalog.get(field)
        if facts is None:
            raise unknown(path, "field", field, fields_for(self.catalog, kind, template), scope=where)
        if not _applies(facts, kind, template):
            owners = sorted(f"SR:{t}" for t in facts.templates) if facts.templates else sorted(facts.kinds)
            valid = ", ".join(fields_for(self.catalog, kind, template))
            raise SpecPathError(path, f"field {field!r} belongs to {', '.join(owners)}, not to {where}; "
                                      f"fields of {where}: {valid}")
        return facts

    def _date_field(self, field: str, path: str, kind: str, template: str | None) -> None:
        facts = self._field(field, path, kind, template)
        if facts is not None and facts.value_type != "date":
            raise SpecPathError(path, f"{field!r} is a {facts.value_type} field, not a date")

    def _predicate(self, pred: Predicate, path: str, kind: str, template: str | None) -> None:
        values: list[Scalar | None] = list(pred.value) if isinstance(pred.value, list) else [pred.value]
        if pred.op == "exists":
            if not (pred.value is None or isinstance(pred.value, bool)) or pred.unit is not None:
                raise SpecPathError(f"{path}.value", "'exists' takes no value, or true (has a value) / "
                                                     "false (has no value)")
        elif pred.op == "in":
            if not isinstance(pred.value, list) or not pred.value:
                raise SpecPathError(f"{path}.value", "'in' needs a non-empty list of values")
        else:
            if pred.value is None:
                raise SpecPathError(f"{path}.value", f"{pred.op!r} needs a value")
            if isinstance(pred.value, list):
                raise SpecPathError(f"{path}.value", f"{pred.op!r} takes one value; use 'in' for a list")
        if pred.op == "contains" and not isinstance(pred.value, str):
            raise SpecPathError(f"{path}.value", "'contains' needs a text value")
        if pred.op in ORDER_OPS and (isinstance(pred.value, bool) or not isinstance(pred.value, int | float | str)):
            raise SpecPathError(f"{path}.value", f"{pred.op!r} needs a number or a date")
        if pred.unit is not None:
            self._unit(pred.unit, f"{path}.unit")
            if not all(_is_number(v) for v in values):
                raise SpecPathError(f"{path}.unit", "a unit applies to numeric values only")
        facts = self._field(pred.field, f"{path}.field", kind, template)
        if facts is None or pred.op == "exists":
            return
        self._values_fit(facts, pred.op, values, pred.unit, path)

    def _values_fit(self, facts: FieldFacts, op: str, values: list[Scalar | None], unit: str | None,
                    path: str) -> None:
        t, name = facts.value_type, facts.name
        ops = facts.valid_ops()
        if op not in ops:
            advice = {"<": "'=', '!=' or 'in'", "contains": "'=' or 'in'"}.get(
                "<" if op in ORDER_OPS else op, ", ".join(repr(o) for o in ops))
            raise SpecPathError(f"{path}.op", f"{op!r} does not apply to {name!r} ({t} field); "
                                              f"valid operators: {', '.join(ops)}; try {advice}")
        for v in values:
            self._value_fits(facts, v, f"{path}.value")
        if t == "number" and unit is not None:
            if facts.unit is None:
                raise SpecPathError(f"{path}.unit", f"{name!r} has no unit; drop {unit!r}")
            if not compatible(unit, facts.unit):
                raise SpecPathError(f"{path}.unit", f"unit {unit!r} does not convert to {name!r}'s unit "
                                                    f"{facts.unit!r}")

    def _value_fits(self, facts: FieldFacts, v: Scalar | None, path: str) -> None:
        t, name = facts.value_type, facts.name
        if t == "number" and not _is_number(v):
            raise SpecPathError(path, f"{name!r} is numeric; {v!r} is not a number")
        if t in ("code", "text") and not isinstance(v, str):
            hint = " (YAML reads bare yes/no/on/off as booleans: quote it)" if isinstance(v, bool) else \
                " (quote it)"
            raise SpecPathError(path, f"{name!r} is {t}; {v!r} is not a text value{hint}")
        if t == "bool" and not isinstance(v, bool):
            raise SpecPathError(path, f"{name!r} is boolean; use true or false, not {v!r}")
        if t == "date":
            try:
                date.fromisoformat(str(v)[:10])
            except ValueError:
                raise SpecPathError(path, f"{name!r} is a date; write it as YYYY-MM-DD, not {v!r}") from None

    def _unit(self, unit: str, path: str) -> None:
        if canonical_unit(unit) is None:
            raise unknown(path, "unit", unit, known_units())

    def _within_cycles(self) -> None:
        for start in self.spec.objects:
            seen = [start]
            cur = self.spec.objects[start].within
            while cur is not None and cur.of in self.spec.objects:
                if cur.of in seen:
                    loop = " -> ".join([*seen[seen.index(cur.of):], cur.of])
                    raise SpecPathError(f"objects.{start}.within.of", f"time windows form a cycle: {loop}")
                seen.append(cur.of)
                cur = self.spec.objects[cur.of].within

    # --- patient level ----------------------------------------------------------------------------
    def _expr(self, expr: Expr, path: str) -> None:
        if isinstance(expr, str):
            if expr not in self.spec.objects:
                raise unknown(path, "object", expr, self.names)
        elif isinstance(expr, And | Or):
            items = expr.all if isinstance(expr, And) else expr.any
            key = "all" if isinstance(expr, And) else "any"
            if not items:
                raise SpecPathError(f"{path}.{key}", f"'{key}' needs at least one expression")
            for i, e in enumerate(items):
                self._expr(e, f"{path}.{key}[{i}]")
        elif isinstance(expr, Not):
            self._expr(expr.not_, f"{path}.not")

    def _label(self) -> None:
        label = self.spec.label
        if label is None:
            return
        if label.object not in self.spec.objects:
            raise unknown("label.object", "object", label.object, self.names)
        if not label.positive:
            raise SpecPathError("label.positive", "list at least one positive value")
        both = [v for v in label.positive if any(v == n and type(v) is type(n) for n in label.negative)]
        if both:
            raise SpecPathError("label.negative", f"{both[0]!r} is both positive and negative")
        obj = self.spec.objects[label.object]
        facts = self._field(label.field, "label.field", obj.kind, obj.template)
        if facts is None:
            return
        if facts.value_type not in ("code", "bool", "text", "number"):
            raise SpecPathError("label.field", f"a label needs a coded, boolean or text field; "
                                               f"{label.field!r} is {facts.value_type}")
        for key, values in (("positive", label.positive), ("negative", label.negative)):
            for i, v in enumerate(values):
                self._value_fits(facts, v, f"label.{key}[{i}]")

    def _distributions(self) -> None:
        subsets = [*STANDARD_SUBSET_NAMES, *self.spec.subsets]
        for i, dist in enumerate(self.spec.distributions):
            path = f"distributions[{i}]"
            if dist.object not in self.spec.objects:
                raise unknown(f"{path}.object", "object", dist.object, self.names)
            if dist.subset is not None and dist.subset not in subsets:
                raise unknown(f"{path}.subset", "subset", dist.subset, subsets)
            if dist.bins is not None:
                if len(dist.bins) < 2:
                    raise SpecPathError(f"{path}.bins", "a histogram needs at least two bin edges")
                if any(hi <= lo for lo, hi in zip(dist.bins, dist.bins[1:], strict=False)):
                    raise SpecPathError(f"{path}.bins", "bin edges must increase strictly")
            if dist.unit is not None:
                self._unit(dist.unit, f"{path}.unit")
                if dist.bins is None:
                    raise SpecPathError(f"{path}.unit", "a unit applies to histograms (with bins) only")
            obj = self.spec.objects[dist.object]
            facts = self._field(dist.field, f"{path}.field", obj.kind, obj.template)
            if facts is None:
                continue
            if facts.value_type in ROW_LEVEL_VALUE_TYPES or facts.value_type == "point":
                raise IdentifyingRequestError(
                    f"{path}.field", f"{dist.field!r} is a {facts.value_type} field: counting its values "
                                     "would list individual records; filter on it instead")
            if facts.value_type == "number" and dist.bins is None:
                raise SpecPathError(f"{path}.bins", f"{dist.field!r} is numeric: give bin edges "
                                                    "(exact values are not counted)")
            if facts.value_type != "number" and dist.bins is not None:
                raise SpecPathError(f"{path}.bins", f"{dist.field!r} is {facts.value_type}: drop the bins "
                                                    "to count categories")
            if dist.unit is not None and facts.unit is not None and not compatible(dist.unit, facts.unit):
                raise SpecPathError(f"{path}.unit", f"unit {dist.unit!r} does not convert to "
                                                    f"{dist.field!r}'s unit {facts.unit!r}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_spec(spec: CohortSpec, catalog: Mapping[str, Any] | None) -> CohortSpec:
    """Check ``spec``; return it unchanged or raise SpecPathError naming the path and valid choices.

    Args:
        spec: the parsed spec.
        catalog: field name -> FieldInfo (or dict with kinds/templates/value_type/unit): fields and SR
            templates are checked against it (known, on that kind/template, operator vs value type,
            unit). None checks the structure only (object names, windows, bins, identifying field
            names): no field or template is looked up, so none is refused as unknown. There is no
            default and no fallback: an entry point for a store passes ``store_catalog(store)``, one
            without a store ``field_catalog()``.
    """
    _Validator(spec, load_catalog(catalog)).run()
    return spec

