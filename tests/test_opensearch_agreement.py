"""OpenSearch counts of a synced store equal DuckDB counts, live (the bundled node or $COHORT_OPENSEARCH_URL).

Every spec of configs/cohort, every spec of the conformance corpus (tests/conformance_cases.py) and the
benchmark specs (bench/query.py) are evaluated on both backends and must give identical answers:
cohort size, every subset, every label cell, every distribution bin. Stores:

* the session's two ingested synthetic sites (real DICOM through `cohort ingest`, 10 patients each);
* a row-generated index (bench/query.py's generator: CT, ECGs, ECG reports, registry, procedures, SEG)
  of $COHORT_OPENSEARCH_AGREEMENT_PATIENTS patients (default 2000);
* any store named by $COHORT_OPENSEARCH_AGREEMENT_STORE (e.g. a 500-patient `cohort synth` site, or a
  site's own store before it moves its index).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.errors import SpecError
from cohort.index.compile_duck import evaluate
from cohort.index.duck import DuckIndex
from cohort.index.opensearch_backend import OpenSearchBackend
from cohort.spec import parse_text
from cohort.spec.load import load_spec
from cohort.spec.model import CohortSpec
from tests.conformance_cases import CASES

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = int(os.environ.get("COHORT_OPENSEARCH_AGREEMENT_PATIENTS", "2000"))


def all_specs() -> list[tuple[str, CohortSpec]]:
    from bench.query import SPECS as BENCH_SPECS

    specs = [(f"configs/{p.stem}", load_spec(p, catalog=None))
             for p in sorted((ROOT / "configs" / "cohort").glob("*.yaml"))]
    specs += [(f"case/{c.id}", CohortSpec.model_validate(c.spec)) for c in CASES]
    specs += [(f"bench/{name}", parse_text(text, catalog=None)) for name, text in BENCH_SPECS.items()]
    return specs


def _answer(fn: Any) -> Any:
    try:
        return fn().to_json()
    except SpecError as exc:
        return f"SpecError: {exc}"


def assert_agree(duck: DuckIndex, backend: OpenSearchBackend) -> dict[str, Any]:
    """Every spec answered identically by both backends; returns the answers (DuckDB's)."""
    answers, mismatches = {}, []
    catalog = duck.catalog
    for name, spec in all_specs():
        want = _answer(lambda spec=spec: evaluate(duck, spec))
        got = _answer(lambda spec=spec: backend.evaluate(spec, catalog))
        if want != got:
            mismatches.append(f"{name}:\n  duckdb     {want}\n  opensearch {got}")
        answers[name] = want
    assert not mismatches, "\n".join(mismatches)
    return answers


def _non_empty(answers: dict[str, Any]) -> int:
    return sum(1 for a in answers.values() if isinstance(a, dict) and a.get("patients"))


@pytest.fixture
def synced(opensearch_url: str) -> Iterator[Any]:
    """``synced(duck, name)``: a fresh index ``name`` on the live node holding ``duck``'s patients."""
    made: list[OpenSearchBackend] = []

    def sync(duck: DuckIndex, name: str) -> OpenSearchBackend:
        backend = OpenSearchBackend.connect(opensearch_url, index_name=name, timeout=120)
        backend.recreate(replicas=0)
        made.append(backend)
        assert backend.index_from_duck(duck) == duck.count_patients()
        return backend

    yield sync
    for b in made:
        b.drop()


def test_counts_agree_on_ingested_sites(ingested_sites, synced) -> None:
    for site in ingested_sites:
        with DuckIndex.for_store(site.store, read_only=True) as duck:
            answers = assert_agree(duck, synced(duck, f"agree-{site.site.site_id}".lower()))
        assert _non_empty(answers) >= 5, answers  # the specs select patients here, not only empty cohorts


def test_counts_agree_on_a_generated_site(tmp_path: Path, synced) -> None:
    from bench.query import build

    built = build(tmp_path / "gen.duckdb", PATIENTS, seed=3)
    try:
        answers = assert_agree(built.index, synced(built.index, "agree-generated"))
    finally:
        built.index.close()
    assert answers["bench/nested_three"]["patients"] > 0
    assert _non_empty(answers) >= 10


GIVEN = [Path(p) for p in os.environ.get("COHORT_OPENSEARCH_AGREEMENT_STORE", "").split(os.pathsep) if p]


if GIVEN:  # defined only when asked for, so that a plain run has nothing to skip
    @pytest.mark.parametrize("store", GIVEN, ids=[str(p) for p in GIVEN])
    def test_counts_agree_on_a_given_store(store: Path, synced) -> None:
        with DuckIndex.for_store(store, read_only=True) as duck:
            n = duck.count_patients()
            answers = assert_agree(duck, synced(duck, "agree-store"))
        print(f"\n[agreement] {store}: {n} patients, {len(answers)} specs, {_non_empty(answers)} non-empty cohorts")
