"""Compile a CohortSpec to DuckDB SQL and evaluate it: exact counts of distinct patients.

The query is a chain of named relations (run as temporary tables, or shown as one WITH query):

* ``base_<i>``  entities of object *i*'s kind / template on which every predicate holds: one
  semi-join (``entity_id IN (...)``) per predicate, one ``GROUP BY entity_id, group_key`` per
  predicate group, so all predicates hold on the same entity and grouped ones on the same item;
* ``m_<i>``     (patient_id, entity_id, d): matched entities with their event date, after the time
  window relative to another object's matched entities of the same patient;
* ``p_<i>``     patients with a matched entity; the cohort and subsets are set operations on these;
* ``lab``       the label per patient: 2 positive, 1 negative. A patient whose values include both
  a positive and a negative value is positive (positive wins: a pacemaker documented anywhere
  counts), one with neither is unknown.

Distributions count distinct patients per bin: a patient with values in two bins counts in both.
Histogram bins are ``[edges[i], edges[i+1])`` labelled ``"low-high"``; values outside the edges are
not counted. Categories are the values present: a coded value's first alias, else its meaning;
``true`` / ``false`` for yes/no fields; the text for text fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cohort.index.catalog import FieldInfo
from cohort.index.duck import DuckIndex
from cohort.index.plan import (
    ALL_SUBSET,
    KIND_SETS,
    CodeMatch,
    Cond,
    CondGroup,
    DistributionPlan,
    ObjectPlan,
    Plan,
    build_plan,
    expr_names,
)
from cohort.index.schema import IMAGE_KINDS
from cohort.results import Bin, CohortCounts, Distribution, SubsetCounts
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
            scheme: str = "NULL", meaning: str = "NULL", date: str = "NULL", where: str = "") -> str:
    return (f"SELECT entity_id, CAST({grp} AS VARCHAR) AS grp, CAST({num} AS DOUBLE) AS num, "
            f"CAST({text} AS VARCHAR) AS text, CAST({code} AS VARCHAR) AS code_value, "
            f"CAST({scheme} AS VARCHAR) AS code_scheme, CAST({meaning} AS VARCHAR) AS code_meaning, "
            f"CAST({date} AS DATE) AS date FROM {source}" + (f" WHERE {where}" if where else ""))


def values_sql(fi: FieldInfo) -> str:
    """A SELECT giving every value of field ``fi`` as (entity_id, grp, num, text, code_*, date)."""
    if fi.source == "item":
        return _select("items", grp="group_key", num="num", text="text", code="code_value",
                       scheme="code_scheme", meaning="code_meaning", date="date", where=f"field = {lit(fi.name)}")
    if fi.source == "attribute":
        return _select("attributes", num="num", text="text", where=f"name = {lit(fi.name)}")
    if fi.source == "segment":
        grp = "segment_number"
        if fi.name in _SEGMENT_CODED:
            c = _SEGMENT_CODED[fi.name]
            code, scheme, meaning = (f"{c}_code", f"{c}_scheme", f"{c}_meaning") if c != "anatomic_region" \
                else ("anatomic_region", "anatomic_region_scheme", "anatomic_region_meaning")
            return _select("segments", grp=grp, code=code, scheme=scheme, meaning=meaning,
                           where=f"{code} IS NOT NULL")
        if fi.name in _SEGMENT_TEXT:
            col = _SEGMENT_TEXT[fi.name]
            return _select("segments", grp=grp, text=col, where=f"{col} IS NOT NULL")
        return _select("segments", grp=grp, num="segment_number")
    if fi.name == "date":
        return _select("entities", date="entity_date", where="entity_date IS NOT NULL")
    if fi.name == "n_instances":
        return _select("entities", num="n_instances")
    return _select("entities", text=fi.name, where=f"{fi.name} IS NOT NULL")


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


def _cond_filter(c: Cond) -> str:
    if c.op == "exists":
        neg = "" if c.present else "NOT "
        return f"e.entity_id {neg}IN (SELECT entity_id FROM ({values_sql(c.field)}) v)"
    return f"e.entity_id IN (SELECT v.entity_id FROM ({values_sql(c.field)}) v WHERE {cond_sql(c)})"


def _group_filter(g: CondGroup) -> str:
    union = " UNION ALL ".join(f"SELECT {k} AS k, * FROM ({values_sql(c.field)})" for k, c in enumerate(g.conds))
    # Groups hold positive conditions only: the plan checks "exists: false" on the entity.
    having = [f"bool_or(v.k = {k} AND {cond_sql(c)})" for k, c in enumerate(g.conds)]
    return (f"e.entity_id IN (SELECT v.entity_id FROM ({union}) v GROUP BY v.entity_id, v.grp "
            f"HAVING {' AND '.join(having)})")


@dataclass(frozen=True)
class CompiledQuery:
    """Named SELECTs in dependency order, and which relation holds what."""

    steps: tuple[tuple[str, str], ...]
    objects: dict[str, str]  # object name -> relation (patient_id, entity_id, d)
    subsets: dict[str, str]  # subset name -> relation (patient_id); ALL_SUBSET is the cohort
    label: str | None  # relation (patient_id, v)
    cohort: str
    plan: Plan

    def sql(self, final: str | None = None) -> str:
        """The whole query as one WITH statement (for reading and debugging)."""
        ctes = ",\n".join(f"{name} AS (\n  {body}\n)" for name, body in self.steps)
        return f"WITH {ctes}\n{final or f'SELECT count(*) FROM {self.cohort}'}"


def compile_spec(spec: CohortSpec, index: DuckIndex | None = None, *, prefix: str = "") -> CompiledQuery:
    """Resolve ``spec`` against the index's catalog and compile it to named SELECTs.

    Relation names start with ``prefix``, so several evaluations can share one connection.
    """
    plan = build_plan(spec, index.catalog if index is not None else None)
    p = prefix
    exprs = [plan.cohort, *plan.subsets.values()]
    referenced = {n for e in exprs for n in expr_names(e)}
    steps: list[tuple[str, str]] = []
    if any(_has_not(e) for e in exprs):  # only NOT needs "every patient"; it is a scan of all entities
        steps.append((f"{p}all_patients", "SELECT DISTINCT patient_id FROM entities"))
    rels: dict[str, str] = {}
    obj_rels: dict[str, str] = {}
    for i, obj in enumerate(plan.objects.values()):
        steps += _object_steps(p, i, obj, obj_rels)
        obj_rels[obj.name] = f"{p}m_{i}"
        rels[obj.name] = f"{p}p_{i}"
    for kind in KIND_SETS:
        if kind not in rels and kind in referenced:
            steps.append((f"{p}kind_{kind}", f"SELECT DISTINCT patient_id FROM entities WHERE kind = {lit(kind)}"))
            rels[kind] = f"{p}kind_{kind}"
    cohort = f"{p}cohort"
    steps.append((cohort, _expr_sql(plan.cohort, rels, f"{p}all_patients")))
    subset_rels = {ALL_SUBSET: cohort}
    for j, (name, expr) in enumerate(plan.subsets.items()):
        body = f"SELECT patient_id FROM {cohort} INTERSECT ({_expr_sql(expr, rels, f'{p}all_patients')})"
        steps.append((f"{p}subset_{j}", body))
        subset_rels[name] = f"{p}subset_{j}"
    label_rel = None
    if plan.label is not None:
        lab = plan.label
        pos = cond_sql(lab.positive) if lab.positive.values else "FALSE"
        neg = cond_sql(lab.negative) if lab.negative.values else "FALSE"
        label_rel = f"{p}lab"
        steps.append((label_rel, f"SELECT m.patient_id, max(CASE WHEN {pos} THEN {POSITIVE} WHEN {neg} "
                                 f"THEN {NEGATIVE} ELSE 0 END) AS v FROM {obj_rels[lab.object]} m "
                                 f"JOIN ({values_sql(lab.field)}) v ON v.entity_id = m.entity_id "
                                 f"GROUP BY m.patient_id"))
    return CompiledQuery(tuple(steps), obj_rels, subset_rels, label_rel, cohort, plan)


def _object_steps(p: str, i: int, obj: ObjectPlan, obj_rels: dict[str, str]) -> list[tuple[str, str]]:
    base, matched, patients = f"{p}base_{i}", f"{p}m_{i}", f"{p}p_{i}"
    where = [f"e.kind = {lit(obj.kind)}"]
    if obj.template:
        where.append(f"e.template = {lit(obj.template)}")
    where += [_cond_filter(c) for c in obj.conds]
    where += [_group_filter(g) for g in obj.groups]
    steps = [(base, "SELECT e.patient_id, e.entity_id, e.entity_date AS d FROM entities e WHERE "
                    + "\n    AND ".join(where))]
    w = obj.within
    if w is None:
        return [*steps, (matched, f"SELECT patient_id, entity_id, d FROM {base}"),
                (patients, f"SELECT DISTINCT patient_id FROM {matched}")]
    own = base
    if w.own_date is not None:
        own = (f"(SELECT b.patient_id, b.entity_id, v.date AS d FROM {base} b JOIN ({values_sql(w.own_date)}) v "
               f"ON v.entity_id = b.entity_id WHERE v.date IS NOT NULL)")
    other = obj_rels[w.of]
    if w.of_date is not None:
        ev = (f"(SELECT m.patient_id, v.date AS d FROM {other} m JOIN ({values_sql(w.of_date)}) v "
              f"ON v.entity_id = m.entity_id WHERE v.date IS NOT NULL)")
    else:
        ev = f"(SELECT patient_id, d FROM {other})"
    window = ["a.d IS NOT NULL", "b.d IS NOT NULL"]
    if w.min_days is not None:
        window.append(f"date_diff('day', b.d, a.d) >= {int(w.min_days)}")
    if w.max_days is not None:
        window.append(f"date_diff('day', b.d, a.d) <= {int(w.max_days)}")
    steps.append((matched, f"SELECT DISTINCT a.patient_id, a.entity_id, a.d FROM {own} a JOIN {ev} b "
                           f"ON a.patient_id = b.patient_id WHERE {' AND '.join(window)}"))
    steps.append((patients, f"SELECT DISTINCT patient_id FROM {matched}"))
    return steps


def _has_not(expr: Expr) -> bool:
    if isinstance(expr, Not):
        return True
    if isinstance(expr, And):
        return any(_has_not(e) for e in expr.all)
    if isinstance(expr, Or):
        return any(_has_not(e) for e in expr.any)
    return False


def _expr_sql(expr: Expr, rels: dict[str, str], everyone: str) -> str:
    if isinstance(expr, str):
        return f"SELECT patient_id FROM {rels[expr]}"
    if isinstance(expr, And):
        return " INTERSECT ".join(f"({_expr_sql(e, rels, everyone)})" for e in expr.all)
    if isinstance(expr, Or):
        return " UNION ".join(f"({_expr_sql(e, rels, everyone)})" for e in expr.any)
    assert isinstance(expr, Not)
    return f"(SELECT patient_id FROM {everyone}) EXCEPT ({_expr_sql(expr.not_, rels, everyone)})"


@contextmanager
def materialized(index: DuckIndex, spec: CohortSpec) -> Iterator[CompiledQuery]:
    """Compile ``spec`` with a unique prefix and run every step into a temporary table.

    Inside the ``with`` block the query's relations (``objects``, ``subsets``, ``label``,
    ``cohort``) are tables on ``index.con`` that callers may read (export, dashboard); they are
    dropped when the block ends, also on errors. Several evaluations can share one connection.
    """
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
    """Exact counts of distinct patients for ``spec``: cohort, subsets by label, distributions."""
    with materialized(index, spec) as query:
        con = index.con
        counts: dict[str, SubsetCounts] = {}
        for name, rel in query.subsets.items():
            if query.label:
                row = con.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE l.v = {POSITIVE}), "
                    f"count(*) FILTER (WHERE l.v = {NEGATIVE}) FROM {rel} s "
                    f"LEFT JOIN {query.label} l ON l.patient_id = s.patient_id").fetchone()
                assert row is not None  # an aggregate without GROUP BY returns one row
                total, pos, neg = (int(x) for x in row)
            else:
                total, pos, neg = int(index.scalar(f"SELECT count(*) FROM {rel}")), 0, 0
            counts[name] = SubsetCounts(total, pos, neg, total - pos - neg)
        dists = [_distribution(index, query, d) for d in query.plan.distributions]
    # The whole cohort is ``patients``; its label split is not a subset of the result (the contract's
    # subsets are the standard ones and the spec's).
    total = counts.pop(ALL_SUBSET).patients
    return CohortCounts(patients=total, subsets=counts, distributions=dists)


def _distribution(index: DuckIndex, query: CompiledQuery, d: DistributionPlan) -> Distribution:
    fi = d.field
    rows_sql = (f"SELECT m.patient_id, v.* FROM {query.objects[d.object]} m "
                f"JOIN {query.subsets[d.subset]} s ON s.patient_id = m.patient_id "
                f"JOIN ({values_sql(fi)}) v ON v.entity_id = m.entity_id")
    bins: list[Bin] = []
    if d.bins is not None:
        shown = d.bin_edges_shown or d.bins
        for k, (lo, hi) in enumerate(zip(d.bins, d.bins[1:], strict=False)):
            n = index.scalar(f"SELECT count(DISTINCT patient_id) FROM ({rows_sql}) "
                             f"WHERE num >= {lit(lo)} AND num < {lit(hi)}")
            bins.append(Bin(f"{shown[k]:g}-{shown[k + 1]:g}", int(n), shown[k], shown[k + 1]))
    else:
        bins = [Bin(label, count) for label, count in sorted(_categories(index, fi, rows_sql).items())]
    return Distribution(field=fi.name, kind="histogram" if d.bins is not None else "categories",
                        subset=d.subset, bins=bins, unit=d.unit)


def category_label(fi: FieldInfo, code: str, scheme: str, meaning: str | None) -> str:
    """A coded value's category: its first alias in the catalog, else its meaning, else the code."""
    key = f"{code} {scheme}"
    return next((a for a, c in fi.aliases if c == key), None) or meaning or key


