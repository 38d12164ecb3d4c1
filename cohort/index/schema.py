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

No primary keys or ART indexes: uniqueness is kept by the writer, and DuckDB's zone maps over
rows appended in ``entity_id`` order serve the semi-joins the compiler emits better than ART
indexes would, while keeping bulk appends fast.
"""

from __future__ import annotations

SCHEMA_VERSION = "1"

IMAGE_KINDS = ("CT", "MR", "CR", "DX")

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "entities": (
        ("entity_id", "INTEGER"), ("kind", "VARCHAR"), ("template", "VARCHAR"), ("patient_id", "VARCHAR"),
        ("study_uid", "VARCHAR"), ("series_uid", "VARCHAR"), ("sop_uid", "VARCHAR"),
        ("sop_class_uid", "VARCHAR"), ("modality", "VARCHAR"), ("entity_date", "DATE"),
        ("entity_datetime", "TIMESTAMP"), ("n_instances", "INTEGER"), ("path", "VARCHAR"),
    ),
    "attributes": (("entity_id", "INTEGER"), ("name", "VARCHAR"), ("num", "DOUBLE"), ("text", "VARCHAR")),
    "items": (
        ("entity_id", "INTEGER"), ("field", "VARCHAR"), ("item_path", "VARCHAR"), ("group_key", "VARCHAR"),
        ("num", "DOUBLE"), ("unit", "VARCHAR"), ("code_value", "VARCHAR"), ("code_scheme", "VARCHAR"),
        ("code_meaning", "VARCHAR"), ("text", "VARCHAR"), ("date", "DATE"),
    ),
    "segments": (
        ("entity_id", "INTEGER"), ("segment_number", "INTEGER"), ("label", "VARCHAR"),
        ("category_code", "VARCHAR"), ("category_scheme", "VARCHAR"), ("category_meaning", "VARCHAR"),
        ("type_code", "VARCHAR"), ("type_scheme", "VARCHAR"), ("type_meaning", "VARCHAR"),
        ("algorithm_type", "VARCHAR"), ("algorithm_name", "VARCHAR"),
        ("anatomic_region", "VARCHAR"), ("anatomic_region_scheme", "VARCHAR"),
        ("anatomic_region_meaning", "VARCHAR"),
    ),
    "refs": (
        ("entity_id", "INTEGER"), ("relationship", "VARCHAR"), ("ref_study_uid", "VARCHAR"),
        ("ref_series_uid", "VARCHAR"), ("ref_sop_uid", "VARCHAR"), ("ref_sop_class_uid", "VARCHAR"),
    ),
    "concepts": (("entity_id", "INTEGER"), ("concept_path", "VARCHAR"), ("value_type", "VARCHAR"),
                 ("n", "INTEGER")),
    "ingested": (("path", "VARCHAR"), ("mtime", "DOUBLE"), ("sop_uid", "VARCHAR"), ("entity_id", "INTEGER")),
    "meta": (("key", "VARCHAR"), ("value", "VARCHAR")),
}

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
