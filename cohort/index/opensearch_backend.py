"""OpenSearch backend: the same data model as a nested mapping, and specs compiled to query DSL.

One document per patient (so a count of documents is an exact count of distinct patients), with

``entities``                 nested: one per entity (kind, template, date, uids)
``entities.values``          nested: every value of every field of that entity (items, attributes,
                             segment properties, entity columns), as the DuckDB backend sees them
``entities.groups``          nested: one per predicate group (SR container / SEG segment) holding
``entities.groups.values``   nested: that group's values

An object condition is one ``nested`` query on ``entities`` whose filters all apply to the same
entity (same-instance semantics); a predicate group is one ``nested`` query on
``entities.groups``. Patient-level AND / OR / NOT are bool queries on the patient document. Time
windows compare dates of two entities, which query DSL cannot do, so they are resolved exactly on
the client from inner hits and enter the query as a ``terms`` filter on ``entities.entity_id``.
All counts are ``_count`` requests (exact), never cardinality aggregations (approximate).

The documents are built from a DuckIndex (``index_from_duck``), so both backends index the same
extraction and the shared conformance list (``tests/conformance_cases.py``) must give identical
counts on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from cohort.index.catalog import FieldInfo
from cohort.index.compile_duck import POSITIVE, category_label, values_sql
from cohort.index.duck import DuckIndex
from cohort.index.plan import (
    KIND_SETS,
    CodeMatch,
    Cond,
    CondGroup,
    DistributionPlan,
    ObjectPlan,
    Plan,
    build_plan,
)
from cohort.results import ALL_SUBSET, Bin, CohortCounts, Distribution, SubsetCounts
from cohort.spec.model import And, CohortSpec, Expr, Not, Or

Query = dict[str, Any]
_VALUE_PROPS = {
    "field": {"type": "keyword"}, "grp": {"type": "keyword"}, "num": {"type": "double"},
    "text": {"type": "keyword"}, "text_lc": {"type": "keyword"}, "code_value": {"type": "keyword"},
    "code_value_lc": {"type": "keyword"}, "code_scheme": {"type": "keyword"},
    "code_meaning": {"type": "keyword"}, "code_meaning_lc": {"type": "keyword"},
    "date": {"type": "date", "format": "yyyy-MM-dd"},
}
MAPPING: dict[str, Any] = {
    "mappings": {"properties": {
        "patient_id": {"type": "keyword"},
        "entities": {"type": "nested", "properties": {
            "entity_id": {"type": "long"}, "kind": {"type": "keyword"}, "template": {"type": "keyword"},
            "sop_uid": {"type": "keyword"}, "series_uid": {"type": "keyword"},
            "entity_date": {"type": "date", "format": "yyyy-MM-dd"},
            "values": {"type": "nested", "properties": _VALUE_PROPS},
            "groups": {"type": "nested", "properties": {
                "grp": {"type": "keyword"}, "values": {"type": "nested", "properties": _VALUE_PROPS}}},
        }},
    }},
    "settings": {"index": {"max_inner_result_window": 1000}},
}
ENT = "entities"
VAL = "entities.values"
GRP = "entities.groups"
GVAL = "entities.groups.values"
_RANGE = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


# --- documents ---------------------------------------------------------------------------------------

def documents_from_duck(index: DuckIndex) -> Iterator[dict[str, Any]]:
    """One document per patient, built from the DuckDB index's tables."""
    con = index.con
    values: dict[int, list[dict[str, Any]]] = {}
    for fi in index.catalog.values():
        for eid, grp, num, text, code, scheme, meaning, d in con.execute(values_sql(fi)).fetchall():
            v: dict[str, Any] = {"field": fi.name}
            if grp is not None and fi.groupable:
                v["grp"] = grp
            if num is not None:
                v["num"] = num
            if text is not None:
                v["text"], v["text_lc"] = text, text.lower()
            if code is not None:
                v["code_value"], v["code_value_lc"], v["code_scheme"] = code, code.lower(), scheme
            if meaning is not None:
                v["code_meaning"], v["code_meaning_lc"] = meaning, meaning.lower()
            if d is not None:
                v["date"] = d.isoformat()
            values.setdefault(eid, []).append(v)
    patients: dict[str, list[dict[str, Any]]] = {}
    for eid, kind, template, pid, sop, series, edate in con.execute(
            "SELECT entity_id, kind, template, patient_id, sop_uid, series_uid, entity_date FROM entities "
            "ORDER BY patient_id, entity_id").fetchall():
        vals = values.get(eid, [])
        groups: dict[str, list[dict[str, Any]]] = {}
        for v in vals:
            if "grp" in v:
                groups.setdefault(v["grp"], []).append(v)
        ent = {"entity_id": eid, "kind": kind, "template": template, "sop_uid": sop, "series_uid": series,
               "entity_date": edate.isoformat() if edate else None, "values": vals,
               "groups": [{"grp": g, "values": vs} for g, vs in sorted(groups.items())]}
        patients.setdefault(pid, []).append(ent)
    for pid, ents in patients.items():
        yield {"_id": pid, "patient_id": pid, "entities": ents}


