"""What the dashboard page edits, and how it maps to and from a CohortSpec.

The page shows a cohort as *groups*: one group is one object condition of the spec (one object
kind, optionally one SR template), and all of its filters are predicates that must hold on the same
entity (same-instance semantics). Groups combine with AND at patient level; a negated group means
"the patient has no entity matching it". Whatever a loaded spec holds beyond that (OR terms, objects
used only by subsets or the label, the label, subsets, distributions) is kept as it is and shown
read-only, so loading a spec and saving it again changes nothing that was not touched.

``state_to_spec`` and ``spec_to_state`` are the two directions; ``apply_action`` is every change a
click can make. Both run on the server so that the page and ``cohort query`` cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cohort.errors import SpecError
from cohort.spec.load import parse_spec
from cohort.spec.model import (
    CohortSpec,
    DistributionRequest,
    Kind,
    Label,
    ObjectCondition,
    Op,
    Scalar,
    Within,
)
from cohort.spec.validate import RESERVED_NAMES

BASE_PREFIX = "any_"  # objects of the "every patient" cohort used when no filter is set
RANGE_OPS = (">", ">=", "<", "<=")
_NAME_RE = re.compile(r"[^A-Za-z0-9_]+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filter(_Model):
    """One predicate of a group: ``field op value [unit]``."""

    field: str
    op: Op
    value: Scalar | list[Scalar] | None = None
    unit: str | None = None
    item: str | None = None  # the spec's predicate ``group``: same SR content item / SEG segment


class Group(_Model):
    """One object condition: filters that hold together on one entity of ``kind`` / ``template``."""

    id: str
    kind: Kind
    template: str | None = None
    negated: bool = False
    filters: list[Filter] = []
    within: Within | None = None


class DashboardState(_Model):
    """Everything the page shows and edits; round-trips with CohortSpec."""

    name: str = "dashboard"
    description: str = ""
    groups: list[Group] = []
    objects: dict[str, ObjectCondition] = {}  # objects that are not groups (kept from a loaded spec)
    terms: list[Any] = []  # cohort terms that are not groups, in YAML form (e.g. {any: [ct, ecg]})
    label: Label | None = None
    subsets: dict[str, Any] = {}  # YAML form
    distributions: list[DistributionRequest] = []


class Action(_Model):
    """One change the page asks for; ``type`` says which, the other keys are its arguments."""

    type: Literal["add", "remove", "split", "negate", "negate_group", "remove_group", "merge", "remove_term"]
    kind: Kind | None = None
    template: str | None = None
    filters: list[Filter] = []  # "add": one filter, or two for a range
    group: str | None = None  # the group acted on
    index: int | None = None  # the filter (or term) acted on
    target: str | None = None  # "merge": the group that receives ``group``'s filters
    replace_range: bool = Field(default=True, description="'add': a new range replaces the field's range")


def _names(expr: Any) -> list[str]:
    """Object names in a YAML-form patient expression."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, Mapping):
        out: list[str] = []
        for value in expr.values():
            for e in (value if isinstance(value, list) else [value]):
                out += _names(e)
        return out
    return []


def _group_term(group: Group) -> Any:
    return {"not": group.id} if group.negated else group.id


def _is_base_term(term: Any, objects: Mapping[str, Any]) -> bool:
    """True for the dashboard's own "every patient" union (``any: [any_ct, any_ecg, ...]``)."""
    names = _names(term)
    if not names or not all(n.startswith(BASE_PREFIX) and n in objects for n in names):
        return False
    if isinstance(term, Mapping) and set(term) != {"any"}:
        return False
    return all(not objects[n].get("where") and not objects[n].get("within") for n in names)


def spec_to_state(spec: CohortSpec) -> DashboardState:
    """The page's view of ``spec``: top-level AND terms that name one object become groups."""
    data = spec.to_dict()
    objects: dict[str, dict[str, Any]] = dict(data["objects"])
    cohort = data["cohort"]
    terms = list(cohort["all"]) if isinstance(cohort, Mapping) and set(cohort) == {"all"} else [cohort]
    uses: dict[str, int] = {}
    for name in _names(cohort):
        uses[name] = uses.get(name, 0) + 1
    groups: list[Group] = []
    other_terms: list[Any] = []
    for term in terms:
        negated = isinstance(term, Mapping) and set(term) == {"not"} and isinstance(term["not"], str)
        name = term["not"] if negated else term
        if isinstance(name, str) and uses.get(name) == 1 and name in objects:
            obj = spec.objects[name]
            groups.append(Group(id=name, kind=obj.kind, template=obj.template, negated=negated,
                                within=obj.within,
                                filters=[Filter(field=p.field, op=p.op, value=p.value, unit=p.unit, item=p.group)
                                         for p in obj.where]))
            objects.pop(name)
        elif len(terms) == 1 and _is_base_term(term, objects):  # the "every patient" cohort itself
            for n in _names(term):
                objects.pop(n, None)
        else:
            other_terms.append(term)
    return DashboardState(
        name=spec.name, description=spec.description, groups=groups,
        objects={n: spec.objects[n] for n in objects}, terms=other_terms, label=spec.label,
        subsets=data.get("subsets", {}), distributions=list(spec.distributions))


