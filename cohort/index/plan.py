"""A CohortSpec resolved against the field catalog: the form both index backends compile.

Resolution does everything that does not depend on the backend, once: fields are looked up for
their object's kind and template, values are normalised (numbers converted to the field's unit,
code aliases resolved, booleans read), predicate groups are checked, ``within`` references are
ordered. Backends then only translate; so DuckDB and OpenSearch cannot disagree on meaning.

Value semantics (the spec model's docstring has the rest):

* text ``=``, ``!=``, ``in`` compare exactly; ``contains`` is a case-insensitive substring;
* a coded value is a configured alias (``LBBB``), ``"CODE SCHEME"``, a bare code value, or a code
  meaning (case-insensitive); coded ``contains`` searches the code meaning;
* ``exists`` with value ``False`` means the entity has no value of the field at all (also inside a
  group: it is checked on the entity, not on the group's item);
* ``!=`` on a multi-valued field holds when *some* value differs (use ``not`` for "none equals");
* a field with one value per entity (attribute, entity column) inside a group is checked on the
  entity, whichever item the group picks.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from cohort.errors import SpecError
from cohort.index.catalog import FieldInfo, field_catalog, resolve_field, template_keys
from cohort.results import ALL_SUBSET
from cohort.spec import units
from cohort.spec.model import And, CohortSpec, Expr, Not, Or, Predicate
from cohort.spec.validate import expr_names

STANDARD_SUBSETS: dict[str, Expr] = {"CT": "CT", "ECG": "ECG", "CT+ECG": And(all=["CT", "ECG"])}
KIND_SETS = ("CT", "MR", "CR", "DX", "ECG", "SR", "SEG")  # names that mean "any entity of this kind"
_TRUE_WORDS = {"yes", "true", "y", "ja", "1", "1.0", "positive"}
_FALSE_WORDS = {"no", "false", "n", "nein", "0", "0.0", "negative"}


@dataclass(frozen=True)
class CodeMatch:
    """One acceptable code: exact (value, scheme), or a bare value / meaning when scheme is None."""

    value: str
    scheme: str | None = None


@dataclass(frozen=True)
class Cond:
    """One normalised predicate on one field."""

    field: FieldInfo
    op: str  # = != < <= > >= in contains exists
    values: tuple[Any, ...] = ()  # float | ISO date str | lower-case str | CodeMatch
    present: bool = True  # ``exists``: True has a value, False has none


@dataclass(frozen=True)
class CondGroup:
    """Predicates that must hold on one item (SR container or SEG segment) of the entity."""

    name: str
    source: str  # "item" | "segment"
    conds: tuple[Cond, ...]


@dataclass(frozen=True)
class WithinPlan:
    """``min_days <= date(this) - date(of) <= max_days`` with the dates named."""

    of: str
    min_days: int | None
    max_days: int | None
    of_date: FieldInfo | None  # None: the event date of ``of`` (see ObjectPlan.date_field)
    own_date: FieldInfo | None


@dataclass(frozen=True)
class ObjectPlan:
    """One object condition, resolved."""

    name: str
    kind: str
    template: str | None
    conds: tuple[Cond, ...]
    groups: tuple[CondGroup, ...]
    within: WithinPlan | None

    @property
    def date_field(self) -> FieldInfo | None:
        """Field giving this object's event date for other objects' windows (None: entity date)."""
        return self.within.own_date if self.within else None


@dataclass(frozen=True)
class LabelPlan:
    """Label: the field's values on the object's matched entities, compared with positive / negative."""

    object: str
    field: FieldInfo
    positive: Cond
    negative: Cond


@dataclass(frozen=True)
class DistributionPlan:
    """A distribution request, resolved: bins in the field's unit, labels in the requested unit."""

    object: str
    field: FieldInfo
    subset: str
    bins: tuple[float, ...] | None
    unit: str
    bin_edges_shown: tuple[float, ...] | None


