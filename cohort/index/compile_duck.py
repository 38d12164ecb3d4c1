"""Compile a CohortSpec to DuckDB SQL and evaluate it: exact counts of distinct patients.

The query is a chain of named relations over integer patient keys (``pid``). ``evaluate`` runs it as
one statement (CTEs, one result table); ``materialized`` runs it step by step into temporary tables
that export and the dashboard read, with ``patient_id`` added to the relations they get.

* ``base_<i>``  (pid, entity_id) of object *i*: the rows of its most selective predicate's field
  (``items`` / ``attributes`` / ``segments`` carry ``pid`` and the entity's kind / template, so no
  join to ``entities`` is needed), semi-joined on ``entity_id`` with the rows of its other
  predicates (anti-joined for ``exists: false``) and with one ``GROUP BY entity_id, group_key`` per
  predicate group: all predicates hold on the same entity, grouped ones on the same item. Rows may
  repeat an entity (a field with several values); everything downstream is insensitive to that.
* ``m_<i>``     matched entities (pid, entity_id[, d]): ``base_<i>``, after the time window relative
  to another object's matched entities of the same patient (``d``: the event date);
* ``p_<i>``     patients with a matched entity; ``cohort`` (pid, kinds) and the subsets are boolean
  expressions over these, ``kinds`` (from ``patients``) answering the kind names (``CT``, ``ECG``);
* ``lab``       the label per cohort patient: 2 positive, 1 negative. A patient whose values include
  both a positive and a negative value is positive (positive wins: a pacemaker documented anywhere
  counts), one with neither is unknown.

Sideways restriction. When the cohort is a conjunction, the objects named in it are evaluated one
after the other, most selective first (a heuristic on the predicates; see ``_selectivity``), each
restricted to the patients of the ones before (``pid IN ...``); every other object is restricted to
the patients of all of them. That is exact: the cohort is a subset of those patients, and every
relation is exact for the patients it is restricted to; everything reported (subsets, label,
distributions, matched entities) is read only for cohort patients. Big intermediate sets (an object
most patients have) then never meet in a join; at a million patients this is the difference
between seconds and tens of milliseconds.

Distributions count distinct patients per bin: a patient with values in two bins counts in both.
Histogram bins are ``[edges[i], edges[i+1])`` labelled ``"low-high"``; values outside the edges are
not counted. Categories are the values present: a coded value's first alias, else its meaning;
``true`` / ``false`` for yes/no fields; the text for text fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb

from cohort.errors import CohortError
from cohort.index.catalog import FieldInfo
from cohort.index.duck import DuckIndex, missing_derived
from cohort.index.plan import (
    STANDARD_SUBSETS,
    CodeMatch,
    Cond,
    CondGroup,
    DistributionPlan,
    ObjectPlan,
    Plan,
    build_plan,
)
from cohort.index.schema import IMAGE_KINDS, KIND_BITS
from cohort.results import ALL_SUBSET, Bin, CellKey, CohortCounts, Distribution, SubsetCounts
from cohort.spec.model import And, CohortSpec, Expr, Not, Or

_SEGMENT_CODED = {"segment_category": "category", "segment_type": "type", "anatomic_region": "anatomic_region"}
_SEGMENT_TEXT = {"segment_label": "label", "algorithm_type": "algorithm_type", "algorithm_name": "algorithm_name"}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
POSITIVE, NEGATIVE = 2, 1


def lit(value: object) -> str:
    """A SQL literal (strings quoted with doubled quotes: values come from user specs)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(float(value))
    return "'" + str(value).replace("'", "''") + "'"


def _select(source: str, *, grp: str = "NULL", num: str = "NULL", text: str = "NULL", code: str = "NULL",
            scheme: str = "NULL", meaning: str = "NULL", date: str = "NULL", where: list[str]) -> str:
    return (f"SELECT entity_id, pid, CAST({grp} AS VARCHAR) AS grp, CAST({num} AS DOUBLE) AS num, "
            f"CAST({text} AS VARCHAR) AS text, CAST({code} AS VARCHAR) AS code_value, "
            f"CAST({scheme} AS VARCHAR) AS code_scheme, CAST({meaning} AS VARCHAR) AS code_meaning, "
            f"CAST({date} AS DATE) AS date FROM {source}" + (f" WHERE {' AND '.join(where)}" if where else ""))


