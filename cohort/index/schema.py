"""The index's tables (DuckDB, one file ``STORE/index.duckdb``).

One row per *entity* (a series for image kinds, an instance for everything else), with its values
in side tables keyed by ``entity_id``:

``entities``    identity, kind, SR template, dates, where the files are
``attributes``  DICOM attributes per kind (``name``, ``num`` / ``text``), possibly several per name
``items``       SR content named by template configs: one row per content item and field, with its
                position in the tree (``item_path``) and predicate group (``group_key``)
``segments``    SEG segments with label, property codes and creator (algorithm) type
``refs``        every object an entity references (study / series / instance) and how
``concepts``    every concept path present in each SR, counted: what configs could still index
``ingested``    which file became which entity (and its mtime), for incremental indexing

``patients``    one row per patient: ``pid`` (a dense INTEGER key), ``patient_id``, and ``kinds``, a bit
                mask of the kinds of entity the patient has (``KIND_BITS``)

Query-side columns (schema 2). Every entity carries its patient's integer ``pid``; the side tables
repeat what queries filter on with their entity, so an object condition is answered from the rows of
its fields alone, without a join to ``entities``: ``items`` carry ``pid`` and the SR ``template``,
``attributes`` ``pid`` and ``kind``, ``segments`` ``pid``. ``DuckIndex`` fills these on every insert;
rows appended by other writers (SQL ``INSERT`` naming the old columns) get them from
``DuckIndex.optimize()``, and ``evaluate`` refuses an index with missing ones.

Layout. DuckDB keeps min/max statistics ("zone maps") per row group of ~122k rows and skips row
groups a filter cannot match. ``DuckIndex.optimize()`` rewrites the big tables sorted by
``SORT_KEYS`` (``items`` by field, template, entity), so a predicate on one field reads only that
field's row groups; rows appended later stay at the end, unsorted, until the next optimize re-sorts
(lazily: only once the unsorted tail is large, see ``DuckIndex.optimize``).

No primary keys or ART indexes: uniqueness is kept by the writer, and zone maps over sorted rows
serve the semi-joins the compiler emits better than ART indexes would, while keeping bulk appends
fast.
"""

from __future__ import annotations

SCHEMA_VERSION = "3"  # 3: files inside the store named relative to it (file_keys)

IMAGE_KINDS = ("CT", "MR", "CR", "DX")

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "entities": (
        ("entity_id", "INTEGER"), ("kind", "VARCHAR"), ("template", "VARCHAR"), ("patient_id", "VARCHAR"),
        ("study_uid", "VARCHAR"), ("series_uid", "VARCHAR"), ("sop_uid", "VARCHAR"),
        ("sop_class_uid", "VARCHAR"), ("modality", "VARCHAR"), ("entity_date", "DATE"),
        ("entity_datetime", "TIMESTAMP"), ("n_instances", "INTEGER"), ("path", "VARCHAR"), ("pid", "INTEGER"),
    ),
    "attributes": (("entity_id", "INTEGER"), ("name", "VARCHAR"), ("num", "DOUBLE"), ("text", "VARCHAR"),
                   ("pid", "INTEGER"), ("kind", "VARCHAR")),
    "items": (
        ("entity_id", "INTEGER"), ("field", "VARCHAR"), ("item_path", "VARCHAR"), ("group_key", "VARCHAR"),
        ("num", "DOUBLE"), ("unit", "VARCHAR"), ("code_value", "VARCHAR"), ("code_scheme", "VARCHAR"),
        ("code_meaning", "VARCHAR"), ("text", "VARCHAR"), ("date", "DATE"), ("pid", "INTEGER"),
        ("template", "VARCHAR"),
    ),
    "segments": (
        ("entity_id", "INTEGER"), ("segment_number", "INTEGER"), ("label", "VARCHAR"),
        ("category_code", "VARCHAR"), ("category_scheme", "VARCHAR"), ("category_meaning", "VARCHAR"),
        ("type_code", "VARCHAR"), ("type_scheme", "VARCHAR"), ("type_meaning", "VARCHAR"),
        ("algorithm_type", "VARCHAR"), ("algorithm_name", "VARCHAR"),
        ("anatomic_region", "VARCHAR"), ("anatomic_region_scheme", "VARCHAR"),
        ("anatomic_region_meaning", "VARCHAR"), ("pid", "INTEGER"),
    ),
    "refs": (
        ("entity_id", "INTEGER"), ("relationship", "VARCHAR"), ("ref_study_uid", "VARCHAR"),
        ("ref_series_uid", "VARCHAR"), ("ref_sop_uid", "VARCHAR"), ("ref_sop_class_uid", "VARCHAR"),
    ),
    "concepts": (("entity_id", "INTEGER"), ("concept_path", "VARCHAR"), ("value_type", "VARCHAR"),
                 ("n", "INTEGER")),
    "ingested": (("path", "VARCHAR"), ("mtime", "DOUBLE"), ("sop_uid", "VARCHAR"), ("entity_id", "INTEGER")),
    "patients": (("pid", "INTEGER"), ("patient_id", "VARCHAR"), ("kinds", "INTEGER")),
    "meta": (("key", "VARCHAR"), ("value", "VARCHAR")),
}

# Columns the index derives from the entity (or patient) a row belongs to: not part of the rows
# writers pass, filled by ``DuckIndex`` (see ``duck.append_rows``) and by ``DuckIndex.optimize``.
DERIVED: dict[str, tuple[str, ...]] = {
    "entities": ("pid",),
    "attributes": ("pid", "kind"),
    "items": ("pid", "template"),
    "segments": ("pid",),
}

# Physical order ``DuckIndex.optimize`` gives each table (zone maps then prune on these columns).
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "entities": ("kind", "template", "entity_id"),
    "attributes": ("name", "kind", "entity_id"),
    "items": ("field", "template", "entity_id"),
    "segments": ("entity_id",),
    "patients": ("pid",),
}

# ``patients.kinds``: one bit per kind of entity the patient has.
KIND_BITS: dict[str, int] = {"CT": 1, "MR": 2, "CR": 4, "DX": 8, "ECG": 16, "SR": 32, "SEG": 64}

# Side tables whose rows belong to one entity (deleted with it).
ENTITY_TABLES = ("attributes", "items", "segments", "refs", "concepts")


def ddl() -> list[str]:
    """CREATE statements for every table (idempotent)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(f'{c} {t}' for c, t in cols)})"
        for name, cols in TABLES.items()
    ]


def columns(table: str) -> tuple[str, ...]:
    """Column names of ``table`` in order."""
    return tuple(c for c, _ in TABLES[table])


def written_columns(table: str) -> tuple[str, ...]:
    """Columns a writer supplies for ``table`` (all but the derived ones), in order."""
    return tuple(c for c in columns(table) if c not in DERIVED.get(table, ()))


def kind_bits_sql(kind: str) -> str:
    """SQL giving the ``KIND_BITS`` bit of the kind in column ``kind`` (128 for any other kind)."""
    cases = " ".join(f"WHEN '{k}' THEN {b}" for k, b in KIND_BITS.items())
    return f"CASE {kind} {cases} ELSE 128 END"
