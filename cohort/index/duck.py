"""The DuckDB index of a store: incremental indexing of DICOM files, counts, reindexing.

Rows are appended in batches through NumPy column arrays that DuckDB scans directly (about two
million rows per second here), instead of ``executemany`` (a few thousand per second). Each append
also fills the query-side columns (``schema.DERIVED``: the patient's integer ``pid``, the entity's
kind / template on its side rows) and the ``patients`` table.

``optimize()`` re-sorts the big tables (``schema.SORT_KEYS``) once enough rows were appended since
the last sort, so DuckDB's zone maps let a query read only the row groups of the fields it names;
``cohort ingest`` calls it after indexing. Queries are exact whether or not it ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from cohort.errors import CohortError
from cohort.index.catalog import FieldInfo, field_catalog, store_template_dirs
from cohort.index.extract import (
    Extracted,
    extract_file,
    extract_for_index,
    read_dataset,
    sr_rows,
    template_of,
)
from cohort.index.file_keys import file_key, file_path, moved_root, root_prefixes, store_root
from cohort.index.schema import (
    DERIVED,
    ENTITY_TABLES,
    IMAGE_KINDS,
    SCHEMA_VERSION,
    SORT_KEYS,
    TABLES,
    columns,
    ddl,
    kind_bits_sql,
    written_columns,
)
from cohort.index.templates import SR_VALUE_TYPES, TemplateConfig, load_templates
from cohort.processes import worker_context

INDEX_FILE = "index.duckdb"
Progress = Callable[[int, int], None]
_FLUSH_EVERY = 2000  # files per batch: bounds memory while keeping appends large
_NUMERIC = {"INTEGER", "DOUBLE", "BIGINT"}
ROW_GROUP_ROWS = 122_880  # DuckDB's row group size: the unit zone maps skip
RESORT_FRACTION = 0.1  # optimize() re-sorts a table once this share of it was appended unsorted


@dataclass
class AddReport:
    """What ``add_files`` did: files indexed, skipped as unchanged or duplicate, failed with reasons."""

    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class UnindexedPath:
    """An SR concept path present in the index that no template config names."""

    template: str | None
    concept_path: str
    value_type: str
    count: int


class _Batch:
    """Column buffers for every table, flushed with one INSERT per table."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}

    def __len__(self) -> int:
        return sum(len(v) for v in self.rows.values())

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        for table, rows in self.rows.items():
            if rows:
                append_rows(con, table, rows)
        self.rows = {t: [] for t in TABLES}