def rows_sql(fi: FieldInfo, kind: str | None = None, template: str | None = None) -> str:
    """A SELECT giving every value of field ``fi`` as (entity_id, pid, grp, num, text, code_*, date),
    only of entities of ``kind`` / SR ``template`` when given (filtered on the rows' own columns)."""
    if fi.source == "item":
        where = [f"field = {lit(fi.name)}"]
        if kind is not None and kind != "SR":
            where.append("FALSE")  # SR content belongs to SR documents only
        if template is not None:
            where.append(f"template = {lit(template)}")
        return _select("items", grp="group_key", num="num", text="text", code="code_value",
                       scheme="code_scheme", meaning="code_meaning", date="date", where=where)
    if fi.source == "attribute":
        where = [f"name = {lit(fi.name)}"] + ([f"kind = {lit(kind)}"] if kind is not None else [])
        if template is not None:
            # Attribute rows carry the entity's kind but not its SR template: few SR attributes exist,
            # so a semi-join on the template's entities is cheap.
            where.append(f"entity_id IN (SELECT entity_id FROM entities WHERE template = {lit(template)})")
        return _select("attributes", num="num", text="text", where=where)
    if fi.source == "segment":
        grp = "segment_number"
        extra = ["FALSE"] if kind is not None and kind != "SEG" else []
        if fi.name in _SEGMENT_CODED:
            c = _SEGMENT_CODED[fi.name]
            code, scheme, meaning = (f"{c}_code", f"{c}_scheme", f"{c}_meaning") if c != "anatomic_region" \
                else ("anatomic_region", "anatomic_region_scheme", "anatomic_region_meaning")
            return _select("segments", grp=grp, code=code, scheme=scheme, meaning=meaning,
                           where=[f"{code} IS NOT NULL", *extra])
        if fi.name in _SEGMENT_TEXT:
            col = _SEGMENT_TEXT[fi.name]
            return _select("segments", grp=grp, text=col, where=[f"{col} IS NOT NULL", *extra])
        return _select("segments", grp=grp, num="segment_number", where=extra)
    where = [f"kind = {lit(kind)}"] if kind is not None else []
    if template is not None:
        where.append(f"template = {lit(template)}")
    if fi.name == "date":
        return _select("entities", date="entity_date", where=[*where, "entity_date IS NOT NULL"])
    if fi.name == "n_instances":
        return _select("entities", num="n_instances", where=where)
    return _select("entities", text=fi.name, where=[*where, f"{fi.name} IS NOT NULL"])


def values_sql(fi: FieldInfo) -> str:
    """A SELECT giving every value of field ``fi`` as (entity_id, grp, num, text, code_*, date)."""
    return (f"SELECT entity_id, grp, num, text, code_value, code_scheme, code_meaning, date "
            f"FROM ({rows_sql(fi)})")


def _code_eq(m: CodeMatch) -> str:
    if m.scheme is not None:
        return f"(v.code_value = {lit(m.value)} AND v.code_scheme = {lit(m.scheme)})"
    return f"(v.code_value = {lit(m.value)} OR lower(v.code_meaning) = {lit(m.value.lower())})"


def cond_sql(c: Cond) -> str:
    """The condition ``c`` on one row ``v`` of its field's values."""
    vt, op = c.field.value_type, c.op
    if op == "exists":
        return "TRUE"
    if vt == "coded":
        if op == "contains":
            return f"contains(lower(v.code_meaning), {lit(str(c.values[0].value).lower())})"
        eqs = " OR ".join(_code_eq(m) for m in c.values)
        return f"(v.code_value IS NOT NULL AND NOT ({eqs}))" if op == "!=" else f"({eqs})"
    if vt in ("numeric", "boolean"):
        col, vals = "v.num", [lit(v) for v in c.values]
    elif vt == "date":
        col, vals = "v.date", [f"DATE {lit(v)}" for v in c.values]
    else:
        col, vals = "v.text", [lit(v) for v in c.values]
    if op == "in":
        return f"{col} IN ({', '.join(vals)})"
    if op == "contains":
        return f"contains(lower({col}), {lit(str(c.values[0]).lower())})"
    return f"{col} {_OPS[op]} {vals[0]}"


