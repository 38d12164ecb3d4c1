"""The DuckDB index against the plain-Python oracle on a real synthesized and ingested consortium.

The store comes from the session fixture ``ingested_sites`` (tests/conftest.py: two sites built with
``synthesize_consortium`` and ``ingest_folder``), so it holds what real ingest writes: every ECG
format converted, registry and procedure SRs from CSV, SEGs, landmarks, free-text reports. The
index reads the store's ``index.duckdb``; the oracle reads the DICOM files with pydicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.index.catalog import FieldInfo, field_catalog
from cohort.index.compile_duck import category_label, evaluate, values_sql
from cohort.index.duck import DuckIndex
from cohort.spec import load_spec
from cohort.spec.model import CohortSpec
from tests.oracle import Oracle
from tests.oracle_strategies import random_spec_strategy

MISSION_SPECS = sorted((Path(__file__).resolve().parents[1] / "configs" / "cohort").glob("*.yaml"))
_SAMPLES_PER_FIELD = 8

pytestmark = pytest.mark.slow


def _samples(index: DuckIndex, fi: FieldInfo) -> list[Any]:
    """Up to a few values of ``fi`` present in the index, written the way a spec writes them."""
    rows = index.con.execute(f"SELECT DISTINCT num, text, code_value, code_scheme, code_meaning, date "
                             f"FROM ({values_sql(fi)}) ORDER BY ALL LIMIT {_SAMPLES_PER_FIELD}").fetchall()
    out: list[Any] = []
    for num, text, code, scheme, meaning, day in rows:
        if fi.value_type == "numeric" and num is not None:
            out.append(float(num))
        elif fi.value_type == "coded" and code is not None:
            out.append(category_label(fi, code, scheme, meaning))
        elif fi.value_type == "text" and text is not None:
            out.append(text)
        elif fi.value_type == "date" and day is not None:
            out.append(day.isoformat())
    return out


class Pair:
    """One site's store seen by both evaluators."""

    def __init__(self, store: Path) -> None:
        self.index = DuckIndex.for_store(store, read_only=True)
        self.oracle = Oracle(store / "dicom")

    def agree(self, spec: CohortSpec) -> None:
        assert evaluate(self.index, spec).to_json() == self.oracle.evaluate(spec).to_json(), spec.to_dict()


@pytest.fixture(scope="module")
def pairs(ingested_sites) -> Sequence[Pair]:  # type: ignore[no-untyped-def]
    made = [Pair(site.store) for site in ingested_sites]
    yield made
    for pair in made:
        pair.index.close()


@pytest.fixture(scope="module")
def samples(pairs: Sequence[Pair]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        for name, fi in pair.index.catalog.items():
            out.setdefault(name, [])
            out[name] += [v for v in _samples(pair.index, fi) if v not in out[name]]
    return out


def test_store_has_every_kind_of_object(pairs: Sequence[Pair]) -> None:
    for pair in pairs:
        kinds = {e.kind for e in pair.oracle.entities}
        assert {"CT", "ECG", "SR", "SEG"} <= kinds
        # the index and the oracle see the same entities
        assert pair.index.count_entities() == len(pair.oracle.entities)
        assert pair.index.count_patients() == len({e.patient for e in pair.oracle.entities})


@pytest.mark.parametrize("path", MISSION_SPECS, ids=[p.stem for p in MISSION_SPECS])
def test_mission_specs_give_the_oracles_counts(pairs: Sequence[Pair], path: Path) -> None:
    spec = load_spec(path, catalog=field_catalog())
    for pair in pairs:
        pair.agree(spec)


def test_mission_cohort_is_not_empty(pairs: Sequence[Pair]) -> None:
    mission = MISSION_SPECS[[p.stem for p in MISSION_SPECS].index("pacemaker_tavi")]
    spec = load_spec(mission, catalog=field_catalog())
    assert sum(evaluate(p.index, spec).patients for p in pairs) > 0


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_specs_agree_with_the_oracle(pairs: Sequence[Pair], samples: dict[str, list[Any]], data) -> None:  # type: ignore[no-untyped-def]
    spec = data.draw(random_spec_strategy(field_catalog(), samples))
    for pair in pairs:
        pair.agree(spec)
