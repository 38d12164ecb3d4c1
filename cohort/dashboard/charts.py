"""Chart datasets of the dashboard: per indexed field, distinct patients per category or bin.

Which charts exist, and their bins, is decided once per store (``discover_charts``): a chart per
(object kind, SR template, field) that has values in the index, numeric bins from the store-wide
range so bars stay put while the cohort changes. Each update then runs two grouped queries over
every chart at once (one for categories, one for histograms) against a ``scope`` table: the
entities of the cohort's patients, where entities of a kind that has a (non-negated) group are only
those the group matched, so a chart next to a group shows the values on the very instances the
group selected, and brushing a bar of it selects exactly those instances.

Counts of the cohort itself never come from here: they are ``compile_duck.evaluate``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import duckdb

from cohort.index.catalog import FieldInfo
from cohort.index.compile_duck import lit
from cohort.index.schema import IMAGE_KINDS

ChartType = Literal["categories", "histogram"]
MAX_TEXT_CATEGORIES = 40  # text fields with more distinct values store-wide get no chart (filter by text)
SHOWN_CATEGORIES = 30  # bars per category chart; the rest is summed into one "other" bar
TARGET_BINS = 12
BINS_TABLE, CATS_TABLE = "_dash_bins", "_dash_cats"
_SEGMENT_COLUMNS: dict[str, tuple[str, str | None, str | None]] = {
    # field -> (value column, scheme column, meaning column)
    "segment_label": ("label", None, None),
    "segment_category": ("category_code", "category_scheme", "category_meaning"),
    "segment_type": ("type_code", "type_scheme", "type_meaning"),
    "algorithm_type": ("algorithm_type", None, None),
    "algorithm_name": ("algorithm_name", None, None),
    "anatomic_region": ("anatomic_region", "anatomic_region_scheme", "anatomic_region_meaning"),
}
KIND_TITLES = {"CT": "CT series", "MR": "MR series", "CR": "CR images", "DX": "DX images",
               "ECG": "ECG waveforms", "SEG": "Segmentations (SEG)", "SR": "Structured reports"}


@dataclass(frozen=True)
class ChartDef:
    """One chart: a field on objects of one kind (and SR template), with fixed bins for numbers."""

    id: str
    kind: str
    template: str  # "" when the kind has no template
    field: str
    type: ChartType
    value_type: str  # numeric | date | coded | text | boolean | geometric
    unit: str = ""
    description: str = ""
    lo: float = 0.0  # histograms: first edge, bin width, number of bins (dates: in years)
    step: float = 1.0
    n: int = 0


@dataclass
class ChartData:
    """One chart's bars for the current cohort (``value``: what a click filters on)."""

    id: str
    kind: str
    template: str
    field: str
    type: ChartType
    value_type: str
    unit: str
    bars: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def nice_bins(lo: float, hi: float, *, integer: bool, target: int = TARGET_BINS) -> tuple[float, float, int]:
    """(first edge, width, count) of round-numbered bins covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        step = 1.0 if integer or lo == 0 else 10 ** math.floor(math.log10(abs(lo)))
        return math.floor(lo / step) * step, step, 1
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    if integer:
        step = float(max(1, math.ceil(step)))
    start = math.floor(lo / step) * step
    n = int(math.floor((hi - start) / step + 1e-9)) + 1
    return start, step, n


def _chart_id(kind: str, template: str, name: str) -> str:
    return f"{kind}:{template}:{name}" if template else f"{kind}::{name}"


def discover_charts(con: duckdb.DuckDBPyConnection, catalog: Mapping[str, FieldInfo]) -> list[ChartDef]:
    """Every chart the store's data supports, in display order (by kind, template, field)."""
    charts: list[ChartDef] = []

    def add(kind: str, template: str | None, name: str, *, lo: float | None = None, hi: float | None = None,
            integer: bool = False, distinct_text: int = 0) -> None:
        info = catalog.get(name)
        if info is None or not info.available_for(kind, template or None):
            return
        vt, tpl = info.value_type, template or ""
        common = {"id": _chart_id(kind, tpl, name), "kind": kind, "template": tpl, "field": name,
                  "value_type": vt, "unit": info.unit or "", "description": info.description}
        if vt in ("numeric", "date"):
            if lo is None or hi is None:
                return
            start, step, n = nice_bins(lo, hi, integer=integer or vt == "date",
                                       target=TARGET_BINS if vt == "numeric" else 40)
            charts.append(ChartDef(type="histogram", lo=start, step=step, n=n, **common))
        elif vt == "text" and not 0 < distinct_text <= MAX_TEXT_CATEGORIES:
            return
        else:
            charts.append(ChartDef(type="categories", **common))

    for kind, template, y0, y1, n0, n1 in con.execute(
            "SELECT kind, coalesce(template, ''), min(year(entity_date)), max(year(entity_date)), "
            "min(n_instances), max(n_instances) FROM entities GROUP BY ALL ORDER BY ALL").fetchall():
        if y0 is not None:
            add(kind, template, "date", lo=y0, hi=y1, integer=True)
        if kind in IMAGE_KINDS:
            add(kind, template, "n_instances", lo=n0, hi=n1, integer=True)
    for kind, template, name, lo, hi, integer, distinct in con.execute(
            "SELECT e.kind, coalesce(e.template, ''), a.name, min(a.num), max(a.num), "
            "bool_and(a.num = round(a.num)), count(DISTINCT a.text) FROM attributes a JOIN entities e "
            "USING (entity_id) WHERE e.kind <> 'SR' GROUP BY ALL ORDER BY ALL").fetchall():
        add(kind, template, name, lo=lo, hi=hi, integer=bool(integer), distinct_text=distinct)
    for template, name, lo, hi, integer, distinct, y0, y1 in con.execute(
            "SELECT coalesce(e.template, ''), i.field, min(i.num), max(i.num), bool_and(i.num = round(i.num)), "
            "count(DISTINCT i.text), min(year(i.date)), max(year(i.date)) FROM items i JOIN entities e "
            "USING (entity_id) GROUP BY ALL ORDER BY ALL").fetchall():
        info = catalog.get(name)
        if info is not None and info.value_type == "date":
            lo, hi = y0, y1
        add("SR", template, name, lo=lo, hi=hi, integer=bool(integer), distinct_text=distinct)
    seg_counts = con.execute("SELECT " + ", ".join(f"count({col}), count(DISTINCT {col})"
                                                   for col, _, _ in _SEGMENT_COLUMNS.values())
                             + " FROM segments").fetchone() or ()
    for k, name in enumerate(_SEGMENT_COLUMNS):
        if seg_counts and seg_counts[2 * k]:
            add("SEG", "", name, distinct_text=int(seg_counts[2 * k + 1]))
    return charts