def event_dates_sql(matched: str, obj: ObjectPlan, date_field: FieldInfo | None) -> str:
    """(pid, d): the event dates of the matched entities of ``obj`` in relation ``matched``, as a
    window relative to ``obj`` sees them: values of ``date_field``, or (None) the relation's ``d``."""
    if date_field is None:
        return f"(SELECT pid, d FROM {matched})"
    return (f"(SELECT m.pid, v.date AS d FROM {matched} m JOIN "
            f"({rows_sql(date_field, obj.kind, obj.template)}) v ON v.entity_id = m.entity_id "
            f"WHERE v.date IS NOT NULL)")


def _cond_selectivity(c: Cond) -> float:
    """A rough share of entities a predicate keeps: only used to order evaluation, never for results."""
    if c.op == "exists":
        return 0.9 if c.present else 0.3
    if c.op in ("=", "in"):
        return 0.5 if c.field.value_type == "boolean" else min(0.5, 0.1 * len(c.values))
    if c.op == "contains":
        return 0.2
    if c.op == "!=":
        return 0.9
    return 0.4  # < <= > >=


def _selectivity(obj: ObjectPlan) -> float:
    s = 1.0
    for c in (*obj.conds, *(c for g in obj.groups for c in g.conds)):
        s *= _cond_selectivity(c)
    return s * (0.5 if obj.within else 1.0)


@dataclass(frozen=True)
class CompiledQuery:
    """Named SELECTs in dependency order, and which relation holds what.

    With ``patient_ids`` (the default) the relations named here carry ``patient_id`` besides ``pid``:
    ``objects`` (pid, entity_id, d, patient_id), one row per matched entity (and event date);
    ``subsets`` and ``cohort`` (pid, patient_id); ``label`` (pid, v, patient_id).
    """

    steps: tuple[tuple[str, str], ...]
    objects: dict[str, str]  # object name -> relation of its matched entities
    subsets: dict[str, str]  # subset name -> relation of its patients; ALL_SUBSET is the cohort
    label: str | None  # relation (pid, v[, patient_id])
    cohort: str
    plan: Plan
    final: str = ""  # ``evaluate``'s last SELECT (counts and distributions, see ``_final_sql``)

    def sql(self, final: str | None = None) -> str:
        """The whole query as one WITH statement (for reading and debugging)."""
        ctes = ",\n".join(f"{name} AS (\n  {body}\n)" for name, body in self.steps)
        return f"WITH {ctes}\n{final or self.final or f'SELECT count(*) FROM {self.cohort}'}"


