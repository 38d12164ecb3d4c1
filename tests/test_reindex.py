"""`cohort reindex`: the index is a cache of the store, rebuilt from its files.

A lost or deleted ``index.duckdb`` comes back with the rows ingest wrote (row for row), a file gone from
the store is forgotten, and an unreadable file is named while the rest is indexed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.index.duck import INDEX_FILE, DuckIndex, index_rows
from cohort.index.publish import reindex
from cohort.store import Store

runner = CliRunner()
_register()


def _copy(site, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(site.store, store)
    return store


def _rows(store: Path, index_file: Path) -> dict[str, list[tuple[str, ...]]]:
    # "meta" holds the index's own bookkeeping (its published version), not rows of the store.
    return {t: r for t, r in index_rows(index_file, store).items() if t != "meta"}


def test_a_deleted_index_is_rebuilt_row_for_row(ingested_sites, tmp_path) -> None:
    store = _copy(ingested_sites[0], tmp_path)
    ingested = tmp_path / "ingested.duckdb"
    shutil.copyfile(store / INDEX_FILE, ingested)
    (store / INDEX_FILE).unlink()
    res = runner.invoke(app, ["reindex", "--store", str(store)])
    assert res.exit_code == 0, res.output
    files = len(list(Store(store).files()))
    assert f"{files} stored files added, 0 missing files removed, 0 SRs re-extracted" in " ".join(res.output.split())
    rebuilt = _rows(store, store / INDEX_FILE)
    assert rebuilt["entities"] and rebuilt == _rows(store, ingested)


def test_reindex_forgets_removed_files_and_names_unreadable_ones(ingested_sites, tmp_path) -> None:
    store = _copy(ingested_sites[1], tmp_path)
    files = list(Store(store).files())
    ecg = next(f for f in files if f.parent.name.startswith("ECG_"))
    with DuckIndex.for_store(store, read_only=True) as index:
        before = index.count_files()
        srs = index.scalar("SELECT count(*) FROM entities WHERE kind = 'SR'")
        ecg_uid = index.scalar("SELECT sop_uid FROM ingested WHERE path = ?", [index.file_key(ecg)])
    ecg.unlink()
    broken = ecg.parent / "1.2.3.dcm"
    broken.write_bytes(b"not DICOM at all")
    done = reindex(store)
    assert (done.added, done.removed, done.srs) == (0, 1, srs)
    assert [p for p, _ in done.failed] == [str(broken)]
    with DuckIndex.for_store(store, read_only=True) as index:
        assert index.count_files() == before - 1
        assert index.scalar("SELECT count(*) FROM entities WHERE sop_uid = ?", [ecg_uid]) == 0
