"""A store keeps working after it moves: the index names its files relative to the store.

The site image reads a host-ingested store at another mount point (``/site/store``), and stores get
copied between machines. These tests use a real store that was ingested in one folder, which was then
renamed: the files its index names exist under the new folder, ``cohort export`` reads them there, and
re-ingesting the same raw folder at the new place changes nothing. Indexes written by schema 2
(absolute paths) are upgraded, also when they were written at a folder that no longer exists.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.index.duck import INDEX_FILE, DuckIndex
from cohort.index.file_keys import moved_root
from cohort.index.publish import SnapshotIndex
from cohort.index.schema import SCHEMA_VERSION
from cohort.ingest.run import ingest_folder
from cohort.siteconfig import SiteConfig, load_site_config
from cohort.store import Store
from cohort.synth.profiles import profile_for_site
from cohort.synth.site import synthesize_site

MISSION = Path(__file__).resolve().parent.parent / "configs" / "cohort" / "pacemaker_tavi.yaml"
runner = CliRunner()
_register()


@dataclass(frozen=True)
class MovedSite:
    site: SiteConfig
    raw_dir: Path
    store: Path  # ingested at another folder, then moved here: the first folder no longer exists


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> MovedSite:
    out = tmp_path_factory.mktemp("moving")
    written = synthesize_site(profile_for_site(1), 10, 7, out / "synth")
    cfg = load_site_config(written.site_config)
    first = out / "first" / "store"
    ingest_folder(written.raw_dir, first, cfg)
    store = out / "mounted" / "elsewhere" / "store"
    store.parent.mkdir(parents=True)
    first.rename(store)
    first.parent.rmdir()
    return MovedSite(cfg, written.raw_dir, store)


def _copy(moved: MovedSite, tmp_path: Path) -> Path:
    """A copy of the moved store, for a test that changes it."""
    shutil.copytree(moved.store, tmp_path / "store")
    return tmp_path / "store"


def _paths(index: DuckIndex) -> list[str]:
    return [r[0] for r in index.con.execute("SELECT path FROM ingested UNION ALL SELECT path FROM entities").fetchall()]


def test_a_moved_store_finds_every_file_through_its_index(moved) -> None:
    store = moved.store
    with DuckIndex.for_store(store, read_only=True) as index:
        keys = _paths(index)
        assert keys and not [k for k in keys if k.startswith("/")]  # every stored file: store-relative
        files = {index.file_path(k) for k in keys}
        assert all(f.is_file() and f.is_relative_to(store) for f in files)
        assert {index.file_path(k) for k, in index.con.execute("SELECT path FROM ingested").fetchall()} \
            == set(Store(store).files())
        uids = [r[0] for r in index.con.execute("SELECT series_uid FROM entities WHERE kind = 'CT' LIMIT 3").fetchall()]
        for uid, found in index.files_of(uids).items():
            assert found and all(f.is_file() and f.is_relative_to(store) for f in found), uid


def test_export_from_a_moved_store_reads_its_files_at_the_new_folder(moved, tmp_path) -> None:
    # cohort export reads every chosen CT series and ECG from the store (the old folder is gone).
    store = moved.store
    out = tmp_path / "x"
    res = runner.invoke(app, ["export", "--store", str(store), "--spec", str(MISSION), "--out", str(out)])
    assert res.exit_code == 0, res.output
    datalist = json.loads((out / "datalist.json").read_text())
    entries = [e for key in ("training", "validation") for e in datalist.get(key, [])]
    written = [entry[k] for entry in entries for k in ("ct", "ecg") if entry.get(k)]
    assert any(w.startswith("ct/") for w in written) and any(w.startswith("ecg/") for w in written)
    assert all((out / w).stat().st_size > 0 for w in written)


def test_reingest_at_the_new_place_changes_nothing(moved, tmp_path) -> None:
    store = _copy(moved, tmp_path)
    before = (store / INDEX_FILE).read_bytes()
    report = ingest_folder(moved.raw_dir, store, moved.site)
    assert report.this_run["processed"] == 0 and not report.quarantined
    assert (store / INDEX_FILE).read_bytes() == before  # nothing re-indexed, nothing published


def _as_schema_2(store: Path, old_root: str) -> None:
    """Rewrite the store's index as schema 2 wrote it: absolute paths below ``old_root``."""
    with DuckIndex.for_store(store) as index:
        for table in ("ingested", "entities"):
            index.con.execute(f"UPDATE {table} SET path = ? || '/' || path WHERE NOT starts_with(path, '/')",
                              [old_root])
        index.con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        index.con.execute("CHECKPOINT")


def test_schema_2_index_of_a_store_that_moved_is_upgraded(moved, tmp_path) -> None:
    store = _copy(moved, tmp_path)
    outside = tmp_path / "pacs-export" / "one.dcm"  # indexed from outside the store: sorts before /var
    outside.parent.mkdir()
    shutil.copyfile(next(Store(moved.store).files()), outside)
    with DuckIndex.for_store(store) as index:
        index.remove([next(Store(store).files())])  # the same SOP instance, now only outside the store
        index.add_files([outside])
        expected = sorted(_paths(index))
    assert str(outside) in expected
    _as_schema_2(store, "/var/old-site/data/store")  # where the store was when schema 2 indexed it
    with SnapshotIndex.open(store) as snap:  # what the dashboard and the site's query open
        assert snap.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == SCHEMA_VERSION
        assert sorted(_paths(snap)) == expected
        assert all(snap.file_path(k).is_file() for k in expected)


def test_schema_2_index_in_place_is_upgraded(moved, tmp_path) -> None:
    store = _copy(moved, tmp_path)
    with DuckIndex.for_store(store, read_only=True) as index:
        expected = sorted(_paths(index))
    _as_schema_2(store, str(store))
    with DuckIndex.for_store(store, read_only=True) as index:  # upgraded once in place, then read
        assert sorted(_paths(index)) == expected


def test_files_outside_the_store_keep_their_absolute_path(moved, tmp_path) -> None:
    outside = tmp_path / "pacs-export" / "one.dcm"
    outside.parent.mkdir()
    shutil.copyfile(next(Store(moved.store).files()), outside)
    with DuckIndex.for_store(tmp_path / "other") as index:
        assert index.add_files([outside]).indexed == 1
        key, = [r[0] for r in index.con.execute("SELECT path FROM ingested").fetchall()]
        assert key == str(outside) and index.file_path(key) == outside
        assert index.remove([outside]) == 1


def test_moved_root_reads_the_old_folder_off_a_recorded_path(tmp_path) -> None:
    (tmp_path / "P1" / "S1").mkdir(parents=True)
    (tmp_path / "P1" / "S1" / "1.dcm").write_bytes(b"")
    assert moved_root("/old/site/store/P1/S1/1.dcm", tmp_path) == "/old/site/store"
    assert moved_root("/old/site/store/P2/S1/1.dcm", tmp_path) is None  # no tail of it is here
    assert moved_root(str(tmp_path / "P1" / "S1" / "1.dcm"), tmp_path) is None  # still where it was
