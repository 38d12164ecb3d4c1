"""Published index versions: writers build a new index file and swap it in; readers see whole versions.

A store's ``index.duckdb`` is only ever replaced, never written in place, by ``update_index``:

1. take the store's writer lock (``STORE/.index.lock``; a second writer waits for the first),
2. copy the published file to ``STORE/.index-new-<pid>.duckdb`` and open the copy for writing,
3. the caller adds files / reindexes on the copy; the new version number goes into its ``meta`` table,
4. checkpoint and close it, ``os.replace`` it over ``index.duckdb`` (atomic on one file system),
   then write the version marker ``STORE/index.version`` (the same way).

A reader that opened the old file keeps reading it whole (its open file is not touched by the rename),
and a reader that opens after step 4 reads the new file whole: nobody sees a mix. If the writer fails
or is killed, the published index is unchanged and the copy is removed (on the next write at the latest).

Readers that stay open (the dashboard) poll ``index_version`` and open the new version with
``SnapshotIndex``: an in-memory DuckDB database that attaches the file read-only, so it opens
the current file even when this process still holds the previous one (DuckDB caches databases by
path), its cursors can run queries side by side, and it can hold tables of its own (chart tables).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cohort.errors import CohortError
from cohort.index.catalog import FieldInfo, store_template_dirs
from cohort.index.duck import INDEX_FILE, DuckIndex, Progress
from cohort.index.schema import TABLES
from cohort.store import Store

VERSION_FILE = "index.version"
LOCK_FILE = ".index.lock"
WORK_PREFIX = ".index-new-"
VERSION_KEY = "index_version"
SNAPSHOT_CATALOG = "idx"  # the attached index inside a SnapshotIndex
OWN_CATALOG = "memory"  # the snapshot's own in-memory database (writable tables)


@dataclass(frozen=True)
class IndexVersion:
    """Which published index a store holds: the marker's number and the file's identity."""

    number: int  # 0 for an index written before versions existed (or by DuckIndex directly)
    file_id: tuple[int, int, int]  # (inode, mtime ns, size) of index.duckdb; changes with every swap
    published: str = ""  # when the file was written (local time)

    @property
    def token(self) -> str:
        """A short string that changes whenever the published index does."""
        return f"{self.number}-{self.file_id[0]:x}{self.file_id[1]:x}"


def index_version(store: str | Path) -> IndexVersion | None:
    """The published index version of ``store``, or None when it has no index file (cheap: two stats)."""
    store = Path(store)
    try:
        st = (store / INDEX_FILE).stat()
    except FileNotFoundError:
        return None
    number = 0
    try:
        number = int(json.loads((store / VERSION_FILE).read_text(encoding="utf-8")).get("version", 0))
    except (FileNotFoundError, ValueError, TypeError, AttributeError):
        pass
    published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    return IndexVersion(number, (st.st_ino, st.st_mtime_ns, st.st_size), published)


def _read_version(con: duckdb.DuckDBPyConnection) -> int:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = ?", [VERSION_KEY]).fetchone()
    except duckdb.Error:
        return 0
    return int(row[0]) if row else 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _writer_lock(store: Path) -> Iterator[None]:
    with open(store / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second writer waits here for the first to publish
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """Rows per table and the indexed files with their mtimes: what adding or removing files changes."""
    counts = tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES)
    files = con.execute("SELECT sum(hash(path, mtime)) FROM ingested").fetchone()
    return (*counts, files)


@contextmanager
def update_index(store: str | Path, *, publish_unchanged: bool = False) -> Iterator[DuckIndex]:
    """A writable copy of ``store``'s index, published atomically (with a new version) when the block ends.

    A copy whose files and row counts did not change is not published (re-running an ingest on the
    same inputs leaves the version as it was) unless ``publish_unchanged`` (a reindex). On an
    exception the published index stays as it was and the copy is deleted.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    published = store / INDEX_FILE
    with _writer_lock(store):
        for stale in store.glob(f"{WORK_PREFIX}*"):  # left by a killed writer (we hold the lock)
            stale.unlink(missing_ok=True)
        if Path(f"{published}.wal").exists():
            # Written in place by an older version and not checkpointed: fold the log in first.
            DuckIndex(published).close()
        work = store / f"{WORK_PREFIX}{os.getpid()}.duckdb"
        if published.exists():
            shutil.copyfile(published, work)
        try:
            index = DuckIndex(work)
            publish = True
            try:
                before = _fingerprint(index.con) if published.exists() else None
                yield index
                publish = publish_unchanged or before != _fingerprint(index.con)
                version = _read_version(index.con) + 1
                if publish:
                    index.con.execute("DELETE FROM meta WHERE key = ?", [VERSION_KEY])
                    index.con.execute("INSERT INTO meta VALUES (?, ?)", [VERSION_KEY, str(version)])
                    index.con.execute("CHECKPOINT")
            finally:
                index.close()
            if not publish:
                return
            os.replace(work, published)
            _fsync_dir(store)
            # Only the number: two stores built from the same inputs stay byte-identical.
            _write_atomic(store / VERSION_FILE, json.dumps({"version": version}) + "\n")
        finally:
            for leftover in (work, Path(f"{work}.wal")):
                leftover.unlink(missing_ok=True)