@dataclass
class _Builder:
    plan: Plan
    p: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    base: dict[str, str] = field(default_factory=dict)
    matched: dict[str, str] = field(default_factory=dict)
    dated: set[str] = field(default_factory=set)  # objects whose matched relation has ``d``
    patients: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, body: str) -> str:
        rel = f"{self.p}{name}"
        self.steps.append((rel, body))
        return rel

    def index_of(self, name: str) -> int:
        return list(self.plan.objects).index(name)

    def needs_date(self, name: str) -> bool:
        obj = self.plan.objects[name]
        if obj.within is not None and obj.within.own_date is None:
            return True
        return any(o.within is not None and o.within.of == name and o.within.of_date is None
                   for o in self.plan.objects.values())

    def emit_base(self, name: str, restrict: str | None) -> str:
        obj = self.plan.objects[name]
        i = self.index_of(name)
        positive = [c for c in obj.conds if not (c.op == "exists" and not c.present)]
        absent = [c for c in obj.conds if c.op == "exists" and not c.present]
        # The driver: the most selective positive predicate, SR / attribute / segment rows first.
        driver = min(positive, key=lambda c: (_cond_selectivity(c), c.field.source == "entity"), default=None)
        if driver is not None:
            src = f"({rows_sql(driver.field, obj.kind, obj.template)}) v"
            where = [cond_sql(driver)]
        else:
            where = [f"kind = {lit(obj.kind)}"] + ([f"template = {lit(obj.template)}"] if obj.template else [])
            src = "entities v"
        if restrict is not None:
            where.append(f"v.pid IN (SELECT pid FROM {restrict})")
        for c in positive:
            if c is not driver:
                where.append(f"v.entity_id IN (SELECT v.entity_id FROM ({rows_sql(c.field, obj.kind, obj.template)}) v "
                             f"WHERE {cond_sql(c)})")
        for c in absent:
            where.append(f"v.entity_id NOT IN (SELECT entity_id FROM ({rows_sql(c.field, obj.kind, obj.template)}))")
        where += [self._group_filter(obj, g) for g in obj.groups]
        body = f"SELECT v.pid, v.entity_id FROM {src} WHERE " + "\n    AND ".join(where)
        if self.needs_date(name) and (obj.within is None or obj.within.own_date is None):
            body = (f"SELECT b.pid, b.entity_id, e.entity_date AS d FROM ({body}) b JOIN entities e "
                    f"ON e.entity_id = b.entity_id WHERE e.kind = {lit(obj.kind)}")
        rel = self.add(f"base_{i}", body)
        self.base[name] = rel
        return rel

    @staticmethod
    def _group_filter(obj: ObjectPlan, g: CondGroup) -> str:
        union = " UNION ALL ".join(f"SELECT {k} AS k, * FROM ({rows_sql(c.field, obj.kind, obj.template)})"
                                   for k, c in enumerate(g.conds))
        # Groups hold positive conditions only: the plan checks "exists: false" on the entity.
        having = [f"bool_or(v.k = {k} AND {cond_sql(c)})" for k, c in enumerate(g.conds)]
        return (f"v.entity_id IN (SELECT v.entity_id FROM ({union}) v GROUP BY v.entity_id, v.grp "
                f"HAVING {' AND '.join(having)})")

    def emit_matched(self, name: str) -> str:
        obj = self.plan.objects[name]
        i = self.index_of(name)
        base = self.base[name]
        w = obj.within
        if w is None:
            self.matched[name] = base
            if self.needs_date(name):
                self.dated.add(name)
        else:
            own = base
            if w.own_date is not None:
                own = (f"(SELECT b.pid, b.entity_id, v.date AS d FROM {base} b JOIN "
                       f"({rows_sql(w.own_date, obj.kind, obj.template)}) v ON v.entity_id = b.entity_id "
                       f"WHERE v.date IS NOT NULL)")
            ev = event_dates_sql(self.matched[w.of], self.plan.objects[w.of], w.of_date)
            window = ["b.pid = a.pid", "b.d IS NOT NULL"]
            if w.min_days is not None:
                window.append(f"date_diff('day', b.d, a.d) >= {int(w.min_days)}")
            if w.max_days is not None:
                window.append(f"date_diff('day', b.d, a.d) <= {int(w.max_days)}")
            self.matched[name] = self.add(
                f"m_{i}", f"SELECT a.pid, a.entity_id, a.d FROM {own} a WHERE a.d IS NOT NULL "
                          f"AND EXISTS (SELECT 1 FROM {ev} b WHERE {' AND '.join(window)})")
            self.dated.add(name)
        return self.matched[name]

    def patients_of(self, name: str) -> str:
        if name not in self.patients:
            i = self.index_of(name)
            self.patients[name] = self.add(f"p_{i}", f"SELECT DISTINCT pid FROM {self.matched[name]}")
        return self.patients[name]

    def pred(self, expr: Expr, pid: str, kinds: str) -> str:
        """``expr`` as a condition on one patient (columns ``pid`` and ``kinds``)."""
        if isinstance(expr, str):
            if expr in self.plan.objects:
                return f"{pid} IN (SELECT pid FROM {self.patients_of(expr)})"
            if expr in KIND_BITS:
                return f"({kinds} & {KIND_BITS[expr]}) <> 0"
            return self.pred(STANDARD_SUBSETS[expr], pid, kinds)
        if isinstance(expr, And):
            return "(" + " AND ".join(self.pred(e, pid, kinds) for e in expr.all) + ")"
        if isinstance(expr, Or):
            return "(" + " OR ".join(self.pred(e, pid, kinds) for e in expr.any) + ")"
        assert isinstance(expr, Not)
        return f"(NOT {self.pred(expr.not_, pid, kinds)})"


