"""The query-side layout of the index: sorted tables, integer patient keys, derived columns.

Counts must not depend on it: the same synthetic rows (bench/query.py's generator) give the oracle's
counts after ``optimize`` sorted them, after rows lost their derived columns (plain SQL appends),
and after an index written by schema 1 was upgraded in place.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cohort.errors import CohortError
from cohort.index.compile_duck import evaluate
from cohort.index.duck import DuckIndex
from cohort.spec import parse_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench" / "query.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_query"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("optimize") / "bench.duckdb"
    result = bench.build(path, 1500, chunk=500, keep_rows=True, seed=3)
    expected = {}
    oracle = bench.baseline_oracle(result.chunks)
    for name, text in bench.SPECS.items():
        expected[name] = oracle.evaluate(parse_text(text, catalog=None)).to_json()
    result.index.close()
    return path, expected


def _counts(index: DuckIndex, bench) -> dict[str, object]:
    return {name: evaluate(index, parse_text(text, catalog=None)).to_json()
            for name, text in bench.SPECS.items()}


def test_sorted_index_gives_the_oracles_counts(built, bench) -> None:
    path, expected = built
    with DuckIndex(path, read_only=True) as index:
        assert _counts(index, bench) == expected
        # optimize sorted items by field: one field's rows are contiguous
        runs = index.scalar("SELECT count(*) FROM (SELECT field, lag(field) OVER () AS prev FROM items) "
                            "WHERE prev IS DISTINCT FROM field")
        assert runs == index.scalar("SELECT count(DISTINCT field) FROM items")


def test_rows_without_derived_columns_are_filled(built, bench, tmp_path) -> None:
    path, expected = built
    copy = tmp_path / "raw.duckdb"
    copy.write_bytes(path.read_bytes())
    with DuckIndex(copy) as index:
        # what a plain SQL append leaves: no pid / kind / template
        index.con.execute("UPDATE entities SET pid = NULL WHERE entity_id % 3 = 0")
        index.con.execute("UPDATE items SET pid = NULL, template = NULL WHERE entity_id % 2 = 0")
        index.con.execute("UPDATE attributes SET pid = NULL, kind = NULL WHERE entity_id % 5 = 0")
        index.con.execute("CHECKPOINT")
    with DuckIndex(copy, read_only=True) as index, pytest.raises(CohortError, match="read-only"):
        evaluate(index, parse_text(bench.SPECS["nested_three"], catalog=None))
    with DuckIndex(copy) as index:
        assert _counts(index, bench) == expected
        assert index.scalar("SELECT count(*) FROM entities WHERE pid IS NULL") == 0
        assert index.scalar("SELECT count(*) FROM patients") == 1500


def test_schema_1_index_is_upgraded(built, bench, tmp_path) -> None:
    path, expected = built
    copy = tmp_path / "v1.duckdb"
    copy.write_bytes(path.read_bytes())
    with DuckIndex(copy) as index:
        con = index.con
        for table, cols in {"entities": ["pid"], "attributes": ["pid", "kind"], "items": ["pid", "template"],
                            "segments": ["pid"]}.items():
            for col in cols:
                con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
        con.execute("DROP TABLE patients")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        con.execute("CHECKPOINT")
    with DuckIndex(copy, read_only=True) as index:  # upgraded once in place, then read
        assert _counts(index, bench) == expected


def test_optimize_is_lazy_and_appends_stay_exact(built, bench, tmp_path) -> None:
    path, _ = built
    copy = tmp_path / "lazy.duckdb"
    copy.write_bytes(path.read_bytes())
    with DuckIndex(copy) as index:
        assert index.optimize() == []  # nothing appended since the last sort
        assert set(index.optimize(force=True)) == {"entities", "attributes", "items", "segments", "patients"}