@dataclass(frozen=True)
class Plan:
    """The whole spec, resolved; ``objects`` in dependency order (``within`` targets first)."""

    objects: dict[str, ObjectPlan]
    cohort: Expr
    subsets: dict[str, Expr]
    label: LabelPlan | None
    distributions: tuple[DistributionPlan, ...]


def build_plan(spec: CohortSpec, catalog: dict[str, FieldInfo] | None = None) -> Plan:
    """Resolve ``spec``; SpecError names the bad part and what would be valid."""
    catalog = catalog if catalog is not None else field_catalog()
    templates = sorted({t for f in catalog.values() for t in f.templates}) or list(template_keys())
    objects: dict[str, ObjectPlan] = {}
    for name, obj in spec.objects.items():
        where = f"objects.{name}"
        if obj.kind == "SR":
            if not obj.template:
                raise SpecError(f"{where}: SR objects need 'template'; valid templates: {', '.join(templates)}")
            if obj.template not in templates:
                raise SpecError(f"{where}.template: unknown template {obj.template!r}; {_suggest(obj.template, templates)}")
        elif obj.template:
            raise SpecError(f"{where}.template: only SR objects have a template (this one is {obj.kind})")
        conds: list[Cond] = []
        grouped: dict[str, list[Cond]] = {}
        for i, pred in enumerate(obj.where):
            fi = resolve_field(pred.field, obj.kind, obj.template, catalog, where=f"{where}.where[{i}].field")
            cond = resolve_predicate(pred, fi, where=f"{where}.where[{i}]")
            if pred.group is None or not fi.groupable or not cond.present:
                # One value per entity, or "the entity has no value" (exists: false): either holds
                # for every item of a group, so it is checked on the entity.
                conds.append(cond)
            else:
                grouped.setdefault(pred.group, []).append(cond)
        groups = []
        for gname, gconds in grouped.items():
            sources = {c.field.source for c in gconds}
            if len(sources) > 1:
                raise SpecError(f"{where}: group {gname!r} mixes SR item and SEG segment fields; a group is "
                                "one SR container or one segment")
            groups.append(CondGroup(gname, sources.pop(), tuple(gconds)))
        within = _within(obj.within, name, obj.kind, obj.template, spec, catalog) if obj.within else None
        objects[name] = ObjectPlan(name, obj.kind, obj.template, tuple(conds), tuple(groups), within)
    ordered = _order(objects)
    names = set(objects)
    _check_expr(spec.cohort, names, "cohort")
    subsets: dict[str, Expr] = dict(STANDARD_SUBSETS)
    for sname, expr in spec.subsets.items():
        _check_expr(expr, names | set(spec.subsets), f"subsets.{sname}")
        subsets[sname] = _inline_subsets(expr, spec.subsets, set())
    label = _label(spec, ordered, catalog) if spec.label else None
    dists = tuple(_distribution(d, i, spec, ordered, subsets, catalog) for i, d in enumerate(spec.distributions))
    return Plan(ordered, spec.cohort, subsets, label, dists)


def resolve_predicate(pred: Predicate, fi: FieldInfo, *, where: str) -> Cond:
    """Normalise one predicate's value(s) for ``fi``."""
    if pred.op not in fi.operators:
        raise SpecError(f"{where}.op: {pred.op!r} does not apply to {fi.value_type} field {fi.name!r}; "
                        f"valid: {', '.join(fi.operators)}")
    if pred.unit and fi.value_type != "numeric":
        raise SpecError(f"{where}.unit: field {fi.name!r} is {fi.value_type}, units apply to numbers only")
    if pred.op == "exists":
        if not (pred.value is None or isinstance(pred.value, bool)):
            raise SpecError(f"{where}.value: 'exists' takes no value, or true / false")
        return Cond(fi, "exists", (), pred.value is not False)
    if pred.op == "in":
        if not isinstance(pred.value, list) or not pred.value:
            raise SpecError(f"{where}.value: 'in' needs a non-empty list of values")
        raw = list(pred.value)
    else:
        if isinstance(pred.value, list):
            raise SpecError(f"{where}.value: {pred.op!r} takes one value; use 'in' for a list")
        if pred.value is None:
            raise SpecError(f"{where}.value: {pred.op!r} needs a value")
        raw = [pred.value]
    values = tuple(v for r in raw for v in normalise_value(r, fi, pred.unit, where=f"{where}.value"))
    return Cond(fi, pred.op, values)