def compile_spec(spec: CohortSpec, index: DuckIndex | None = None, *, prefix: str = "",
                 patient_ids: bool = True, cell_members: bool = False) -> CompiledQuery:
    """Resolve ``spec`` against the index's catalog and compile it to named SELECTs.

    Relation names start with ``prefix``, so several evaluations can share one connection. Without
    ``patient_ids`` the relations carry ``pid`` only (what ``evaluate`` needs). With ``cell_members``
    the final SELECT lists each cell's patient ids instead of counting them (``evaluate_members``).
    """
    plan = build_plan(spec, index.catalog if index is not None else None)
    b = _Builder(plan, prefix)
    terms = plan.cohort.all if isinstance(plan.cohort, And) else [plan.cohort]
    chained = [t for t in terms if isinstance(t, str) and t in plan.objects]
    names = list(plan.objects)
    chain: str | None = None
    # Objects the cohort requires, most selective first, each restricted to the patients before.
    for name in sorted(dict.fromkeys(chained), key=lambda n: (_selectivity(plan.objects[n]), names.index(n))):
        chain = b.emit_base(name, chain)
    for name in plan.objects:  # dependency order: window targets first
        if name not in b.base:
            b.emit_base(name, chain)
        b.emit_matched(name)
    # The cohort: (pid, kinds) of the patients the whole expression holds for.
    implied = {n for n in chained if plan.objects[n].within is None}
    rest = [t for t in terms if not (isinstance(t, str) and t in implied)]
    cond = " AND ".join(b.pred(t, "pt.pid", "pt.kinds") for t in rest) or "TRUE"
    if chain is not None:
        cohort_body = (f"SELECT pt.pid, pt.kinds FROM patients pt WHERE pt.pid IN (SELECT pid FROM {chain}) "
                       f"AND {cond}")
    else:
        cohort_body = f"SELECT pt.pid, pt.kinds FROM patients pt WHERE {cond}"
    cohort = b.add("cohort", cohort_body)
    subset_preds = {name: b.pred(expr, "c.pid", "c.kinds") for name, expr in plan.subsets.items()}
    label_rel = None
    if plan.label is not None:
        lab = plan.label
        obj = plan.objects[lab.object]
        pos = cond_sql(lab.positive) if lab.positive.values else "FALSE"
        neg = cond_sql(lab.negative) if lab.negative.values else "FALSE"
        label_rel = b.add("lab", f"SELECT v.pid, max(CASE WHEN {pos} THEN {POSITIVE} WHEN {neg} THEN {NEGATIVE} "
                                 f"ELSE 0 END) AS v FROM ({rows_sql(lab.field, obj.kind, obj.template)}) v "
                                 f"WHERE v.entity_id IN (SELECT entity_id FROM {b.matched[lab.object]}) "
                                 f"AND v.pid IN (SELECT pid FROM {cohort}) GROUP BY v.pid")
    subset_rels: dict[str, str] = {}
    wanted = {d.subset for d in plan.distributions} | ({*plan.subsets} if patient_ids else set())
    for j, name in enumerate(plan.subsets):
        if name in wanted:
            subset_rels[name] = b.add(f"subset_{j}", f"SELECT c.pid FROM {cohort} c WHERE {subset_preds[name]}")
    subset_rels[ALL_SUBSET] = cohort
    objects = dict(b.matched)
    final = _final_sql(b, cohort, label_rel, subset_preds, subset_rels, cell_members)
    if patient_ids:  # the relations export and the dashboard read, with the patients' ids
        for name, rel in b.matched.items():
            d = "m.d" if name in b.dated else "e.entity_date"
            objects[name] = b.add(f"x_m_{b.index_of(name)}",
                                  f"SELECT DISTINCT m.pid, m.entity_id, {d} AS d, e.patient_id FROM {rel} m "
                                  f"JOIN entities e ON e.entity_id = m.entity_id")
        for name, rel in list(subset_rels.items()):
            subset_rels[name] = b.add(f"x_{rel[len(prefix):]}", f"SELECT s.pid, pt.patient_id FROM {rel} s "
                                                                 f"JOIN patients pt ON pt.pid = s.pid")
        cohort = subset_rels[ALL_SUBSET]
        if label_rel is not None:
            label_rel = b.add("x_lab", f"SELECT l.pid, l.v, pt.patient_id FROM {label_rel} l "
                                       f"JOIN patients pt ON pt.pid = l.pid")
    return CompiledQuery(tuple(b.steps), objects, subset_rels, label_rel, cohort, plan, final)