def append_rows(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append ``rows`` (tuples of the table's ``written_columns``, in order) to ``table`` in one statement.

    Derived columns are filled here: an entity's ``pid`` from ``patients`` (new patients are added
    and their ``kinds`` updated), a side row's ``pid`` / ``kind`` / ``template`` from its entity
    (appended before it, as ``_Batch.flush`` does).
    """
    written = written_columns(table)
    types = dict(TABLES[table])
    arrays: dict[str, np.ndarray] = {}
    for i, name in enumerate(written):
        sqltype = types[name]
        values = [r[i] for r in rows]
        if sqltype == "DOUBLE":
            arrays[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif sqltype in _NUMERIC:
            arrays[name] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        else:
            arrays[name] = np.array(values, dtype=object)
    select = ", ".join(f"CAST(b.{n} AS {types[n]})" if types[n] in ("DATE", "TIMESTAMP") else f"b.{n}"
                       for n in written)
    derived = DERIVED.get(table, ())
    con.register("_batch", arrays)
    try:
        if table == "entities":
            _add_patients(con, "SELECT DISTINCT patient_id FROM _batch")
            con.execute(f"INSERT INTO entities ({', '.join(written)}, pid) SELECT {select}, p.pid FROM _batch b "
                        f"LEFT JOIN patients p ON p.patient_id IS NOT DISTINCT FROM b.patient_id")
            con.execute(f"UPDATE patients SET kinds = patients.kinds | k.bits FROM (SELECT p.pid, "
                        f"bit_or({kind_bits_sql('b.kind')}) AS bits FROM _batch b JOIN patients p "
                        f"ON p.patient_id IS NOT DISTINCT FROM b.patient_id GROUP BY p.pid) k WHERE patients.pid = k.pid")
        elif derived:
            con.execute(f"INSERT INTO {table} ({', '.join(written)}, {', '.join(derived)}) SELECT {select}, "
                        f"{', '.join(f'e.{c}' for c in derived)} FROM _batch b "
                        f"LEFT JOIN entities e ON e.entity_id = b.entity_id")
        else:
            con.execute(f"INSERT INTO {table} ({', '.join(written)}) SELECT {select} FROM _batch b")
    finally:
        con.unregister("_batch")
    if table in SORT_KEYS:
        _bump(con, f"unsorted_rows:{table}", len(rows))


def _add_patients(con: duckdb.DuckDBPyConnection, patient_ids_sql: str) -> None:
    """Give the patients of ``patient_ids_sql`` (one column ``patient_id``) not yet known a ``pid``."""
    con.execute(f"INSERT INTO patients SELECT CAST((SELECT coalesce(max(pid), 0) FROM patients) "
                f"+ row_number() OVER (ORDER BY n.patient_id) AS INTEGER), n.patient_id, 0 "
                f"FROM (SELECT DISTINCT patient_id FROM ({patient_ids_sql})) n WHERE NOT EXISTS "
                f"(SELECT 1 FROM patients p WHERE p.patient_id IS NOT DISTINCT FROM n.patient_id)")


def _bump(con: duckdb.DuckDBPyConnection, key: str, n: int) -> None:
    row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    if row is None:
        con.execute("INSERT INTO meta VALUES (?, ?)", [key, str(n)])
    else:
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(int(row[0]) + n), key])


def _refresh_kinds(con: duckdb.DuckDBPyConnection, pids_sql: str | None = None) -> None:
    """Recompute ``patients.kinds`` (of the pids ``pids_sql`` selects, else all) and drop patients left
    without entities."""
    scope = f" AND pid IN ({pids_sql})" if pids_sql else ""
    con.execute(f"UPDATE patients SET kinds = coalesce((SELECT bit_or({kind_bits_sql('e.kind')}) FROM entities e "
                f"WHERE e.pid = patients.pid), 0) WHERE TRUE{scope}")
    con.execute(f"DELETE FROM patients WHERE kinds = 0{scope}")


def missing_derived(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables with rows whose derived columns are not filled (rows appended by plain SQL)."""
    parts = " UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT 1 FROM {t} WHERE pid IS NULL)" for t in DERIVED)
    return [r[0] for r in con.execute(parts).fetchall()]