def normalise_value(value: Any, fi: FieldInfo, unit: str | None, *, where: str) -> list[Any]:
    """The stored form(s) of a spec value for ``fi`` (a coded alias may stand for several codes)."""
    vt = fi.value_type
    if vt == "numeric":
        if isinstance(value, bool) or not _is_number(value):
            raise SpecError(f"{where}: {fi.name!r} is numeric [{fi.unit}], got {value!r}")
        num = float(value)
        if unit and fi.unit:
            num = units.convert(num, unit, fi.unit, field=fi.name)
        return [num]
    if vt == "date":
        try:
            return [date.fromisoformat(str(value)).isoformat()]
        except ValueError:
            raise SpecError(f"{where}: {fi.name!r} is a date; write it as YYYY-MM-DD, got {value!r}") from None
    if vt == "boolean":
        return [float(as_bool(value, fi.name, where=where))]
    if vt == "coded":
        text = _scalar_text(value)
        aliases = fi.value_aliases
        if text in aliases:
            code, scheme = aliases[text].split()
            return [CodeMatch(code, scheme)]
        lowered = {k.lower(): v for k, v in aliases.items()}
        if text.lower() in lowered:
            code, scheme = lowered[text.lower()].split()
            return [CodeMatch(code, scheme)]
        parts = text.split()
        if len(parts) == 2 and parts[1].isupper() and any(ch.isdigit() for ch in parts[0]):
            return [CodeMatch(parts[0], parts[1])]
        return [CodeMatch(text)]
    return [_scalar_text(value)]