def _final_sql(b: _Builder, cohort: str, label: str | None, preds: dict[str, str],
               subset_rels: dict[str, str], cell_members: bool = False) -> str:
    """One SELECT of (part, idx, key, n): part 0 the counts of subset ``idx`` (0: the cohort, then
    ``plan.subsets`` in order; ``n`` holds total, positive, negative per subset), part 1 the rows of
    distribution ``idx`` (``key``: bin number or category). With ``cell_members`` every count is the
    list of the cell's patient ids instead."""
    v = "l.v" if label else "NULL::INTEGER"
    join = f" LEFT JOIN {label} l ON l.pid = c.pid" if label else ""
    agg = "list(pt.patient_id ORDER BY pt.patient_id)" if cell_members else "count(*)"
    if cell_members:
        join += " JOIN patients pt ON pt.pid = c.pid"
    cols = []
    for pred in ["TRUE", *preds.values()]:
        cols += [f"{agg} FILTER (WHERE {pred})", f"{agg} FILTER (WHERE {pred} AND {v} = {POSITIVE})",
                 f"{agg} FILTER (WHERE {pred} AND {v} = {NEGATIVE})"]
    parts = [f"SELECT 0 AS part, 0 AS idx, NULL::VARCHAR AS key, [{', '.join(cols)}] AS n "
             f"FROM {cohort} c{join}"]
    for k, d in enumerate(b.plan.distributions):
        obj = b.plan.objects[d.object]
        rows = (f"SELECT v.* FROM ({rows_sql(d.field, obj.kind, obj.template)}) v "
                f"WHERE v.entity_id IN (SELECT entity_id FROM {b.matched[d.object]}) "
                f"AND v.pid IN (SELECT pid FROM {subset_rels[d.subset]})")
        key = _distribution_key(d, k, rows, b)
        if key is not None and cell_members:
            parts.append(f"SELECT 1, {k}, CAST(key AS VARCHAR), [list(DISTINCT pt.patient_id ORDER BY "
                         f"pt.patient_id)] FROM ({key}) kv JOIN patients pt ON pt.pid = kv.pid "
                         f"WHERE key IS NOT NULL GROUP BY key")
        elif key is not None:
            parts.append(f"SELECT 1, {k}, CAST(key AS VARCHAR), [count(DISTINCT pid)] FROM ({key}) "
                         f"WHERE key IS NOT NULL GROUP BY key")
    return "\nUNION ALL\n".join(parts)


def _distribution_key(d: DistributionPlan, k: int, rows: str, b: _Builder) -> str | None:
    """A SELECT of (pid, key) for distribution ``d``: the bin number or the category label."""
    fi = d.field
    if d.bins is not None:
        edges = d.bins
        cases = " ".join(f"WHEN v.num < {lit(hi)} THEN {i}" for i, hi in enumerate(edges[1:]))
        return (f"SELECT v.pid, CASE {cases} END AS key FROM ({rows}) v "
                f"WHERE v.num >= {lit(edges[0])} AND v.num < {lit(edges[-1])}")
    if fi.value_type == "coded":
        # The label of a code: its first alias, else its meaning (one per code), else "CODE SCHEME".
        rel = b.add(f"dist_{k}", f"SELECT * FROM ({rows}) v WHERE v.code_value IS NOT NULL")
        first: dict[str, str] = {}
        for alias, key in fi.aliases:
            first.setdefault(key, alias)
        alias_sql = ("CASE v.code_value || ' ' || coalesce(v.code_scheme, 'None') "
                     + " ".join(f"WHEN {lit(key)} THEN {lit(a)}" for key, a in first.items()) + " END"
                     if first else "NULL")
        return (f"SELECT v.pid, coalesce({alias_sql}, nullif(m.meaning, ''), "
                f"v.code_value || ' ' || coalesce(v.code_scheme, 'None')) AS key FROM {rel} v JOIN "
                f"(SELECT code_value, code_scheme, any_value(code_meaning) AS meaning FROM {rel} GROUP BY ALL) m "
                f"ON m.code_value = v.code_value AND m.code_scheme IS NOT DISTINCT FROM v.code_scheme")
    if fi.value_type == "boolean":
        return f"SELECT v.pid, CASE WHEN v.num = 1 THEN 'true' ELSE 'false' END AS key FROM ({rows}) v " \
               f"WHERE v.num IS NOT NULL"
    if fi.value_type == "text":
        return f"SELECT v.pid, v.text AS key FROM ({rows}) v"
    return None  # dates and numbers are not categories (numbers take bins)