# --- query DSL -------------------------------------------------------------------------------------

def _nested(path: str, query: Query, inner_hits: dict[str, Any] | None = None) -> Query:
    body: dict[str, Any] = {"path": path, "query": query, "score_mode": "none"}
    if inner_hits is not None:
        body["inner_hits"] = inner_hits
    return {"nested": body}


def _filter(*queries: Query) -> Query:
    return {"bool": {"filter": list(queries)}}


def _any(*queries: Query) -> Query:
    return {"bool": {"should": list(queries), "minimum_should_match": 1}}


def _none(*queries: Query) -> Query:
    return {"bool": {"must_not": list(queries)}}


def _wildcard(field: str, text: str) -> Query:
    escaped = text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    return {"wildcard": {field: {"value": f"*{escaped}*"}}}


def _code_eq(p: str, m: CodeMatch) -> Query:
    if m.scheme is not None:
        return _filter({"term": {f"{p}.code_value": m.value}}, {"term": {f"{p}.code_scheme": m.scheme}})
    return _any({"term": {f"{p}.code_value": m.value}}, {"term": {f"{p}.code_meaning_lc": m.value.lower()}})


def value_query(c: Cond, p: str = VAL) -> Query:
    """The condition ``c`` on one value document under path ``p`` (field name included)."""
    field_term = {"term": {f"{p}.field": c.field.name}}
    vt, op = c.field.value_type, c.op
    if op == "exists":
        return field_term
    if vt == "coded":
        if op == "contains":
            cond = _wildcard(f"{p}.code_meaning_lc", str(c.values[0].value).lower())
        elif op == "!=":
            cond = {"bool": {"filter": [{"exists": {"field": f"{p}.code_value"}}],
                             "must_not": [_any(*(_code_eq(p, m) for m in c.values))]}}
        else:
            cond = _any(*(_code_eq(p, m) for m in c.values))
        return _filter(field_term, cond)
    col = {"numeric": "num", "boolean": "num", "date": "date"}.get(vt, "text")
    key = f"{p}.{col}"
    if op == "in":
        cond = {"terms": {key: list(c.values)}}
    elif op == "contains":
        cond = _wildcard(f"{p}.text_lc", str(c.values[0]).lower())
    elif op == "=":
        cond = {"term": {key: c.values[0]}}
    elif op == "!=":
        cond = {"bool": {"filter": [{"exists": {"field": key}}], "must_not": [{"term": {key: c.values[0]}}]}}
    else:
        cond = {"range": {key: {_RANGE[op]: c.values[0]}}}
    return _filter(field_term, cond)