def as_bool(value: Any, field: str, *, where: str = "") -> bool:
    """Read a spec's boolean value (true / false, yes / no, 1 / 0)."""
    if isinstance(value, bool):
        return value
    word = _scalar_text(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise SpecError(f"{where + ': ' if where else ''}{field!r} is yes/no; use true or false, got {value!r}")


def _scalar_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"valid: {', '.join(valid)}"


def _within(w: Any, name: str, kind: str, template: str | None, spec: CohortSpec,
            catalog: dict[str, FieldInfo]) -> WithinPlan:
    where = f"objects.{name}.within"
    if w.of == name:
        raise SpecError(f"{where}.of: an object cannot be timed relative to itself")
    if w.of not in spec.objects:
        raise SpecError(f"{where}.of: unknown object {w.of!r}; {_suggest(w.of, list(spec.objects))}")
    if w.min_days is not None and w.max_days is not None and w.min_days > w.max_days:
        raise SpecError(f"{where}: min_days ({w.min_days}) is greater than max_days ({w.max_days})")
    other = spec.objects[w.of]
    of_date = own_date = None
    if w.date_field:
        of_date = resolve_field(w.date_field, other.kind, other.template, catalog, where=f"{where}.date_field")
    if w.own_date_field:
        own_date = resolve_field(w.own_date_field, kind, template, catalog, where=f"{where}.own_date_field")
    for label, fi in (("date_field", of_date), ("own_date_field", own_date)):
        if fi is not None and fi.value_type != "date":
            raise SpecError(f"{where}.{label}: {fi.name!r} is {fi.value_type}; a window needs a date field")
    return WithinPlan(w.of, w.min_days, w.max_days, of_date, own_date)


def _order(objects: dict[str, ObjectPlan]) -> dict[str, ObjectPlan]:
    ordered: dict[str, ObjectPlan] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise SpecError(f"objects: time windows form a cycle ({cycle}); one object must not depend on itself")
        visiting.append(name)
        obj = objects[name]
        if obj.within:
            visit(obj.within.of)
        visiting.pop()
        ordered[name] = obj

    for name in objects:
        visit(name)
    return ordered


def _check_expr(expr: Expr, names: set[str], where: str) -> None:
    valid = names | set(KIND_SETS) | set(STANDARD_SUBSETS)
    for n in expr_names(expr):
        if n not in valid:
            raise SpecError(f"{where}: unknown object {n!r}; {_suggest(n, sorted(valid))}")


def _inline_subsets(expr: Expr, subsets: dict[str, Expr], seen: set[str]) -> Expr:
    """Replace references to other named subsets by their expressions."""
    if isinstance(expr, str):
        if expr in subsets and expr not in seen:
            return _inline_subsets(subsets[expr], subsets, seen | {expr})
        if expr in seen:
            raise SpecError(f"subsets: {expr!r} refers to itself")
        return expr
    if isinstance(expr, And):
        return And(all=[_inline_subsets(e, subsets, seen) for e in expr.all])
    if isinstance(expr, Or):
        return Or(any=[_inline_subsets(e, subsets, seen) for e in expr.any])
    return Not(not_=_inline_subsets(expr.not_, subsets, seen))


def _label(spec: CohortSpec, objects: dict[str, ObjectPlan], catalog: dict[str, FieldInfo]) -> LabelPlan:
    lab = spec.label
    assert lab is not None
    if lab.object not in objects:
        raise SpecError(f"label.object: unknown object {lab.object!r}; {_suggest(lab.object, list(objects))}")
    obj = objects[lab.object]
    fi = resolve_field(lab.field, obj.kind, obj.template, catalog, where="label.field")
    if fi.value_type == "geometric":
        raise SpecError(f"label.field: {fi.name!r} is geometric; a label needs a coded, yes/no, text or number field")
    if not lab.positive:
        raise SpecError("label.positive: list at least one value that makes a patient positive")
    pos = [v for x in lab.positive for v in normalise_value(x, fi, None, where="label.positive")]
    neg = [v for x in lab.negative for v in normalise_value(x, fi, None, where="label.negative")]
    return LabelPlan(lab.object, fi, Cond(fi, "in", tuple(pos)), Cond(fi, "in", tuple(neg)))


def _distribution(d: Any, i: int, spec: CohortSpec, objects: dict[str, ObjectPlan],
                  subsets: dict[str, Expr], catalog: dict[str, FieldInfo]) -> DistributionPlan:
    where = f"distributions[{i}]"
    if d.object not in objects:
        raise SpecError(f"{where}.object: unknown object {d.object!r}; {_suggest(d.object, list(objects))}")
    obj = objects[d.object]
    fi = resolve_field(d.field, obj.kind, obj.template, catalog, where=f"{where}.field")
    subset = d.subset or ALL_SUBSET
    if subset != ALL_SUBSET and subset not in subsets:
        raise SpecError(f"{where}.subset: unknown subset {subset!r}; {_suggest(subset, [ALL_SUBSET, *subsets])}")
    if fi.value_type == "geometric":
        raise SpecError(f"{where}.field: {fi.name!r} is geometric and has no distribution")
    if fi.value_type != "numeric":
        if d.bins is not None or d.unit:
            raise SpecError(f"{where}: {fi.name!r} is {fi.value_type}: it is counted per category, drop "
                            "'bins' and 'unit'")
        return DistributionPlan(d.object, fi, subset, None, "", None)
    if not d.bins or len(d.bins) < 2:
        raise SpecError(f"{where}.bins: numeric field {fi.name!r} needs at least two ascending bin edges "
                        f"(in {d.unit or fi.unit}), e.g. [80, 100, 120, 140]")
    if any(a >= b for a, b in zip(d.bins, d.bins[1:], strict=False)):
        raise SpecError(f"{where}.bins: edges must be strictly ascending, got {d.bins}")
    unit = d.unit or fi.unit or ""
    edges = tuple(units.convert(b, unit, fi.unit, field=fi.name) if d.unit and fi.unit else float(b) for b in d.bins)
    return DistributionPlan(d.object, fi, subset, edges, unit, tuple(float(b) for b in d.bins))