def _check_derived(index: DuckIndex) -> None:
    """Rows appended by plain SQL lack ``pid``: fill them (writable index) or refuse (read-only)."""
    if missing_derived(index.con):
        try:
            index.fill_derived()
        except duckdb.Error as exc:
            raise CohortError(f"index {index.path} has rows without patient keys (appended outside DuckIndex) "
                              f"and is open read-only; open it once for writing and call optimize(): {exc}") from None


@contextmanager
def materialized(index: DuckIndex, spec: CohortSpec) -> Iterator[CompiledQuery]:
    """Compile ``spec`` with a unique prefix and run every step into a temporary table.

    Inside the ``with`` block the query's relations (``objects``, ``subsets``, ``label``,
    ``cohort``) are tables on ``index.con`` that callers may read (export, dashboard); they are
    dropped when the block ends, also on errors. Several evaluations can share one connection.
    """
    _check_derived(index)
    query = compile_spec(spec, index, prefix=f"_q{uuid.uuid4().hex[:10]}_")
    created = []
    try:
        for name, body in query.steps:
            index.con.execute(f"CREATE TEMP TABLE {name} AS {body}")
            created.append(name)
        yield query
    finally:
        for table in reversed(created):
            index.con.execute(f"DROP TABLE IF EXISTS {table}")


def evaluate(index: DuckIndex, spec: CohortSpec) -> CohortCounts:
    """Exact counts of distinct patients for ``spec``: cohort, subsets by label, distributions.

    One SQL statement: the relations of ``compile_spec`` as CTEs, then ``CompiledQuery.final``.
    """
    _check_derived(index)
    query = compile_spec(spec, index, patient_ids=False)
    counts_row: list[int] = []
    found: dict[int, dict[str, int]] = {}
    for part, idx, key, n in index.con.execute(query.sql()).fetchall():
        if part == 0:
            counts_row = [int(x) for x in n]
        else:
            found.setdefault(int(idx), {})[str(key)] = int(n[0])
    return _counts(query.plan, counts_row, found)


def evaluate_members(index: DuckIndex, spec: CohortSpec) -> tuple[CohortCounts, dict[CellKey, tuple[str, ...]]]:
    """``evaluate``'s counts and, for every cell, the PatientIDs behind it (sorted).

    The same SQL as ``evaluate`` with lists in place of counts, so the counts are the lists' lengths.
    For the site's release gate only: the ids never leave the site (they are hashed under a site secret
    before anything is kept).
    """
    _check_derived(index)
    query = compile_spec(spec, index, patient_ids=False, cell_members=True)
    plan = query.plan
    row: list[list[str]] = []
    found: dict[int, dict[str, list[str]]] = {}
    for part, idx, key, n in index.con.execute(query.sql()).fetchall():
        if part == 0:
            row = [list(x or []) for x in n]
        else:
            found.setdefault(int(idx), {})[str(key)] = list(n[0])
    members: dict[CellKey, tuple[str, ...]] = {}
    for j, name in enumerate([ALL_SUBSET, *plan.subsets]):
        total, pos, neg = row[3 * j: 3 * j + 3]
        if j == 0:
            members[(ALL_SUBSET,)] = tuple(total)
            continue
        members[("subset", name)] = tuple(total)
        members[("label", name, "positive")] = tuple(pos)
        members[("label", name, "negative")] = tuple(neg)
        known = set(pos) | set(neg)
        members[("label", name, "unknown")] = tuple(p for p in total if p not in known)
    counts = _counts(plan, [len(x) for x in row], {k: {key: len(ids) for key, ids in v.items()}
                                                    for k, v in found.items()})
    for k, d in enumerate(counts.distributions):
        ids = found.get(k, {})
        bin_ids = _distribution_bins(plan.distributions[k], ids)
        for b in d.bins:
            members[("bin", k, b.label)] = tuple(bin_ids.get(b.label, ()))
    return counts, members