def base_objects(present: Sequence[tuple[str, str | None]]) -> dict[str, dict[str, Any]]:
    """One bare object per (kind, SR template) in the store: their union is every indexed patient."""
    out: dict[str, dict[str, Any]] = {}
    for kind, template in present:
        name = BASE_PREFIX + (f"{kind.lower()}_{template}" if template else kind.lower())
        out[name] = {"kind": kind, **({"template": template} if template else {})}
    return out


def state_to_spec(state: DashboardState, present: Sequence[tuple[str, str | None]], *,
                  catalog: Mapping[str, Any] | None) -> tuple[CohortSpec, list[str]]:
    """The CohortSpec of ``state`` and notices about parts that had to be dropped.

    Subsets, the label, distributions, time windows and cohort terms that name an object the state no
    longer has are dropped (with a notice) instead of failing: removing a group must always work.
    With no group and no other term the cohort is every patient with an indexed object of a kind in
    ``present`` (the store's (kind, template) pairs). Fields are checked against ``catalog`` (the
    store's, as the dashboard passes it; required); None checks the structure only.

    Raises:
        SpecError: the state is not a valid spec (unknown field, bad value ...), naming the place.
    """
    notices: list[str] = []
    objects: dict[str, dict[str, Any]] = {}
    for group in state.groups:
        if group.id in objects:
            raise SpecError(f"two groups are named {group.id!r}; rename one")
        objects[group.id] = _object_dict(group)
    for name, other in state.objects.items():
        if name in objects:
            raise SpecError(f"object {name!r} is both a group and another object; rename one")
        objects[name] = other.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    for name, raw_obj in objects.items():
        within = raw_obj.get("within")
        if within and within["of"] not in objects:
            notices.append(f"dropped the time window of {name!r}: it referred to the removed object "
                           f"{within['of']!r}")
            raw_obj.pop("within")
    terms = [_group_term(g) for g in state.groups]
    for term in state.terms:
        missing = [n for n in _names(term) if n not in objects]
        if missing:
            notices.append(f"dropped a cohort condition that used the removed object {missing[0]!r}")
        else:
            terms.append(term)
    if not terms:
        base = base_objects(present)
        if not base:
            raise SpecError("the store has no indexed objects; run 'cohort ingest RAW_DIR --store STORE' first")
        objects.update(base)
        names = list(base)
        terms = [names[0] if len(names) == 1 else {"any": names}]
    raw: dict[str, Any] = {
        "name": state.name or "dashboard", "objects": objects,
        "cohort": terms[0] if len(terms) == 1 else {"all": terms},
    }
    if state.description:
        raw["description"] = state.description
    if state.label is not None:
        if state.label.object in objects:
            raw["label"] = state.label.model_dump(mode="json")
        else:
            notices.append(f"dropped the label: it read the removed object {state.label.object!r}")
    subsets = {}
    for sname, expr in state.subsets.items():
        missing = [n for n in _names(expr) if n not in objects]
        if missing:
            notices.append(f"dropped subset {sname!r}: it used the removed object {missing[0]!r}")
        else:
            subsets[sname] = expr
    if subsets:
        raw["subsets"] = subsets
    dists = []
    for d in state.distributions:
        if d.object not in objects or (d.subset is not None and d.subset not in (*subsets, "CT", "ECG", "CT+ECG")):
            notices.append(f"dropped the distribution of {d.object}.{d.field}: its object or subset was removed")
        else:
            dists.append(d.model_dump(mode="json", exclude_none=True))
    if dists:
        raw["distributions"] = dists
    return parse_spec(raw, catalog=catalog), notices


