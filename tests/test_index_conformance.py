"""The shared conformance list on every backend: DuckDB, and OpenSearch live (the bundled node started by
the session fixture ``opensearch_url``, or the cluster at $COHORT_OPENSEARCH_URL)."""

from __future__ import annotations

import pytest

from cohort.errors import SpecError
from cohort.index.compile_duck import evaluate
from cohort.results import CohortCounts
from cohort.spec.model import CohortSpec
from tests.conformance_cases import CASES, Case, build_duck_index, build_objects


@pytest.fixture(scope="module")
def duck():
    index = build_duck_index()
    yield index
    index.close()


def check(case: Case, counts: CohortCounts) -> None:
    """Compare only what the case states."""
    if case.patients is not None:
        assert counts.patients == case.patients
    for name, n in case.subsets.items():
        assert counts.subsets[name].patients == n, name
    for name, (pos, neg, unk) in case.labels.items():
        sub = counts.subsets[name]
        assert (sub.positive, sub.negative, sub.unknown) == (pos, neg, unk), name
    for want, got in zip(case.distributions, counts.distributions, strict=True):
        assert {b.label: b.count for b in got.bins} == want


def test_the_list_is_broad_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    ops = {p["op"] for c in CASES for o in c.spec["objects"].values() for p in o.get("where", [])}
    assert ops >= {"=", "!=", "<", "<=", ">", ">=", "in", "contains", "exists"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_duckdb(case: Case, duck) -> None:
    spec = CohortSpec.model_validate(case.spec)
    if case.error:
        with pytest.raises(SpecError, match=case.error.replace("(", r"\(")):
            evaluate(duck, spec)
        return
    check(case, evaluate(duck, spec))


@pytest.fixture(scope="module")
def opensearch(opensearch_url: str):
    from cohort.index.opensearch_backend import OpenSearchBackend

    backend = OpenSearchBackend.connect(opensearch_url, index_name="cohort-conformance-test")
    backend.recreate(replicas=0)
    with build_duck_index() as duck_index:
        backend.index_from_duck(duck_index)
    yield backend
    backend.drop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_opensearch(case: Case, opensearch) -> None:
    spec = CohortSpec.model_validate(case.spec)
    if case.error:
        with pytest.raises(SpecError, match=case.error.replace("(", r"\(")):
            opensearch.evaluate(spec)
        return
    check(case, opensearch.evaluate(spec))


def test_fixture_has_every_patient(duck) -> None:
    assert duck.count_patients() == len({o.patient_id for o in build_objects()}) == 14