def cond_query(c: Cond) -> Query:
    """A predicate on an entity: some value of the field satisfies it (or none exists)."""
    q = _nested(VAL, value_query(c))
    return _none(q) if c.op == "exists" and not c.present else q


def group_query(g: CondGroup) -> Query:
    """Every predicate of the group holds on values of one group (SR container / SEG segment)."""
    # Groups hold positive conditions only: the plan checks "exists: false" on the entity.
    return _nested(GRP, _filter(*(_nested(GVAL, value_query(c, GVAL)) for c in g.conds)))


def entity_filter(obj: ObjectPlan, entity_ids: list[int] | None = None) -> list[Query]:
    """Filters that select the object's entities (inside the ``entities`` nested query)."""
    filters: list[Query] = [{"term": {f"{ENT}.kind": obj.kind}}]
    if obj.template:
        filters.append({"term": {f"{ENT}.template": obj.template}})
    filters += [cond_query(c) for c in obj.conds]
    filters += [group_query(g) for g in obj.groups]
    if entity_ids is not None:
        filters.append({"terms": {f"{ENT}.entity_id": entity_ids}})
    return filters


def object_query(obj: ObjectPlan, entity_ids: list[int] | None = None, *extra: Query) -> Query:
    """Patients with an entity on which the object's predicates (and ``extra``) all hold."""
    return _nested(ENT, _filter(*entity_filter(obj, entity_ids), *extra))


def expr_query(expr: Expr, objects: dict[str, Query]) -> Query:
    """A patient-level expression as a bool query."""
    if isinstance(expr, str):
        if expr in objects:
            return objects[expr]
        return _nested(ENT, {"term": {f"{ENT}.kind": expr}})
    if isinstance(expr, And):
        return _filter(*(expr_query(e, objects) for e in expr.all))
    if isinstance(expr, Or):
        return _any(*(expr_query(e, objects) for e in expr.any))
    assert isinstance(expr, Not)
    return _none(expr_query(expr.not_, objects))


# --- evaluation ------------------------------------------------------------------------------------