def _object_dict(group: Group) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": group.kind}
    if group.template:
        obj["template"] = group.template
    where = []
    for f in group.filters:
        pred: dict[str, Any] = {"field": f.field, "op": f.op}
        if f.op != "exists":
            pred["value"] = f.value
        if f.unit:
            pred["unit"] = f.unit
        if f.item:
            pred["group"] = f.item
        where.append(pred)
    if where:
        obj["where"] = where
    if group.within is not None:
        obj["within"] = group.within.model_dump(mode="json", exclude_none=True)
    return obj


# --- changes ----------------------------------------------------------------------------------------

def new_group_id(state: DashboardState, kind: str, template: str | None) -> str:
    """A fresh object name for a group of ``kind`` / ``template`` (``ecg``, ``registry``, ``ct_2`` ...)."""
    stem = _NAME_RE.sub("_", template or kind.lower()).strip("_") or "object"
    if stem[0].isdigit() or stem in RESERVED_NAMES or stem.startswith(BASE_PREFIX):
        stem = f"obj_{stem}"
    taken = {g.id for g in state.groups} | set(state.objects)
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    return name


def _find(state: DashboardState, group_id: str | None) -> Group:
    for g in state.groups:
        if g.id == group_id:
            return g
    raise SpecError(f"no group named {group_id!r}; groups: {', '.join(g.id for g in state.groups) or 'none'}")


def _filter_at(group: Group, index: int | None) -> int:
    if index is None or not 0 <= index < len(group.filters):
        raise SpecError(f"group {group.id!r} has no filter number {index}; it has {len(group.filters)}")
    return index


def apply_action(state: DashboardState, action: Action) -> DashboardState:
    """A copy of ``state`` with ``action`` applied.

    * ``add``: filters go into the first non-negated group of the same kind and template (so that
      clicked conditions hold on the same instance), or into a new group; a new range on a field
      that already has one in that group replaces it (brushing again refines, it does not stack).
      Without filters it only makes sure such a group exists ("has an object of this kind").
    * ``split``: the filter moves into a new group of its own (then it may hold on another entity).
    * ``negate``: a filter alone in its group negates the group; otherwise it is split off first and
      its new group negated ("the patient has no such entity").
    * ``merge``: ``group``'s filters move into ``target`` (same kind and template).
    * ``remove``, ``remove_group``, ``negate_group``, ``remove_term``: as named.
    """
    new = state.model_copy(deep=True)
    t = action.type
    if t == "add":
        if action.kind is None:
            raise SpecError("'add' needs the object kind (and filters; none adds 'has an object of that kind')")
        group = next((g for g in new.groups if g.kind == action.kind and g.template == action.template
                      and not g.negated), None)
        if group is None:
            group = Group(id=new_group_id(new, action.kind, action.template), kind=action.kind,
                          template=action.template)
            new.groups.append(group)
        incoming = list(action.filters)
        if action.replace_range and any(f.op in RANGE_OPS for f in incoming):
            ranged = {f.field for f in incoming if f.op in RANGE_OPS}
            group.filters = [f for f in group.filters if not (f.field in ranged and f.op in RANGE_OPS)]
        for f in incoming:
            if f not in group.filters:
                group.filters.append(f)
    elif t == "remove":
        group = _find(new, action.group)
        group.filters.pop(_filter_at(group, action.index))
    elif t == "remove_group":
        group = _find(new, action.group)
        new.groups.remove(group)
    elif t == "negate_group":
        group = _find(new, action.group)
        group.negated = not group.negated
    elif t in ("split", "negate"):
        group = _find(new, action.group)
        i = _filter_at(group, action.index)
        if t == "negate" and len(group.filters) == 1:
            group.negated = not group.negated
        elif len(group.filters) > 1:
            moved = group.filters.pop(i)
            part = Group(id=new_group_id(new, group.kind, group.template), kind=group.kind,
                         template=group.template, filters=[moved], negated=(t == "negate") != group.negated)
            new.groups.insert(new.groups.index(group) + 1, part)
    elif t == "merge":
        group, target = _find(new, action.group), _find(new, action.target)
        if (group.kind, group.template) != (target.kind, target.template) or group is target:
            raise SpecError(f"group {group.id!r} ({group.kind} {group.template or ''}) cannot merge into "
                            f"{target.id!r} ({target.kind} {target.template or ''}): pick a group of the same kind")
        if group.negated != target.negated:
            raise SpecError(f"groups {group.id!r} and {target.id!r} differ in negation; negate one first")
        target.filters += [f for f in group.filters if f not in target.filters]
        new.groups.remove(group)
    elif t == "remove_term":
        if action.index is None or not 0 <= action.index < len(new.terms):
            raise SpecError(f"there is no cohort condition number {action.index}")
        new.terms.pop(action.index)
    return new