class DuckIndex:
    """The index file of one store; use as a context manager or call ``close``."""

    def __init__(self, path: str | Path = ":memory:", *, template_dirs: Iterable[str | Path] = (),
                 read_only: bool = False) -> None:
        self.path = str(path)
        extra = tuple(template_dirs)
        own = store_template_dirs(Path(self.path).parent) if self.path != ":memory:" else []
        self.template_dirs = (*extra, *own)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as exc:
            raise CohortError(f"cannot open index {self.path}: {exc}; is another process writing it?") from None
        if not read_only:
            for stmt in ddl():
                self.con.execute(stmt)
            self._upgrade()
        elif self._outdated():
            # An index written by an older version: upgrade it once in place, then read it.
            self.con.close()
            try:
                with DuckIndex(self.path, template_dirs=extra):
                    pass
                self.con = duckdb.connect(self.path, read_only=True)
            except (duckdb.Error, CohortError) as exc:
                raise CohortError(f"index {self.path} was written by an older version and must be upgraded "
                                  f"once by a writer (e.g. 'cohort reindex'); that failed: {exc}") from None

    def _outdated(self) -> bool:
        try:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.Error:
            return False  # no tables at all: nothing to read, nothing to upgrade
        return row is not None and row[0] != SCHEMA_VERSION

    def _upgrade(self) -> None:
        """Create what an older index lacks (schema 1: pids, derived columns, ``patients``) and fill it."""
        row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == SCHEMA_VERSION:
            return
        have = {(t, c) for t, c in self.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
            "AND table_catalog = current_database()").fetchall()}
        for table, cols in TABLES.items():
            for name, sqltype in cols:
                if (table, name) not in have:
                    self.con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sqltype}")
        self.fill_derived()
        self._relativise_paths()
        self.con.execute("DELETE FROM meta WHERE key = 'schema_version'")
        self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])

    def _relativise_paths(self) -> None:
        """Schema 3: files inside the store are named relative to it (``file_keys``). Older indexes held
        absolute paths, of this folder or of wherever the store was when it was indexed."""
        root = self._file_root
        if root is None:
            return
        prefixes = set(root_prefixes(root))
        # A few recorded paths outside this folder: files of the store where it was before (the first whose
        # tail exists here tells where that was), or files indexed from outside the store (still there).
        here = " OR ".join(["starts_with(path, ?)"] * len(prefixes))
        outside = self.con.execute(f"SELECT path FROM ingested WHERE starts_with(path, '/') AND NOT ({here}) "
                                   "ORDER BY path LIMIT 20", sorted(prefixes)).fetchall()
        for (recorded,) in outside:
            old = moved_root(recorded, root)
            if old is not None:
                prefixes.add(f"{old.rstrip('/')}/")
                break
        for prefix in sorted(prefixes, key=len, reverse=True):
            for table in ("ingested", "entities"):
                self.con.execute(f"UPDATE {table} SET path = substr(path, ?) WHERE starts_with(path, ?)",
                                 [len(prefix) + 1, prefix])

    @cached_property
    def _file_root(self) -> Path | None:
        return store_root(self.path)

    @cached_property
    def _file_prefixes(self) -> tuple[str, ...]:
        root = self._file_root
        return root_prefixes(root) if root is not None else ()

    def file_key(self, path: str | Path) -> str:
        """How this index names the file at ``path`` (relative to the store when inside it)."""
        return file_key(self._file_prefixes, path)

    def file_path(self, key: str) -> Path:
        """The file that the index's ``path`` value ``key`` names."""
        return file_path(self._file_root, key)

    @classmethod
    def for_store(cls, store: str | Path, *, read_only: bool = False) -> DuckIndex:
        """The index of ``store`` (``STORE/index.duckdb``, store-local configs in ``STORE/templates``)."""
        store = Path(store)
        store.mkdir(parents=True, exist_ok=True)
        return cls(store / INDEX_FILE, read_only=read_only)

    def __enter__(self) -> DuckIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database file."""
        self.con.close()

    @property
    def templates(self) -> dict[str, TemplateConfig]:
        """Template configs in force for this index (package, environment and store-local ones)."""
        return load_templates(self.template_dirs)

    @property
    def catalog(self) -> dict[str, FieldInfo]:
        """The field catalog for this index's template configs."""
        return field_catalog(self.template_dirs)

    # --- writing --------------------------------------------------------------------------------

    def add_files(self, paths: Iterable[str | Path], progress: Progress | None = None, *,
                  workers: int = 1, extracted: Mapping[str, Extracted] | None = None) -> AddReport:
        """Index DICOM files; unchanged files (same path and mtime) and known SOP instances are skipped.

        ``workers`` > 1 reads files in that many processes (reading DICOM is the slow part).
        ``extracted`` holds rows already extracted by whoever wrote the files (ingest), by path: those
        files are not read, except an image whose record is ``identity_only`` and whose series is new.
        """
        files = [Path(p) for p in paths]
        keys = {p: self.file_key(p) for p in files}
        report = AddReport()
        known = dict(self.con.execute("SELECT path, mtime FROM ingested").fetchall())
        changed = [p for p in files if keys[p] in known and known[keys[p]] != p.stat().st_mtime]
        if changed:
            self.remove(changed)
            for p in changed:
                del known[keys[p]]
        sops = {r[0] for r in self.con.execute("SELECT sop_uid FROM ingested").fetchall()}
        series = {r[0]: r[1] for r in self.con.execute(
            "SELECT series_uid, entity_id FROM entities WHERE kind IN ?", [list(IMAGE_KINDS)]).fetchall()}
        next_id = self.next_entity_id()
        batch = _Batch()
        increments: dict[int, int] = {}
        todo = [p for p in files if keys[p] not in known]
        report.unchanged = len(files) - len(todo)
        done = report.unchanged
        templates: dict[str, TemplateConfig] | None = None  # for the files read here, loaded once
        for path, ex, error in _records(todo, self.template_dirs, workers, extracted or {}):
            key = keys[path]
            if ex is not None and ex.identity_only and ex.series_uid not in series:
                templates = templates if templates is not None else load_templates(self.template_dirs)
                ex, error = _extract_with(str(path), templates)  # a new series: its rows come from its file
            if ex is None:
                report.failed.append((str(path), f"not a readable DICOM file: {error}"))
            elif ex.sop_uid in sops:
                report.duplicates += 1
            else:
                sops.add(ex.sop_uid)
                if ex.per_series and ex.series_uid in series:
                    eid = series[ex.series_uid]
                    increments[eid] = increments.get(eid, 0) + 1
                else:
                    eid = next_id
                    next_id += 1
                    if ex.per_series:
                        series[ex.series_uid] = eid
                    _queue_entity(batch, eid, ex, key)
                batch.rows["ingested"].append((key, path.stat().st_mtime, ex.sop_uid, eid))
                report.indexed += 1
            done += 1
            if done % _FLUSH_EVERY == 0:
                self._flush(batch, increments)
                increments = {}
            if progress is not None:
                progress(done, len(files))
        self._flush(batch, increments)
        if progress is not None and not todo:
            progress(len(files), len(files))
        return report

    def add_extracted(self, objects: Iterable[tuple[Extracted, str]]) -> list[int]:
        """Index already extracted objects (with their file paths); returns their entity ids."""
        batch = _Batch()
        ids = []
        next_id = self.next_entity_id()
        for ex, path in objects:
            key = self.file_key(path)
            _queue_entity(batch, next_id, ex, key)
            batch.rows["ingested"].append((key, 0.0, ex.sop_uid, next_id))
            ids.append(next_id)
            next_id += 1
        self._flush(batch, {})
        return ids

    def next_entity_id(self) -> int:
        """The id the next indexed entity gets."""
        return int(self.scalar("SELECT coalesce(max(entity_id), 0) + 1 FROM entities"))

    def missing_files(self) -> list[Path]:
        """Indexed files that no longer exist."""
        paths = (self.file_path(k) for (k,) in self.con.execute("SELECT path FROM ingested").fetchall())
        return [p for p in paths if not p.exists()]

    def scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        """The first column of the one row ``sql`` returns (aggregates always return a row)."""
        row = self.con.execute(sql, list(params)).fetchone()
        if row is None:
            raise RuntimeError(f"query returned no row: {sql}")
        return row[0]

    def _flush(self, batch: _Batch, increments: dict[int, int]) -> None:
        self.con.execute("BEGIN")
        try:
            batch.flush(self.con)
            if increments:
                self.con.executemany("UPDATE entities SET n_instances = n_instances + ? WHERE entity_id = ?",
                                     [(k, e) for e, k in increments.items()])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Forget the files at ``paths``; entities left without files are deleted. Returns files removed."""
        keys = [self.file_key(p) for p in paths]
        if not keys:
            return 0
        rows = self.con.execute("SELECT entity_id, count(*) FROM ingested WHERE path IN ? GROUP BY entity_id",
                                [keys]).fetchall()
        self.con.execute("BEGIN")
        try:
            self.con.execute("DELETE FROM ingested WHERE path IN ?", [keys])
            for eid, k in rows:
                self.con.execute("UPDATE entities SET n_instances = n_instances - ? WHERE entity_id = ?", [k, eid])
            gone = self.con.execute("SELECT entity_id, pid FROM entities WHERE n_instances <= 0").fetchall()
            if gone:
                ids = [r[0] for r in gone]
                for table in (*ENTITY_TABLES, "entities"):
                    self.con.execute(f"DELETE FROM {table} WHERE entity_id IN ?", [ids])
                pids = sorted({r[1] for r in gone if r[1] is not None})
                if pids:
                    _refresh_kinds(self.con, "SELECT unnest(" + repr(pids) + ")")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return sum(k for _, k in rows)

    def reindex(self, progress: Progress | None = None, *, before: int | None = None) -> int:
        """Re-extract SR items from the stored files after template configs changed; returns SRs read.

        ``before``: only entities with a smaller id (those from ``next_entity_id()`` on were just indexed
        with the configs in force, and keep their rows).
        """
        templates = self.templates
        limit = before if before is not None else self.next_entity_id()
        srs = self.con.execute("SELECT entity_id, path FROM entities WHERE kind = 'SR' AND entity_id < ? "
                               "ORDER BY entity_id", [limit]).fetchall()
        batch = _Batch()
        new_templates: list[tuple[str | None, int]] = []
        for n, (eid, path) in enumerate(srs, 1):
            ds = read_dataset(self.file_path(path))
            key = template_of(ds, templates)
            items, concepts, _ = sr_rows(ds, templates.get(key) if key else None)
            batch.rows["items"] += [(eid, *r) for r in items]
            batch.rows["concepts"] += [(eid, *c) for c in concepts]
            new_templates.append((key, eid))
            if progress is not None:
                progress(n, len(srs))
        self.con.execute("BEGIN")
        try:
            self.con.execute("DELETE FROM items WHERE entity_id < ?", [limit])
            self.con.execute("DELETE FROM concepts WHERE entity_id < ?", [limit])
            if new_templates:  # before the items: they take their entity's template
                self.con.executemany("UPDATE entities SET template = ? WHERE entity_id = ?", new_templates)
            batch.flush(self.con)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.optimize()
        return len(srs)

    # --- query-side upkeep ----------------------------------------------------------------------

    def fill_derived(self) -> int:
        """Fill the derived columns of rows appended by plain SQL (``pid`` NULL): new patients get a
        ``pid``, side rows their entity's ``pid`` / ``kind`` / ``template``; side rows of no entity
        (unreachable by any query) are dropped. Returns the rows fixed."""
        con, fixed = self.con, 0
        missing = missing_derived(con)
        if not missing:
            return 0
        con.execute("BEGIN")
        try:
            if "entities" in missing:
                _add_patients(con, "SELECT patient_id FROM entities WHERE pid IS NULL")
                fixed += _changed(con.execute(
                    "UPDATE entities SET pid = p.pid FROM patients p WHERE entities.pid IS NULL "
                    "AND p.patient_id IS NOT DISTINCT FROM entities.patient_id"))
                _refresh_kinds(con)
            for table in missing:
                if table == "entities":
                    continue
                sets = ", ".join(f"{c} = e.{c}" for c in DERIVED[table])
                fixed += _changed(con.execute(f"UPDATE {table} SET {sets} FROM entities e WHERE {table}.pid IS NULL "
                                              f"AND e.entity_id = {table}.entity_id"))
                con.execute(f"DELETE FROM {table} WHERE pid IS NULL")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return fixed

    def optimize(self, *, force: bool = False) -> list[str]:
        """Keep the index fast to query after appends; returns the tables re-sorted.

        Fills derived columns missing after plain SQL appends (``fill_derived``), then rewrites each
        table of ``schema.SORT_KEYS`` in that order when the rows appended since its last sort are at
        least one row group and ``RESORT_FRACTION`` of the table (or always with ``force``). Appended
        rows are only slower to find (their row groups are not skipped), never missed, so this can
        run lazily: ``cohort ingest`` calls it after each indexing run, a bulk load once at the end.
        """
        self.fill_derived()
        done = []
        con = self.con
        for table, key in SORT_KEYS.items():
            total = int(self.scalar(f"SELECT count(*) FROM {table}"))
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                    [f"unsorted_rows:{table}", f"sorted_rows:{table}"]).fetchall())
            appended = max(int(meta.get(f"unsorted_rows:{table}", 0)),
                           total - int(meta.get(f"sorted_rows:{table}", 0)))
            if not force and (appended < ROW_GROUP_ROWS or appended < RESORT_FRACTION * total):
                continue
            cols = ", ".join(columns(table))
            con.execute("BEGIN")
            try:
                con.execute(f"CREATE TABLE _sorted_{table} AS SELECT {cols} FROM {table} ORDER BY {', '.join(key)}")
                con.execute(f"DROP TABLE {table}")
                con.execute(f"ALTER TABLE _sorted_{table} RENAME TO {table}")
                con.execute("DELETE FROM meta WHERE key IN (?, ?)", [f"unsorted_rows:{table}", f"sorted_rows:{table}"])
                con.execute("INSERT INTO meta VALUES (?, '0'), (?, ?)",
                            [f"unsorted_rows:{table}", f"sorted_rows:{table}", str(total)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            done.append(table)
        if done and self.path != ":memory:":
            con.execute("CHECKPOINT")
        return done

    # --- reading --------------------------------------------------------------------------------

    def count_entities(self, kind: str | None = None, template: str | None = None) -> int:
        """Entities, optionally of one kind and SR template."""
        sql, params = "SELECT count(*) FROM entities WHERE 1=1", list[str]()
        if kind:
            sql, params = sql + " AND kind = ?", [*params, kind]
        if template:
            sql, params = sql + " AND template = ?", [*params, template]
        return int(self.scalar(sql, params))

    def count_patients(self, kind: str | None = None) -> int:
        """Distinct patients, optionally only those with an entity of ``kind``."""
        sql = "SELECT count(DISTINCT patient_id) FROM entities" + (" WHERE kind = ?" if kind else "")
        return int(self.scalar(sql, [kind] if kind else []))

    def count_items(self, field: str | None = None) -> int:
        """Indexed SR items, optionally of one field."""
        sql = "SELECT count(*) FROM items" + (" WHERE field = ?" if field else "")
        return int(self.scalar(sql, [field] if field else []))

    def count_segments(self) -> int:
        """Indexed SEG segments."""
        return int(self.scalar("SELECT count(*) FROM segments"))

    def count_files(self) -> int:
        """Indexed files."""
        return int(self.scalar("SELECT count(*) FROM ingested"))

    def files_of(self, uids: Iterable[str]) -> dict[str, list[Path]]:
        """Files of entities named by their uid (series UID for image kinds, SOP Instance UID otherwise)."""
        uids = list(uids)
        rows = self.con.execute(
            "SELECT CASE WHEN e.kind IN ? THEN e.series_uid ELSE e.sop_uid END AS uid, i.path "
            "FROM entities e JOIN ingested i USING (entity_id) "
            "WHERE (e.kind IN ? AND e.series_uid IN ?) OR (e.kind NOT IN ? AND e.sop_uid IN ?) "
            "ORDER BY uid, i.path", [list(IMAGE_KINDS)] * 2 + [uids, list(IMAGE_KINDS), uids]).fetchall()
        out: dict[str, list[Path]] = {}
        for uid, path in rows:
            out.setdefault(uid, []).append(self.file_path(path))
        return out

    def unindexed_items(self) -> list[UnindexedPath]:
        """SR concept paths in the index that no template config names, most frequent first."""
        templates = self.templates
        rows = self.con.execute(
            "SELECT e.template, c.concept_path, c.value_type, sum(c.n)::BIGINT FROM concepts c "
            "JOIN entities e USING (entity_id) WHERE c.value_type NOT IN ('CONTAINER', '') "
            "GROUP BY ALL").fetchall()
        out = []
        for template, path, vtype, count in rows:
            config = templates.get(template) if template else None
            steps = tuple(path.split("/"))
            if config is None or not any(vtype in SR_VALUE_TYPES[f.value_type] for f in config.fields_for_path(steps)):
                out.append(UnindexedPath(template, path, vtype, int(count)))
        return sorted(out, key=lambda u: (-u.count, u.template or "", u.concept_path))


def _changed(cursor: duckdb.DuckDBPyConnection) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _extract_with(path: str, templates: dict[str, TemplateConfig],
                  read: Callable[[str, dict[str, TemplateConfig]], Extracted] = extract_file
                  ) -> tuple[Extracted | None, str | None]:
    """``read(path, templates)``, an unreadable file as its error."""
    try:
        return read(path, templates), None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return None, str(exc)


def _extract_chunk(args: tuple[list[str], tuple[str, ...]]) -> list[tuple[Extracted | None, str | None]]:
    """Rows of a chunk of files; an image's identity only (``add_files`` reads a new series' rows itself)."""
    paths, dirs = args
    templates = load_templates(dirs)  # once per chunk: it checks every config file's mtime
    return [_extract_with(p, templates, extract_for_index) for p in paths]


_CHUNK = 32


def _records(paths: list[Path], dirs: tuple[str | Path, ...], workers: int, extracted: Mapping[str, Extracted]
             ) -> Iterator[tuple[Path, Extracted | None, str | None]]:
    """Each file's rows, in the order of ``paths``: from ``extracted`` where given, else read."""
    read = _extract_many([p for p in paths if str(p) not in extracted], dirs, workers)
    for path in paths:
        known = extracted.get(str(path))
        yield (path, known, None) if known is not None else next(read)