def _distribution_bins(d: DistributionPlan, found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Bin label -> patient ids, with the labels ``_distribution`` gives the bins."""
    if d.bins is None:
        return dict(found)
    return {label: found.get(str(k), []) for k, (label, _, _) in enumerate(_histogram_bins(d))}


def _histogram_bins(d: DistributionPlan) -> list[tuple[str, float, float]]:
    """(label, low, high) of each bin of a histogram, in the units the spec gave."""
    assert d.bins is not None
    shown = d.bin_edges_shown or d.bins
    return [(f"{shown[k]:g}-{shown[k + 1]:g}", shown[k], shown[k + 1]) for k in range(len(d.bins) - 1)]


def _counts(plan: Plan, counts_row: list[int], found: dict[int, dict[str, int]]) -> CohortCounts:
    counts: dict[str, SubsetCounts] = {}
    for j, name in enumerate([ALL_SUBSET, *plan.subsets]):
        total, pos, neg = counts_row[3 * j: 3 * j + 3]
        counts[name] = SubsetCounts(total, pos, neg, total - pos - neg)
    dists = [_distribution(d, found.get(k, {})) for k, d in enumerate(plan.distributions)]
    # The whole cohort is ``patients``; its label split is not a subset of the result (the contract's
    # subsets are the standard ones and the spec's).
    total = counts.pop(ALL_SUBSET).patients
    return CohortCounts(patients=total, subsets=counts, distributions=dists)


def _distribution(d: DistributionPlan, found: dict[str, int]) -> Distribution:
    fi = d.field
    bins: list[Bin] = []
    if d.bins is not None:
        bins = [Bin(label, found.get(str(k), 0), low, high) for k, (label, low, high) in enumerate(_histogram_bins(d))]
    else:
        bins = [Bin(label, count) for label, count in sorted(found.items())]
    return Distribution(field=fi.name, kind="histogram" if d.bins is not None else "categories",
                        subset=d.subset, bins=bins, unit=d.unit)


def category_label(fi: FieldInfo, code: str, scheme: str, meaning: str | None) -> str:
    """A coded value's category: its first alias in the catalog, else its meaning, else the code."""
    key = f"{code} {scheme}"
    return next((a for a, c in fi.aliases if c == key), None) or meaning or key


def matching_entities(index: DuckIndex, spec: CohortSpec) -> dict[str, dict[str, list[str]]]:
    """For every cohort patient: object name -> UIDs of its matched entities (series UID for image
    kinds, SOP Instance UID otherwise), sorted. The export step builds on this."""
    out: dict[str, dict[str, list[str]]] = {}
    with materialized(index, spec) as query:
        for name, rel in query.objects.items():
            rows = index.con.execute(
                f"SELECT DISTINCT m.patient_id, CASE WHEN e.kind IN ({', '.join(lit(k) for k in IMAGE_KINDS)}) "
                f"THEN e.series_uid ELSE e.sop_uid END AS uid FROM {rel} m JOIN entities e "
                f"ON e.entity_id = m.entity_id WHERE m.pid IN (SELECT pid FROM {query.cohort}) "
                f"ORDER BY 1, 2").fetchall()
            for patient, uid in rows:
                out.setdefault(patient, {}).setdefault(name, []).append(uid)
        for (patient,) in index.con.execute(f"SELECT patient_id FROM {query.cohort} ORDER BY 1").fetchall():
            out.setdefault(patient, {})
    return out