def install_chart_tables(con: duckdb.DuckDBPyConnection, charts: Sequence[ChartDef]) -> None:
    """Temporary lookup tables of the chart bins and category charts (once per connection)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {BINS_TABLE} (kind VARCHAR, template VARCHAR, field VARCHAR, "
                "lo DOUBLE, step DOUBLE, n INTEGER)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {CATS_TABLE} (kind VARCHAR, template VARCHAR, field VARCHAR, "
                "how VARCHAR)")
    hist = [(c.kind, c.template, c.field, c.lo, c.step, c.n) for c in charts if c.type == "histogram"]
    cats = [(c.kind, c.template, c.field, _how(c)) for c in charts if c.type == "categories"]
    if hist:
        con.executemany(f"INSERT INTO {BINS_TABLE} VALUES (?, ?, ?, ?, ?, ?)", hist)
    if cats:
        con.executemany(f"INSERT INTO {CATS_TABLE} VALUES (?, ?, ?, ?)", cats)


def scope_sql(cohort: str, matched: Mapping[tuple[str, str], str]) -> str:
    """Entities of the cohort's patients; for (kind, template) keys of ``matched`` only the entities in
    that relation (a group's matched entities)."""
    base = ("SELECT e.entity_id, e.patient_id, e.kind, coalesce(e.template, '') AS template, e.entity_date, "
            "e.n_instances FROM entities e")
    in_cohort = f"e.patient_id IN (SELECT patient_id FROM {cohort})"
    if not matched:
        return f"{base} WHERE {in_cohort}"
    keys = ", ".join(f"({lit(k)}, {lit(t)})" for k, t in matched)
    parts = [f"{base} WHERE {in_cohort} AND (e.kind, coalesce(e.template, '')) NOT IN ({keys})"]
    for rel in matched.values():
        parts.append(f"{base} WHERE {in_cohort} AND e.entity_id IN (SELECT entity_id FROM {rel})")
    return " UNION ALL ".join(parts)


def _how(chart: ChartDef) -> str:
    """How a category chart reads its values (the ``how`` column of the categories lookup table)."""
    if chart.field in _SEGMENT_COLUMNS:
        return "segment"
    return {"coded": "code", "boolean": "bool", "geometric": "presence"}.get(chart.value_type, "text")


def _categories_sql(scope: str) -> str:
    s = f"JOIN {scope} s USING (entity_id)"
    parts = [
        f"SELECT s.kind, s.template, a.name AS field, 'text' AS how, a.text AS key, a.text AS label, s.patient_id "
        f"FROM attributes a {s} WHERE a.text IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, 'text', i.text, i.text, s.patient_id FROM items i {s} "
        f"WHERE i.text IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, 'code', i.code_value || ' ' || i.code_scheme, i.code_meaning, "
        f"s.patient_id FROM items i {s} WHERE i.code_value IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, 'bool', CASE WHEN i.num = 1 THEN 'true' ELSE 'false' END, NULL, "
        f"s.patient_id FROM items i {s} WHERE i.num IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, 'presence', 'present', 'present', s.patient_id FROM items i {s}",
    ]
    for name, (col, scheme, meaning) in _SEGMENT_COLUMNS.items():
        key = f"g.{col} || ' ' || g.{scheme}" if scheme else f"g.{col}"
        parts.append(f"SELECT s.kind, s.template, {lit(name)}, 'segment', {key}, "
                     f"{f'g.{meaning}' if meaning else f'g.{col}'}, s.patient_id FROM segments g {s} "
                     f"WHERE g.{col} IS NOT NULL")
    union = " UNION ALL ".join(parts)
    return (f"SELECT v.kind, v.template, v.field, v.key, any_value(v.label), count(DISTINCT v.patient_id) "
            f"FROM ({union}) v JOIN {CATS_TABLE} c USING (kind, template, field, how) GROUP BY ALL")


def _histograms_sql(scope: str) -> str:
    s = f"JOIN {scope} s USING (entity_id)"
    image = ", ".join(lit(k) for k in IMAGE_KINDS)
    parts = [
        f"SELECT kind, template, 'date' AS field, CAST(year(entity_date) AS DOUBLE) AS x, patient_id "
        f"FROM {scope} WHERE entity_date IS NOT NULL",
        f"SELECT kind, template, 'n_instances', CAST(n_instances AS DOUBLE), patient_id FROM {scope} "
        f"WHERE kind IN ({image})",
        f"SELECT s.kind, s.template, a.name, a.num, s.patient_id FROM attributes a {s} WHERE a.num IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, i.num, s.patient_id FROM items i {s} WHERE i.num IS NOT NULL",
        f"SELECT s.kind, s.template, i.field, CAST(year(i.date) AS DOUBLE), s.patient_id FROM items i {s} "
        f"WHERE i.date IS NOT NULL",
    ]
    union = " UNION ALL ".join(parts)
    return (f"SELECT v.kind, v.template, v.field, "
            f"least(greatest(CAST(floor((v.x - b.lo) / b.step) AS INTEGER), 0), b.n - 1) AS bin, "
            f"count(DISTINCT v.patient_id) FROM ({union}) v JOIN {BINS_TABLE} b USING (kind, template, field) "
            f"GROUP BY ALL")


def _objects_sql(scope: str) -> str:
    return f"SELECT kind, template, count(DISTINCT patient_id) FROM {scope} GROUP BY ALL"


def _value_of(chart: ChartDef, key: str, info: FieldInfo | None) -> tuple[Any, str]:
    """(filter value, bar label) of a category key."""
    if chart.value_type == "boolean":
        return key == "true", key
    if chart.value_type == "coded" and info is not None:
        for alias, code in info.aliases:
            if code == key:
                return alias, alias
    return key, key


def compute_charts(con: duckdb.DuckDBPyConnection, charts: Sequence[ChartDef], catalog: Mapping[str, FieldInfo],
                   cohort: str, matched: Mapping[tuple[str, str], str], scope_table: str) -> dict[str, Any]:
    """Bars of every chart for the cohort in relation ``cohort`` (see ``scope_sql`` for ``matched``).

    Returns ``{"objects": [...], "charts": [...]}``: patients per object kind / template, and one
    ``ChartData`` (as JSON) per chart.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE {scope_table} AS {scope_sql(cohort, matched)}")
    try:
        objects = [{"kind": k, "template": t, "count": int(n)}
                   for k, t, n in con.execute(_objects_sql(scope_table)).fetchall()]
        cats: dict[str, list[tuple[str, str, int]]] = {}
        for kind, template, name, key, label, n in con.execute(_categories_sql(scope_table)).fetchall():
            cats.setdefault(_chart_id(kind, template, name), []).append((str(key), str(label or key), int(n)))
        bins: dict[str, dict[int, int]] = {}
        for kind, template, name, b, n in con.execute(_histograms_sql(scope_table)).fetchall():
            bins.setdefault(_chart_id(kind, template, name), {})[int(b)] = int(n)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {scope_table}")
    out = []
    for c in charts:
        data = ChartData(c.id, c.kind, c.template, c.field, c.type, c.value_type, c.unit)
        if c.type == "histogram":
            got = bins.get(c.id, {})
            for k in range(c.n):
                lo, hi = c.lo + k * c.step, c.lo + (k + 1) * c.step
                label = f"{lo:g}" if c.value_type == "date" and c.step == 1 else f"{lo:g}–{hi:g}"
                data.bars.append({"bin": k, "lo": lo, "hi": hi, "label": label, "count": got.get(k, 0)})
        else:
            info = catalog.get(c.field)
            rows = sorted(cats.get(c.id, []), key=lambda r: (-r[2], r[1]))
            for key, meaning, n in rows[:SHOWN_CATEGORIES]:
                value, label = _value_of(c, key, info)
                if label == key and meaning != key and c.value_type == "coded":
                    label = meaning
                data.bars.append({"key": key, "label": label, "value": value, "count": n})
            rest = rows[SHOWN_CATEGORIES:]
            if rest:
                data.bars.append({"key": None, "label": f"other ({len(rest)} values)", "value": None,
                                  "count": sum(r[2] for r in rest)})
        out.append(data.to_json())
    return {"objects": objects, "charts": out}