class SnapshotIndex(DuckIndex):
    """One published version of a store's index, read-only, attached to an in-memory database.

    Tables of its own go into ``memory.main`` (visible to every cursor); the index's tables are read
    by their plain names. ``cursor()`` gives another SnapshotIndex on the same database for a
    second thread (DuckDB connections are not shared between threads; cursors are).
    """

    def __init__(self, path: str | Path, *, template_dirs: Iterable[str | Path] = (),
                 con: duckdb.DuckDBPyConnection | None = None) -> None:
        # Not DuckIndex.__init__: that would connect to the file path itself (see the module docstring).
        self.path = str(path)
        own = store_template_dirs(Path(self.path).parent) if con is None else []
        self.template_dirs = (*template_dirs, *own)
        if con is None:
            con = duckdb.connect(":memory:")
            try:
                con.execute(f"ATTACH {_quote(self.path)} AS {SNAPSHOT_CATALOG} (READ_ONLY)")
            except duckdb.Error as exc:
                con.close()
                raise CohortError(f"cannot open index {self.path}: {exc}") from None
        self.con = con
        self.con.execute(f"USE {SNAPSHOT_CATALOG}")
        self.version = _read_version(self.con)
        self._catalog: dict[str, FieldInfo] | None = None

    @classmethod
    def open(cls, store: str | Path) -> SnapshotIndex:
        """The store's current published index (upgraded once by a writer when an older version wrote it)."""
        snap = cls(Path(store) / INDEX_FILE)
        if snap._outdated():
            snap.close()
            with update_index(store, publish_unchanged=True):
                pass  # DuckIndex upgrades the copy when it opens it; publishing makes it current
            snap = cls(Path(store) / INDEX_FILE)
        return snap

    def cursor(self) -> SnapshotIndex:
        """The same snapshot on a new connection (for another thread)."""
        twin = SnapshotIndex(self.path, template_dirs=self.template_dirs, con=self.con.cursor())
        twin._catalog = self._catalog
        return twin

    @property
    def catalog(self) -> dict[str, FieldInfo]:
        """The field catalog, read once (template configs are fixed while a snapshot is served)."""
        if self._catalog is None:
            self._catalog = dict(super().catalog)
        return self._catalog


@dataclass(frozen=True)
class ReindexReport:
    """What ``reindex`` did to the index."""

    added: int  # stored files the index lacked (every file, when the index was lost or deleted)
    removed: int  # indexed files no longer there
    failed: list[tuple[str, str]]  # stored files that could not be read, with the reason
    srs: int  # SRs already indexed whose items were extracted again


def reindex(store: str | Path, progress: Callable[[str, int, int], None] | None = None, *,
            workers: int = 1) -> ReindexReport:
    """Bring ``store``'s index in line with its files and extract every SR's items with the template configs
    in force; published as a new version like any update.

    The index is a cache of the store: files it lacks are indexed (all of them when ``index.duckdb`` was
    lost), files gone from the store are forgotten, and the SRs it already held are read again (after
    template configs changed). ``progress(stage, done, total)``; ``workers`` processes read the files.
    """
    def stage(name: str) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    files = list(Store(store).files())
    with update_index(store, publish_unchanged=True) as index:
        removed = index.remove(index.missing_files())
        first_new = index.next_entity_id()
        added = index.add_files(files, stage("indexing stored files"), workers=workers)
        srs = index.reindex(stage("re-extracting SR items"), before=first_new)
    return ReindexReport(added.indexed, removed, added.failed, srs)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


__all__ = ["IndexVersion", "ReindexReport", "SnapshotIndex", "index_version", "reindex", "update_index",
           "VERSION_FILE"]
