"""The DuckDB backend against the plain-Python oracle (tests/oracle.py) on one small DICOM store:
fixed specs with traps, then random valid specs from the project's Hypothesis strategy."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from cohort.index.catalog import field_catalog
from cohort.index.compile_duck import evaluate
from cohort.index.duck import DuckIndex
from cohort.spec import parse_text
from tests.oracle import Oracle
from tests.oracle_strategies import random_spec_strategy
from tests.test_oracle_unit import LBBB, LV, NO, RBBB, RV, TAVI, YES, Store


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    store = Store(tmp_path_factory.mktemp("oracle-store"))
    store.ecg_report("split", TAVI - timedelta(days=5), 130, ())
    store.ecg_report("split", TAVI - timedelta(days=6), 100, (LBBB,))
    store.ecg_report("both", TAVI - timedelta(days=40), 140, (LBBB, RBBB))
    store.ecg_report("secs", TAVI - timedelta(days=200), 0.122, (RBBB,), unit="s")
    store.ct("split", TAVI - timedelta(days=10), 0.6, slices=3)
    store.ct("both", TAVI - timedelta(days=3), 1.5)
    store.seg("split", [(LV, "MANUAL"), (RV, "AUTOMATIC")])
    store.seg("both", [(LV, "AUTOMATIC")])
    store.seg("both", [(RV, "MANUAL")])
    store.procedures("split", TAVI, YES)
    store.procedures("both", TAVI, NO)
    store.procedures("secs", TAVI, None)
    index = DuckIndex()
    index.add_files(sorted((store.root / "dicom").glob("*.dcm")))
    yield index, Oracle(store.root / "dicom")
    index.close()


FIXED = [
    "e := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB]; cohort e",
    "e := SR:ecg_report[qrs_duration >= 0.12 s]; cohort e",
    "e := SR:ecg_report[ecg_finding != LBBB]; cohort e",
    "s := SEG[{segment_type = LV, algorithm_type = MANUAL}]; cohort s",
    "s := SEG[segment_type = LV, segment_type = RV]; cohort s",
    "c := CT[n_instances = 3]; cohort c",
    # An attribute (not SR content) under a template: only that template's documents may match.
    "p := SR:procedures[completion_flag exists]; cohort p",
    "e := SR:ecg_report within -30..0 days of t; t := SR:procedures; cohort e",
    "e := SR:ecg_report[ecg_finding exists false]; cohort e",
    "e := SR:ecg_report[ecg_finding exists true, qrs_duration exists]; cohort e",
    "e := SR:ecg_report[{qrs_duration >= 120, ecg_finding exists false}]; cohort e",
]


def test_exists_false_is_about_the_whole_entity(pair) -> None:
    index, oracle = pair
    # "both" has a 140 ms QRS and findings in another container of the same report: not absent.
    spec = parse_text("e := SR:ecg_report[{qrs_duration >= 120, ecg_finding exists false}]; cohort e",
                      catalog=field_catalog())
    assert evaluate(index, spec).patients == oracle.evaluate(spec).patients == 1


@pytest.mark.parametrize("text", FIXED)
def test_fixed_specs_agree_with_the_oracle(pair, text: str) -> None:
    index, oracle = pair
    spec = parse_text(text, catalog=None, validate=False)
    assert evaluate(index, spec).to_json() == oracle.evaluate(spec).to_json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=random_spec_strategy(field_catalog(), {
    "qrs_duration": [100, 122, 130, 140], "ecg_finding": ["LBBB", "RBBB"], "slice_thickness": [0.6, 1.5],
    "segment_type": ["LV", "RV"], "algorithm_type": ["MANUAL", "AUTOMATIC"], "date": ["2022-05-22"],
    "tavi_date": ["2022-06-01"], "n_instances": [1, 3]}))
def test_random_specs_agree_with_the_oracle(pair, data) -> None:
    index, oracle = pair
    assert evaluate(index, data).to_json() == oracle.evaluate(data).to_json()
