"""OpenSearch backend without a server: the mapping, the documents and the generated query DSL."""

from __future__ import annotations

import pytest

from cohort.index.catalog import field_catalog
from cohort.index.opensearch_backend import (
    ENT,
    GRP,
    GVAL,
    MAPPING,
    VAL,
    OpenSearchBackend,
    documents_from_duck,
    expr_query,
    object_query,
    value_query,
)
from cohort.index.plan import build_plan
from cohort.spec.model import CohortSpec
from tests.conformance_cases import build_duck_index


def _plan(objects: dict, cohort="o"):
    return build_plan(CohortSpec.model_validate({"objects": objects, "cohort": cohort}))


def test_mapping_nests_values_and_groups_inside_entities() -> None:
    ent = MAPPING["mappings"]["properties"]["entities"]
    assert ent["type"] == "nested"
    assert ent["properties"]["values"]["type"] == "nested"
    assert ent["properties"]["groups"]["properties"]["values"]["type"] == "nested"


def test_same_instance_predicates_sit_in_one_entities_query() -> None:
    plan = _plan({"o": {"kind": "SR", "template": "ecg_report", "where": [
        {"field": "qrs_duration", "op": ">=", "value": 0.12, "unit": "s"},
        {"field": "ecg_finding", "op": "=", "value": "LBBB"}]}})
    q = object_query(plan.objects["o"])
    assert q["nested"]["path"] == ENT
    filters = q["nested"]["query"]["bool"]["filter"]
    assert filters[:2] == [{"term": {f"{ENT}.kind": "SR"}}, {"term": {f"{ENT}.template": "ecg_report"}}]
    qrs, lbbb = filters[2]["nested"], filters[3]["nested"]
    assert qrs["path"] == lbbb["path"] == VAL
    assert qrs["query"] == {"bool": {"filter": [{"term": {f"{VAL}.field": "qrs_duration"}},
                                                {"range": {f"{VAL}.num": {"gte": 120.0}}}]}}
    code = lbbb["query"]["bool"]["filter"][1]["bool"]["should"][0]
    assert code == {"bool": {"filter": [{"term": {f"{VAL}.code_value": "63467002"}},
                                        {"term": {f"{VAL}.code_scheme": "SCT"}}]}}


def test_groups_are_one_nested_group_with_nested_values() -> None:
    plan = _plan({"o": {"kind": "SEG", "where": [
        {"field": "segment_type", "op": "=", "value": "LV", "group": "a"},
        {"field": "algorithm_type", "op": "=", "value": "AUTOMATIC", "group": "a"}]}})
    group = object_query(plan.objects["o"])["nested"]["query"]["bool"]["filter"][1]["nested"]
    assert group["path"] == GRP
    parts = group["query"]["bool"]["filter"]
    assert [p["nested"]["path"] for p in parts] == [GVAL, GVAL]
    assert parts[1]["nested"]["query"]["bool"]["filter"][1] == {"term": {f"{GVAL}.text": "AUTOMATIC"}}


def test_exists_false_text_contains_and_not() -> None:
    plan = _plan({"o": {"kind": "SR", "template": "ecg_report", "where": [
        {"field": "ecg_finding", "op": "exists", "value": False},
        {"field": "ecg_statement", "op": "contains", "value": "Sinus*"}]}, "c": {"kind": "CT"}},
        {"all": ["c", {"not": "o"}]})
    filters = object_query(plan.objects["o"])["nested"]["query"]["bool"]["filter"]
    assert filters[2]["bool"]["must_not"][0]["nested"]["query"] == {"term": {f"{VAL}.field": "ecg_finding"}}
    assert filters[3]["nested"]["query"]["bool"]["filter"][1] == {
        "wildcard": {f"{VAL}.text_lc": {"value": "*sinus\\**"}}}
    objects = {n: object_query(o) for n, o in plan.objects.items()}
    q = expr_query(plan.cohort, objects)
    assert q["bool"]["filter"][0] == objects["c"] and q["bool"]["filter"][1] == {"bool": {"must_not": [objects["o"]]}}
    assert expr_query("ECG", objects) == {"nested": {"path": ENT, "query": {"term": {f"{ENT}.kind": "ECG"}},
                                                     "score_mode": "none"}}


def test_exists_false_in_a_group_is_checked_on_the_entity() -> None:
    plan = _plan({"o": {"kind": "SEG", "where": [
        {"field": "algorithm_type", "op": "=", "value": "MANUAL", "group": "a"},
        {"field": "algorithm_name", "op": "exists", "value": False, "group": "a"}]}})
    filters = object_query(plan.objects["o"])["nested"]["query"]["bool"]["filter"]
    absent = {"bool": {"must_not": [{"nested": {"path": VAL, "query": {"term": {f"{VAL}.field": "algorithm_name"}},
                                                "score_mode": "none"}}]}}
    assert filters[1] == absent  # on the entity's values, not inside the group
    group = filters[2]["nested"]
    assert group["path"] == GRP and len(group["query"]["bool"]["filter"]) == 1


def test_value_query_operators() -> None:
    cat = field_catalog()
    from cohort.index.plan import Cond

    assert value_query(Cond(cat["slice_thickness"], "!=", (1.0,)))["bool"]["filter"][1] == {
        "bool": {"filter": [{"exists": {"field": f"{VAL}.num"}}], "must_not": [{"term": {f"{VAL}.num": 1.0}}]}}
    assert value_query(Cond(cat["date"], "<", ("2021-01-01",)))["bool"]["filter"][1] == {
        "range": {f"{VAL}.date": {"lt": "2021-01-01"}}}
    assert value_query(Cond(cat["slice_thickness"], "in", (0.5, 1.0)))["bool"]["filter"][1] == {
        "terms": {f"{VAL}.num": [0.5, 1.0]}}


def test_documents_hold_every_value_once_per_patient() -> None:
    with build_duck_index() as index:
        docs = {d["patient_id"]: d for d in documents_from_duck(index)}
    assert len(docs) == 14
    p02 = docs["P02"]
    reports = [e for e in p02["entities"] if e["template"] == "ecg_report"]
    assert len(reports) == 2  # two reports stay two entities: no flattening across instances
    segs = [e for e in p02["entities"] if e["kind"] == "SEG"]
    assert all(len(e["groups"]) == 1 for e in segs)
    lv = next(v for v in segs[0]["values"] if v["field"] == "segment_type")
    assert lv["code_value"] == "87878005" and lv["grp"] == "1"
    ct = next(e for e in p02["entities"] if e["kind"] == "CT")
    assert {"field": "slice_thickness", "num": 1.0} in ct["values"]
    assert {"field": "date", "date": "2021-01-15"} in ct["values"]


def test_window_objects_need_a_server_but_compile_without_one() -> None:
    class NoServer:
        def __getattr__(self, name):  # any call would mean the DSL tried to reach a cluster
            raise AssertionError(f"unexpected call {name}")

    backend = OpenSearchBackend(NoServer(), "x")
    plan = _plan({"o": {"kind": "CT"}})
    assert backend.object_queries(plan)["o"] == object_query(plan.objects["o"])
    with pytest.raises(AssertionError, match="unexpected call"):
        backend.evaluate(CohortSpec.model_validate({"objects": {"o": {"kind": "CT"}}, "cohort": "o"}))