def _extract_many(paths: list[Path], dirs: tuple[str | Path, ...], workers: int
                  ) -> Iterator[tuple[Path, Extracted | None, str | None]]:
    names = tuple(str(d) for d in dirs)
    chunks = [([str(p) for p in paths[i:i + _CHUNK]], names) for i in range(0, len(paths), _CHUNK)]
    if workers <= 1 or len(paths) < 64:
        yield from _paired(paths, map(_extract_chunk, chunks))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
        yield from _paired(paths, pool.map(_extract_chunk, chunks))


def _paired(paths: list[Path], chunks: Iterable[list[tuple[Extracted | None, str | None]]]
            ) -> Iterator[tuple[Path, Extracted | None, str | None]]:
    found = (r for chunk in chunks for r in chunk)
    return ((p, *r) for p, r in zip(paths, found, strict=True))


def _queue_entity(batch: _Batch, eid: int, ex: Extracted, path: str) -> None:
    # Series entities carry no single SOP Instance UID: their instances are in ``ingested``.
    sop = None if ex.per_series else ex.sop_uid
    batch.rows["entities"].append((eid, ex.kind, ex.template, ex.patient_id, ex.study_uid, ex.series_uid, sop,
                                   ex.sop_class_uid, ex.modality, ex.entity_date, ex.entity_datetime, 1, path))
    batch.rows["attributes"] += [(eid, *r) for r in ex.attributes]
    batch.rows["items"] += [(eid, *r) for r in ex.items]
    batch.rows["segments"] += [(eid, *r) for r in ex.segments]
    batch.rows["refs"] += [(eid, *r) for r in ex.refs]
    batch.rows["concepts"] += [(eid, *r) for r in ex.concepts]


def unindexed_items(store: str | Path) -> list[UnindexedPath]:
    """SR concept paths present in ``store``'s SRs but named by no template config, with counts."""
    with DuckIndex.for_store(store, read_only=True) as index:
        return index.unindexed_items()


def index_rows(index_file: str | Path, store: str | Path) -> dict[str, list[tuple[str, ...]]]:
    """Every table of an index file as sorted rows of text, with the store's files named relative to it
    (as schema 3 names them; older indexes held absolute paths) and file modification times left out:
    what two indexes of the same store's files must share (an ingest and a reindex, or two versions of
    the code)."""
    root = f"{os.path.abspath(store)}/"
    con = duckdb.connect(str(index_file), read_only=True)
    try:
        out = {}
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            cur = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            out[table] = sorted(tuple(str(v).replace(root, "") for n, v in zip(names, row, strict=True)
                                      if n != "mtime") for row in cur.fetchall())
        return out
    finally:
        con.close()


__all__ = ["DuckIndex", "AddReport", "UnindexedPath", "Progress", "index_rows", "unindexed_items", "append_rows",
           "columns"]
