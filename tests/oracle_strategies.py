"""Hypothesis strategies for cohort specs.

``random_spec_strategy(catalog)`` draws *valid* specs over the fields of a catalog (for comparing the
oracle with an index backend on a synthesized store); ``spec_shapes()`` draws any spec the model
accepts, odd names and values included (for the YAML and text round trips).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from hypothesis import strategies as st

from cohort.spec.model import (
    And,
    CohortSpec,
    DistributionRequest,
    Expr,
    Label,
    Not,
    ObjectCondition,
    Or,
    Predicate,
    Within,
)
from cohort.spec.privacy import IDENTIFYING_FIELDS
from cohort.spec.validate import FieldFacts, fields_for, load_catalog, validate_spec

# Plausible ranges per unit, so random thresholds sometimes split a synthetic store.
_RANGES: dict[str, tuple[float, float]] = {
    "ms": (40, 600), "s": (0, 20), "mm": (0, 40), "deg": (-90, 180), "/min": (30, 150), "a": (50, 95),
    "cm": (140, 200), "kg": (40, 130), "%": (10, 80), "d": (0, 60), "kV": (70, 140), "Hz": (200, 1000),
    "1": (0, 1), "{count}": (0, 100), "mm3": (0, 2000),
}
_OPS = {"number": ("=", "!=", "<", "<=", ">", ">=", "in", "exists"),
        "date": ("<", "<=", ">", ">=", "exists"),
        "code": ("=", "!=", "in", "exists"), "text": ("=", "!=", "in", "contains", "exists"),
        "bool": ("=", "!=", "exists"), "point": ("exists",)}
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


def _number(facts: FieldFacts, samples: Sequence[Any]) -> st.SearchStrategy[Any]:
    nums = [s for s in samples if isinstance(s, int | float) and not isinstance(s, bool)]
    if nums:
        return st.sampled_from(nums)
    lo, hi = _RANGES.get(facts.unit or "", (0, 200))
    return st.integers(int(lo), int(hi))


def _value(facts: FieldFacts, samples: Sequence[Any]) -> st.SearchStrategy[Any]:
    t = facts.value_type
    if t == "number":
        return _number(facts, samples)
    if t == "bool":
        return st.booleans()
    if t == "date":
        days = st.integers(0, 7 * 365).map(lambda d: (date(2018, 1, 1) + timedelta(days=d)).isoformat())
        return st.sampled_from([str(s) for s in samples]) if samples else days
    words = [str(s) for s in samples] or list(facts.aliases) or ["none", "x"]
    return st.sampled_from(words)


@st.composite
def _predicate(draw: st.DrawFn, facts: FieldFacts, samples: Sequence[Any], group: str | None) -> Predicate:
    op = draw(st.sampled_from(facts.operators and [o for o in _OPS[facts.value_type] if o in facts.operators]
                              or _OPS[facts.value_type]))
    if op == "exists":  # none / true: has a value; false: has none (checked on the whole entity)
        return Predicate(field=facts.name, op="exists", value=draw(st.sampled_from([None, True, False])),
                         group=group)
    if op == "in":
        values = draw(st.lists(_value(facts, samples), min_size=1, max_size=3, unique=True))
        return Predicate(field=facts.name, op="in", value=values, group=group)
    value = draw(_value(facts, samples))
    if op == "contains":
        value = str(value)[: draw(st.integers(1, max(1, len(str(value)))))]
    return Predicate(field=facts.name, op=op, value=value, group=group)  # type: ignore[arg-type]


def _expr(names: list[str]) -> st.SearchStrategy[Expr]:
    leaf = st.sampled_from(names)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(all=xs)),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(any=xs)),
        inner.map(lambda x: Not(not_=x)),
    ), max_leaves=4)


@st.composite
def random_spec_strategy(draw: st.DrawFn, catalog: Mapping[str, Any], samples: Mapping[str, Sequence[Any]] | None = None,
                         max_objects: int = 3) -> CohortSpec:
    """Valid random specs over ``catalog`` (field name -> FieldInfo), values drawn from ``samples``.

    Args:
        catalog: the index's field catalog (or any mapping ``facts_of`` reads).
        samples: field name -> values seen in the store; predicates then often hit real values.
        max_objects: most object conditions per spec.
    """
    facts = load_catalog(catalog) or {}
    samples = samples or {}
    usable = {n: f for n, f in facts.items() if n not in IDENTIFYING_FIELDS and f.value_type in _OPS}
    kinds = sorted({k for f in usable.values() for k in f.kinds})
    templates = sorted({t for f in usable.values() for t in f.templates})
    n_objects = draw(st.integers(1, max_objects))
    objects: dict[str, ObjectCondition] = {}
    available: dict[str, list[FieldFacts]] = {}
    for i in range(n_objects):
        name = f"o{i}"
        kind = draw(st.sampled_from(kinds))
        template = draw(st.sampled_from(templates)) if kind == "SR" and templates else None
        fields = [usable[n] for n in fields_for(usable, kind, template)]
        available[name] = fields
        where: list[Predicate] = []
        for _ in range(draw(st.integers(0, 3)) if fields else 0):
            f = draw(st.sampled_from(fields))
            group = draw(st.sampled_from([None, "a", "b"])) if kind in ("SR", "SEG") else None
            where.append(draw(_predicate(f, samples.get(f.name, ()), group)))
        within = None
        if i > 0 and draw(st.booleans()):
            of = draw(st.sampled_from([f"o{j}" for j in range(i)]))
            lo = draw(st.one_of(st.none(), st.integers(-400, 0)))
            hi = draw(st.one_of(st.none(), st.integers(0, 400)))
            own = [f.name for f in fields if f.value_type == "date"]
            other = [f.name for f in available[of] if f.value_type == "date"]
            within = Within(of=of, min_days=lo, max_days=hi,
                            date_field=draw(st.sampled_from([None, *other])),
                            own_date_field=draw(st.sampled_from([None, *own])))
        objects[name] = ObjectCondition(kind=kind, template=template, where=where, within=within)  # type: ignore[arg-type]
    names = list(objects)
    label = None
    label_fields = [(o, f) for o in names for f in available[o] if f.value_type in ("bool", "code")]
    if label_fields and draw(st.booleans()):
        o, f = draw(st.sampled_from(label_fields))
        if f.value_type == "bool":
            label = Label(object=o, field=f.name, positive=[True], negative=[False])
        else:
            values = _value(f, samples.get(f.name, ()))
            pos = draw(values)  # the store may hold a single value of the field: "other" stands in
            neg = draw(st.one_of(values, st.just("other")).filter(lambda v: v != pos))
            label = Label(object=o, field=f.name, positive=[pos], negative=[neg])
    subsets = draw(st.dictionaries(st.sampled_from(["s1", "s2", "CT"]), _expr(names), max_size=2))
    dists: list[DistributionRequest] = []
    dist_fields = [(o, f) for o in names for f in available[o] if f.value_type in ("number", "code", "bool")]
    for _ in range(draw(st.integers(0, 2)) if dist_fields else 0):
        o, f = draw(st.sampled_from(dist_fields))
        subset = draw(st.sampled_from([None, "CT+ECG", *subsets]))
        bins = None
        if f.value_type == "number":
            lo, hi = _RANGES.get(f.unit or "", (0, 200))
            edges = draw(st.lists(st.integers(int(lo), int(hi)), min_size=2, max_size=5, unique=True))
            bins = [float(b) for b in sorted(edges)]
        dists.append(DistributionRequest(object=o, field=f.name, subset=subset, bins=bins))
    spec = CohortSpec(objects=objects, cohort=draw(_expr(names)), label=label, subsets=subsets,
                      distributions=dists)
    return validate_spec(spec, catalog)


# --- any shape (round trips) ------------------------------------------------------------------------
_ODD_NAMES = st.one_of(NAMES, st.sampled_from(["and", "in", "not", "cohort", "yes", "a.b", "x-y", "g1", "g2",
                                               "with space", "Ünïcode"]))
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_SCALAR = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    _TEXT, st.sampled_from(["yes", "no", "true", "LBBB", "self-expanding", "2020-01-01", "12"]))
_NUMBER = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
_UNITS = st.sampled_from(["ms", "mm", "%", "{beats}/min", "[hnsf'U]", "mm3", "in"])


@st.composite
def _any_predicate(draw: st.DrawFn) -> Predicate:
    field = draw(_ODD_NAMES)
    group = draw(st.sampled_from([None, None, "g1", "g2", "lv", "with space"]))
    op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "in", "contains", "exists"]))
    if op == "exists":
        return Predicate(field=field, op="exists", value=draw(st.sampled_from([None, True, False])), group=group)
    numeric = draw(st.booleans())
    if op == "in":
        value: Any = draw(st.lists(_NUMBER if numeric else _SCALAR, min_size=1, max_size=3))
    else:
        value = draw(_NUMBER if numeric else _SCALAR)
    unit = draw(st.one_of(st.none(), _UNITS)) if numeric and op != "contains" else None
    return Predicate(field=field, op=op, value=value, unit=unit, group=group)


@st.composite
def spec_shapes(draw: st.DrawFn) -> CohortSpec:
    """Any spec the model accepts and the text syntax can write (not necessarily valid)."""
    names = draw(st.lists(_ODD_NAMES, min_size=1, max_size=4, unique=True))
    objects = {}
    for name in names:
        within = None
        if draw(st.booleans()):
            within = Within(of=draw(st.sampled_from(names)), min_days=draw(st.one_of(st.none(), st.integers(-500, 500))),
                            max_days=draw(st.one_of(st.none(), st.integers(-500, 500))),
                            date_field=draw(st.one_of(st.none(), _ODD_NAMES)),
                            own_date_field=draw(st.one_of(st.none(), _ODD_NAMES)))
        kind = draw(st.sampled_from(["CT", "MR", "CR", "DX", "ECG", "SR", "SEG"]))
        objects[name] = ObjectCondition(kind=kind, template=draw(st.one_of(st.none(), _ODD_NAMES)),
                                        where=draw(st.lists(_any_predicate(), max_size=4)), within=within)
    expr = st.recursive(st.sampled_from(names), lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: And(all=xs)),
        st.lists(inner, max_size=3).map(lambda xs: Or(any=xs)),
        inner.map(lambda x: Not(not_=x))), max_leaves=6)
    label = draw(st.one_of(st.none(), st.builds(
        Label, object=st.sampled_from(names), field=_ODD_NAMES, positive=st.lists(_SCALAR, max_size=2),
        negative=st.lists(_SCALAR, max_size=2))))
    dists = draw(st.lists(st.builds(
        DistributionRequest, object=st.sampled_from(names), field=_ODD_NAMES,
        subset=st.one_of(st.none(), _TEXT), bins=st.one_of(st.none(), st.lists(_NUMBER, min_size=1, max_size=4)),
        unit=st.one_of(st.none(), _UNITS)), max_size=2))
    return CohortSpec(name=draw(st.one_of(st.just("cohort"), _TEXT)), description=draw(_TEXT), objects=objects,
                      cohort=draw(expr), label=label, subsets=draw(st.dictionaries(_TEXT, expr, max_size=2)),
                      distributions=dists)