def _categories(index: DuckIndex, fi: FieldInfo, rows_sql: str) -> dict[str, int]:
    con = index.con
    members: dict[str, set[str]] = {}
    if fi.value_type == "coded":
        # Patients are counted once per label even when two codes share a label.
        for code, scheme, meaning, patients in con.execute(
                f"SELECT code_value, code_scheme, any_value(code_meaning), list(DISTINCT patient_id) "
                f"FROM ({rows_sql}) WHERE code_value IS NOT NULL GROUP BY code_value, code_scheme").fetchall():
            members.setdefault(category_label(fi, code, scheme, meaning), set()).update(patients)
        return {k: len(v) for k, v in members.items()}
    if fi.value_type == "boolean":
        expr, where = "CASE WHEN num = 1 THEN 'true' ELSE 'false' END", "num IS NOT NULL"
    elif fi.value_type == "text":
        expr, where = "text", "text IS NOT NULL"
    else:
        return {}  # dates and numbers are not categories (numbers take bins)
    return {str(k): int(n) for k, n in con.execute(
        f"SELECT {expr} AS c, count(DISTINCT patient_id) FROM ({rows_sql}) WHERE {where} GROUP BY c").fetchall()}


def matching_entities(index: DuckIndex, spec: CohortSpec) -> dict[str, dict[str, list[str]]]:
    """For every cohort patient: object name -> UIDs of its matched entities (series UID for image
    kinds, SOP Instance UID otherwise), sorted. The export step builds on this."""
    out: dict[str, dict[str, list[str]]] = {}
    with materialized(index, spec) as query:
        for name, rel in query.objects.items():
            rows = index.con.execute(
                f"SELECT DISTINCT m.patient_id, CASE WHEN e.kind IN ({', '.join(lit(k) for k in IMAGE_KINDS)}) "
                f"THEN e.series_uid ELSE e.sop_uid END AS uid FROM {rel} m JOIN entities e "
                f"ON e.entity_id = m.entity_id WHERE m.patient_id IN (SELECT patient_id FROM {query.cohort}) "
                f"ORDER BY 1, 2").fetchall()
            for patient, uid in rows:
                out.setdefault(patient, {}).setdefault(name, []).append(uid)
        for (patient,) in index.con.execute(f"SELECT patient_id FROM {query.cohort} ORDER BY 1").fetchall():
            out.setdefault(patient, {})
    return out