@dataclass
class OpenSearchBackend:
    """A patient index on an OpenSearch cluster (``opensearchpy.OpenSearch`` client)."""

    client: Any
    index_name: str = "cohort"

    @classmethod
    def connect(cls, url: str, index_name: str = "cohort", **kwargs: Any) -> OpenSearchBackend:
        """Connect to ``url`` (e.g. ``https://user:pass@host:9200``)."""
        from opensearchpy import OpenSearch

        return cls(OpenSearch(hosts=[url], **kwargs), index_name)

    def recreate(self, *, shards: int | None = None, replicas: int | None = None) -> None:
        """Drop and create the index with the nested mapping (cluster defaults unless shards/replicas given)."""
        self.drop()
        body: dict[str, Any] = {"mappings": MAPPING["mappings"],
                                "settings": {"index": dict(MAPPING["settings"]["index"])}}
        if shards is not None:
            body["settings"]["index"]["number_of_shards"] = shards
        if replicas is not None:
            body["settings"]["index"]["number_of_replicas"] = replicas
        self.client.indices.create(index=self.index_name, body=body)

    def drop(self) -> None:
        """Delete the index if it exists."""
        self.client.indices.delete(index=self.index_name, ignore_unavailable=True)

    def index_from_duck(self, index: DuckIndex, chunk_size: int = 500) -> int:
        """Bulk-index every patient of ``index``; returns documents written."""
        from opensearchpy import helpers

        actions = ({"_index": self.index_name, **doc} for doc in documents_from_duck(index))
        # No refresh while loading (one per bulk request made every chunk wait for a refresh); the final
        # refresh makes every document searchable before this returns, as before.
        self.client.indices.put_settings(index=self.index_name, body={"index": {"refresh_interval": "-1"}})
        try:
            ok, _ = helpers.bulk(self.client, actions, chunk_size=chunk_size)
        finally:
            self.client.indices.put_settings(index=self.index_name, body={"index": {"refresh_interval": None}})
            self.client.indices.refresh(index=self.index_name)
        return int(ok)

    def count(self, query: Query) -> int:
        """Exact number of patient documents matching ``query``."""
        return int(self.client.count(index=self.index_name, body={"query": query})["count"])

    def evaluate(self, spec: CohortSpec, catalog: dict[str, FieldInfo] | None = None) -> CohortCounts:
        """The same answer as ``compile_duck.evaluate`` on the DuckDB index the documents came from."""
        plan = build_plan(spec, catalog)
        objects = self.object_queries(plan)
        cohort = expr_query(plan.cohort, objects)
        subsets = {ALL_SUBSET: cohort, **{n: _filter(cohort, expr_query(e, objects)) for n, e in plan.subsets.items()}}
        pos_q = neg_q = None
        if plan.label is not None:
            lab = plan.label
            obj = objects[lab.object]
            pos_q = _with_value(obj, value_query(lab.positive)) if lab.positive.values else None
            neg_q = _with_value(obj, value_query(lab.negative)) if lab.negative.values else None
        counts = {}
        for name, q in subsets.items():
            total = self.count(q)
            pos = self.count(_filter(q, pos_q)) if pos_q else 0
            neg = self.count(_filter(q, neg_q, *([_none(pos_q)] if pos_q else []))) if neg_q else 0
            counts[name] = SubsetCounts(total, pos, neg, total - pos - neg)
        dists = [self._distribution(d, objects, subsets) for d in plan.distributions]
        total = counts.pop(ALL_SUBSET).patients
        return CohortCounts(patients=total, subsets=counts, distributions=dists)

    def object_queries(self, plan: Plan) -> dict[str, Query]:
        """Each object's patient query; windows are resolved to entity ids first (in plan order)."""
        matched: dict[str, list[tuple[str, int, date]]] = {}  # windowed objects: (patient, entity, date)
        queries: dict[str, Query] = {}
        for name, obj in plan.objects.items():
            ids = None
            if obj.within is not None:
                w = obj.within
                own = self._entity_dates(object_query(obj), obj, w.own_date)
                other = plan.objects[w.of]
                other_dates = matched.get(w.of) if w.of_date is None else None
                if other_dates is None:
                    other_dates = self._entity_dates(queries[w.of], other, w.of_date)
                by_patient: dict[str, list[date]] = {}
                for pid, _, d in other_dates:
                    by_patient.setdefault(pid, []).append(d)
                keep = [(pid, eid, d) for pid, eid, d in own
                        if any(_in_window((d - od).days, w.min_days, w.max_days) for od in by_patient.get(pid, []))]
                matched[name] = keep
                ids = sorted({eid for _, eid, _ in keep})
            queries[name] = object_query(obj, ids)
        return queries

    def _entity_dates(self, query: Query, obj: ObjectPlan, date_field: FieldInfo | None
                      ) -> list[tuple[str, int, date]]:
        """(patient, entity id, date) of the entities ``query`` matches, with the chosen date."""
        inner = _nested(ENT, query["nested"]["query"], inner_hits={"size": 1000, "_source": True})
        out = []
        for hit in self._scan(inner):
            pid = hit["_source"]["patient_id"]
            for ih in hit["inner_hits"][ENT]["hits"]["hits"]:
                ent = ih["_source"]
                if date_field is None:
                    dates = [ent["entity_date"]] if ent.get("entity_date") else []
                else:
                    dates = [v["date"] for v in ent.get("values", []) if v["field"] == date_field.name and "date" in v]
                out += [(pid, int(ent["entity_id"]), date.fromisoformat(d)) for d in dates]
        return out

    def _scan(self, query: Query, page: int = 500) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            body: dict[str, Any] = {"query": query, "size": page, "sort": [{"patient_id": "asc"}],
                                    "_source": ["patient_id"]}
            if after is not None:
                body["search_after"] = after
            hits = self.client.search(index=self.index_name, body=body)["hits"]["hits"]
            yield from hits
            if len(hits) < page:
                return
            after = hits[-1]["sort"]

    def _distribution(self, d: DistributionPlan, objects: dict[str, Query], subsets: dict[str, Query]
                      ) -> Distribution:
        fi = d.field
        sub = subsets[d.subset]
        obj = objects[d.object]
        bins: list[Bin] = []
        if d.bins is not None:
            shown = d.bin_edges_shown or d.bins
            for k, (lo, hi) in enumerate(zip(d.bins, d.bins[1:], strict=False)):
                q = _filter({"term": {f"{VAL}.field": fi.name}}, {"range": {f"{VAL}.num": {"gte": lo, "lt": hi}}})
                bins.append(Bin(f"{shown[k]:g}-{shown[k + 1]:g}", self.count(_filter(sub, _with_value(obj, q))),
                                shown[k], shown[k + 1]))
        else:
            for label, q in sorted(self._categories(fi, obj, sub).items()):
                bins.append(Bin(label, self.count(_filter(sub, _with_value(obj, q)))))
        return Distribution(field=fi.name, kind="histogram" if d.bins is not None else "categories",
                            subset=d.subset, bins=bins, unit=d.unit)

    def _categories(self, fi: FieldInfo, obj: Query, sub: Query) -> dict[str, Query]:
        """Category label -> value query selecting it, from the values present in the subset."""
        key = {"coded": "code_value", "boolean": "num", "text": "text"}.get(fi.value_type)
        if key is None:
            return {}  # dates and numbers are not categories (numbers take bins)
        agg_field = f"{VAL}.{key}"
        sub_aggs = {"scheme": {"terms": {"field": f"{VAL}.code_scheme", "size": 100}},
                    "meaning": {"terms": {"field": f"{VAL}.code_meaning", "size": 1}}} if key == "code_value" else {}
        body = {"size": 0, "query": _filter(sub, obj), "aggs": {"e": {"nested": {"path": ENT}, "aggs": {
            "v": {"nested": {"path": VAL}, "aggs": {"f": {"filter": {"term": {f"{VAL}.field": fi.name}}, "aggs": {
                "t": {"terms": {"field": agg_field, "size": 10000}, "aggs": sub_aggs}}}}}}}}}
        res = self.client.search(index=self.index_name, body=body)
        buckets = res["aggregations"]["e"]["v"]["f"]["t"]["buckets"]
        out: dict[str, list[Query]] = {}
        for b in buckets:
            if fi.value_type == "coded":
                meaning = b["meaning"]["buckets"][0]["key"] if b["meaning"]["buckets"] else None
                for s in b["scheme"]["buckets"]:
                    label = category_label(fi, b["key"], s["key"], meaning)
                    out.setdefault(label, []).append(_code_eq(VAL, CodeMatch(b["key"], s["key"])))
            elif fi.value_type == "boolean":
                out.setdefault("true" if b["key"] == 1 else "false", []).append({"term": {agg_field: b["key"]}})
            else:
                out.setdefault(str(b["key"]), []).append({"term": {agg_field: b["key"]}})
        field_term = {"term": {f"{VAL}.field": fi.name}}
        return {label: _filter(field_term, _any(*qs)) for label, qs in out.items()}


def _with_value(object_q: Query, value_q: Query) -> Query:
    """The object's entity query with one more condition: a value matching ``value_q``."""
    inner = object_q["nested"]["query"]
    return _nested(ENT, _filter(inner, _nested(VAL, value_q)))


def _in_window(days: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or days >= lo) and (hi is None or days <= hi)


__all__ = ["MAPPING", "OpenSearchBackend", "documents_from_duck", "object_query", "expr_query", "value_query",
           "cond_query", "group_query", "entity_filter", "KIND_SETS", "POSITIVE"]
