"""Chart datasets of the dashboard: per indexed field, distinct patients per category or bin.

Which charts exist, and their bins, is decided once per store (``ChartIndex.build``): a chart per
(object kind, SR template, field) that has values in the index, numeric bins from the store-wide
range so bars stay put while the cohort changes. Because bins and categories are fixed, every value
of every charted field is mapped to its (chart, bar) once, into one integer table (shared by every
connection of the snapshot, see ``cohort.index.publish.SnapshotIndex``)::

    _dash_values(entity_id, chart, bar)      _dash_entities(entity_id, pnum, kind, template)

and each update is then the cohort (the compiled spec's steps it needs, as temporary tables that are
reused while their SQL does not change, so an unchanged group is not matched again) and one grouped
count over that table: patients of the cohort per (chart, bar), where for a kind that has a
non-negated group only the entities that group matched count, so a chart next to a group shows the
values of the very instances the group selected.

Counts of the cohort itself never come from here: they are ``compile_duck.evaluate``'s.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import duckdb

from cohort.index.catalog import FieldInfo
from cohort.index.compile_duck import CompiledQuery, lit
from cohort.index.schema import IMAGE_KINDS

ChartType = Literal["categories", "histogram"]
MAX_TEXT_CATEGORIES = 40  # text fields with more distinct values store-wide get no chart (filter by text)
MAX_TEXT_LENGTH = 80  # nor do text fields with long values (free-text reports)
SHOWN_CATEGORIES = 30  # bars per category chart; the rest is summed into one "other" bar
TARGET_BINS = 12
STEP_CACHE = 200  # compiled-spec steps kept as temp tables between updates
OBJECTS_CHART = "objects"  # the chart of patients per object kind / SR template
# The shared value tables live in the snapshot's own in-memory database (cohort.index.publish), so
# every cursor (one per concurrent request) reads the same tables; per-update steps are temporary.
_OWN = "memory.main."
_T = {name: f"{_OWN}_dash_{name}" for name in ("values", "pvalues", "entities", "patients", "keys", "charts")}
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

    num: int  # the chart's number in _dash_values
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

    @property
    def how(self) -> str:
        """Which values a category chart reads: text, code, bool, presence or segment."""
        if self.field in _SEGMENT_COLUMNS:
            return "segment"
        return {"coded": "code", "boolean": "bool", "geometric": "presence"}.get(self.value_type, "text")


def nice_bins(lo: float, hi: float, *, integer: bool, target: int = TARGET_BINS) -> tuple[float, float, int]:
    """(first edge, width, count) of round-numbered bins covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        step = 1.0 if integer or lo == 0 else 10.0 ** math.floor(math.log10(abs(lo)))
        return math.floor(lo / step) * step, step, 1
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    if integer:
        step = float(max(1, math.ceil(step)))
    start = math.floor(lo / step) * step
    n = int(math.floor((hi - start) / step + 1e-9)) + 1
    return start, step, n


def chart_id(kind: str, template: str, name: str) -> str:
    """``CT::slice_thickness``, ``SR:ecg_report:qrs_duration``."""
    return f"{kind}:{template}:{name}"


def _discover(con: duckdb.DuckDBPyConnection, catalog: Mapping[str, FieldInfo]) -> list[ChartDef]:
    charts: list[ChartDef] = []

    def add(kind: str, template: str, name: str, *, lo: float | None = None, hi: float | None = None,
            integer: bool = False, distinct_text: int = 0, longest: int = 0) -> None:
        info = catalog.get(name)
        if info is None or not info.available_for(kind, template or None):
            return
        vt = info.value_type
        common: dict[str, Any] = {"num": len(charts) + 1, "id": chart_id(kind, template, name), "kind": kind,
                                  "template": template, "field": name, "value_type": vt,
                                  "unit": info.unit or "", "description": info.description}
        if vt in ("numeric", "date"):
            if lo is None or hi is None:
                return
            start, step, n = nice_bins(lo, hi, integer=integer or vt == "date",
                                       target=TARGET_BINS if vt == "numeric" else 40)
            charts.append(ChartDef(type="histogram", lo=start, step=step, n=n, **common))
        elif vt == "text" and not (0 < distinct_text <= MAX_TEXT_CATEGORIES and longest <= MAX_TEXT_LENGTH):
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
    for kind, template, name, lo, hi, integer, distinct, longest in con.execute(
            "SELECT e.kind, coalesce(e.template, ''), a.name, min(a.num), max(a.num), "
            "bool_and(a.num = round(a.num)), count(DISTINCT a.text), max(length(a.text)) FROM attributes a "
            "JOIN entities e USING (entity_id) WHERE e.kind <> 'SR' GROUP BY ALL ORDER BY ALL").fetchall():
        add(kind, template, name, lo=lo, hi=hi, integer=bool(integer), distinct_text=distinct, longest=longest or 0)
    for template, name, lo, hi, integer, distinct, longest, y0, y1 in con.execute(
            "SELECT coalesce(e.template, ''), i.field, min(i.num), max(i.num), bool_and(i.num = round(i.num)), "
            "count(DISTINCT i.text), max(length(i.text)), min(year(i.date)), max(year(i.date)) FROM items i "
            "JOIN entities e USING (entity_id) GROUP BY ALL ORDER BY ALL").fetchall():
        info = catalog.get(name)
        if info is not None and info.value_type == "date":
            lo, hi = y0, y1
        add("SR", template, name, lo=lo, hi=hi, integer=bool(integer), distinct_text=distinct,
            longest=longest or 0)
    seg = con.execute("SELECT " + ", ".join(f"count({c}), count(DISTINCT {c}), max(length(CAST({c} AS VARCHAR)))"
                                            for c, _, _ in _SEGMENT_COLUMNS.values()) + " FROM segments").fetchone()
    for k, name in enumerate(_SEGMENT_COLUMNS):
        if seg and seg[3 * k]:
            add("SEG", "", name, distinct_text=int(seg[3 * k + 1]), longest=int(seg[3 * k + 2] or 0))
    return charts


def _raw_categories_sql() -> str:
    """(entity_id, chart, raw key, label) of every category chart's values."""
    parts = [
        "SELECT a.entity_id, c.num AS chart, a.text AS raw, a.text AS label FROM attributes a "
        "JOIN _dash_entities e USING (entity_id) JOIN _dash_charts c ON c.kind = e.kind AND "
        "c.template = e.template AND c.field = a.name AND c.how = 'text' WHERE a.text IS NOT NULL",
        "SELECT i.entity_id, c.num, CASE c.how WHEN 'code' THEN i.code_value || ' ' || i.code_scheme "
        "WHEN 'bool' THEN CASE WHEN i.num = 1 THEN 'true' ELSE 'false' END WHEN 'presence' THEN 'present' "
        "ELSE i.text END, CASE c.how WHEN 'code' THEN i.code_meaning WHEN 'text' THEN i.text END FROM items i "
        "JOIN _dash_entities e USING (entity_id) JOIN _dash_charts c ON c.kind = e.kind AND "
        "c.template = e.template AND c.field = i.field AND c.how IN ('text', 'code', 'bool', 'presence') "
        "WHERE CASE c.how WHEN 'code' THEN i.code_value IS NOT NULL WHEN 'bool' THEN i.num IS NOT NULL "
        "WHEN 'text' THEN i.text IS NOT NULL ELSE TRUE END",
    ]
    for name, (col, scheme, meaning) in _SEGMENT_COLUMNS.items():
        key = f"g.{col} || ' ' || g.{scheme}" if scheme else f"CAST(g.{col} AS VARCHAR)"
        parts.append(f"SELECT g.entity_id, c.num, {key}, {f'g.{meaning}' if meaning else key} FROM segments g "
                     f"JOIN _dash_charts c ON c.kind = 'SEG' AND c.field = {lit(name)} WHERE g.{col} IS NOT NULL")
    return _qualified(" UNION ALL ".join(parts))


def _qualified(sql: str) -> str:
    """Name the shared tables by their catalog (the SQL above reads better with the plain names)."""
    return re.sub(r"\b_dash_(entities|charts)\b", lambda m: _T[m.group(1)], sql)


def _raw_numbers_sql() -> str:
    """(entity_id, chart, x) of every histogram's values (dates as years)."""
    image = ", ".join(lit(k) for k in IMAGE_KINDS)
    join = "JOIN _dash_charts c ON c.kind = e.kind AND c.template = e.template"
    return _qualified(" UNION ALL ".join([
        f"SELECT e.entity_id, c.num AS chart, CAST(year(x.entity_date) AS DOUBLE) AS x FROM entities x "
        f"JOIN _dash_entities e USING (entity_id) {join} AND c.field = 'date' WHERE x.entity_date IS NOT NULL",
        f"SELECT e.entity_id, c.num, CAST(x.n_instances AS DOUBLE) FROM entities x JOIN _dash_entities e "
        f"USING (entity_id) {join} AND c.field = 'n_instances' WHERE x.kind IN ({image})",
        f"SELECT a.entity_id, c.num, a.num FROM attributes a JOIN _dash_entities e USING (entity_id) {join} "
        f"AND c.field = a.name AND c.type = 'histogram' WHERE a.num IS NOT NULL",
        f"SELECT i.entity_id, c.num, CASE WHEN c.value_type = 'date' THEN CAST(year(i.date) AS DOUBLE) "
        f"ELSE i.num END FROM items i JOIN _dash_entities e USING (entity_id) {join} AND c.field = i.field "
        f"AND c.type = 'histogram' WHERE (c.value_type = 'date' AND i.date IS NOT NULL) "
        f"OR (c.value_type <> 'date' AND i.num IS NOT NULL)",
    ]))


@dataclass
class _Key:
    raw: str
    label: str


class ChartIndex:
    """The charts of one store and their precomputed value tables (in the snapshot's own database).

    ``con`` runs the updates and holds their step tables; ``on(cursor)`` is the same chart index
    for another connection (another request running at the same time), with its own step tables.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, charts: list[ChartDef],
                 present: list[tuple[str, str]], keys: dict[int, dict[int, _Key]]) -> None:
        self.con = con
        self.charts = charts
        self.present = present  # (kind, template) per bar of the objects chart
        self.keys = keys
        self._steps: OrderedDict[str, None] = OrderedDict()  # cached step tables, least recent first

    @classmethod
    def build(cls, con: duckdb.DuckDBPyConnection, catalog: Mapping[str, FieldInfo]) -> ChartIndex:
        """Discover the charts and fill the temporary tables (seconds at 100k patients, once)."""
        charts = _discover(con, catalog)
        con.execute(f"CREATE OR REPLACE TABLE {_T['patients']} AS SELECT patient_id, "
                    f"CAST(row_number() OVER (ORDER BY patient_id) AS INTEGER) AS pnum "
                    f"FROM (SELECT DISTINCT patient_id FROM entities)")
        con.execute(f"CREATE OR REPLACE TABLE {_T['entities']} AS SELECT e.entity_id, p.pnum, e.kind, "
                    f"coalesce(e.template, '') AS template FROM entities e JOIN {_T['patients']} p USING (patient_id) "
                    f"ORDER BY e.entity_id")
        con.execute(f"CREATE OR REPLACE TABLE {_T['charts']} (num INTEGER, kind VARCHAR, template VARCHAR, "
                    f"field VARCHAR, type VARCHAR, value_type VARCHAR, how VARCHAR, lo DOUBLE, step DOUBLE, n INTEGER)")
        if charts:
            con.executemany(f"INSERT INTO {_T['charts']} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(c.num, c.kind, c.template, c.field, c.type, c.value_type, c.how, c.lo, c.step, c.n)
                             for c in charts])
        present = [(k, t) for k, t in con.execute(
            f"SELECT DISTINCT kind, template FROM {_T['entities']} ORDER BY kind, template").fetchall()]
        con.execute(f"CREATE OR REPLACE TEMP TABLE _dash_raw AS {_raw_categories_sql()}")
        con.execute(f"CREATE OR REPLACE TABLE {_T['keys']} AS SELECT chart, raw, any_value(label) AS label, "
                    f"CAST(row_number() OVER (PARTITION BY chart ORDER BY raw) AS INTEGER) AS bar "
                    f"FROM _dash_raw GROUP BY chart, raw")
        objects_case = " ".join(f"WHEN e.kind = {lit(k)} AND e.template = {lit(t)} THEN {i}"
                                for i, (k, t) in enumerate(present))
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _dash_ebars AS
            SELECT DISTINCT entity_id, chart, bar FROM (
              SELECT r.entity_id, r.chart, k.bar FROM _dash_raw r JOIN {_T['keys']} k USING (chart, raw)
              UNION ALL
              SELECT v.entity_id, v.chart, CAST(least(greatest(floor((v.x - c.lo) / c.step), 0), c.n - 1) AS INTEGER)
              FROM ({_raw_numbers_sql()}) v JOIN {_T['charts']} c ON c.num = v.chart
              UNION ALL
              SELECT e.entity_id, 0, CASE {objects_case} ELSE -1 END FROM {_T['entities']} e
            )""")
        # Entity level (for kinds a group restricts to its matched entities) and patient level (the
        # rest: a patient counts once per bar, so count(*) replaces count(DISTINCT ...)).
        con.execute(f"CREATE OR REPLACE TABLE {_T['values']} AS SELECT b.entity_id, e.pnum, b.chart, b.bar "
                    f"FROM _dash_ebars b JOIN {_T['entities']} e USING (entity_id) ORDER BY b.chart, b.entity_id")
        con.execute(f"CREATE OR REPLACE TABLE {_T['pvalues']} AS SELECT DISTINCT pnum, chart, bar "
                    f"FROM {_T['values']} ORDER BY pnum")
        con.execute("DROP TABLE _dash_raw")
        con.execute("DROP TABLE _dash_ebars")
        keys: dict[int, dict[int, _Key]] = {}
        for chart, raw, label, bar in con.execute(f"SELECT chart, raw, label, bar FROM {_T['keys']}").fetchall():
            keys.setdefault(int(chart), {})[int(bar)] = _Key(str(raw), str(label if label is not None else raw))
        return cls(con, charts, present, keys)

    def on(self, con: duckdb.DuckDBPyConnection) -> ChartIndex:
        """These charts, updated on ``con`` (a cursor of the same database)."""
        return ChartIndex(con, self.charts, self.present, self.keys)

    # --- per update ---------------------------------------------------------------------------------
    def materialize(self, query: CompiledQuery, roots: Sequence[str]) -> dict[str, str]:
        """Temp tables holding the steps of ``query`` that ``roots`` need; step name -> table.

        A step's table is named by a hash of its SQL with the steps it reads replaced by *their*
        tables, so a step whose inputs did not change since an earlier update (an unchanged group,
        a time window's target) is not computed again. Least recently used tables are dropped.
        """
        needed = _needed_steps(query, roots)
        if not needed:
            return {}
        pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n, _ in query.steps) + r")\b")
        tables: dict[str, str] = {}
        for name, body in needed:
            sql = pattern.sub(lambda m: tables.get(m.group(1), m.group(1)), body)
            table = "_dash_s_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
            if table not in self._steps:
                self.con.execute(f"CREATE TEMP TABLE {table} AS {sql}")
                self._steps[table] = None
            self._steps.move_to_end(table)
            tables[name] = table
        in_use = set(tables.values())
        while len(self._steps) > STEP_CACHE:
            old = next((t for t in self._steps if t not in in_use), None)
            if old is None:
                break
            del self._steps[old]
            self.con.execute(f"DROP TABLE IF EXISTS {old}")
        return tables

    def counts_sql(self, cohort: str, matched: Mapping[tuple[str, str], str]) -> str:
        """Every bar's count for the patients of relation ``cohort``; ``matched``: (kind, template) ->
        relation of the matched entities that stand for that kind."""
        cp = f"SELECT pnum FROM {_T['patients']} WHERE patient_id IN (SELECT patient_id FROM {cohort})"
        restricted = {key: [c.num for c in self.charts if (c.kind, c.template) == key] for key in matched}
        skip = [n for nums in restricted.values() for n in nums]
        parts = [f"SELECT chart, bar, count(*) AS n FROM {_T['pvalues']} WHERE pnum IN (SELECT pnum FROM _cp)"
                 + (f" AND chart NOT IN ({', '.join(map(str, skip))})" if skip else "") + " GROUP BY ALL"]
        for key, rel in matched.items():
            if restricted[key]:
                parts.append(f"SELECT chart, bar, count(DISTINCT pnum) FROM {_T['values']} "
                             f"WHERE chart IN ({', '.join(map(str, restricted[key]))}) "
                             f"AND entity_id IN (SELECT entity_id FROM {rel}) AND pnum IN (SELECT pnum FROM _cp) "
                             f"GROUP BY ALL")
        return f"WITH _cp AS ({cp})\n" + "\nUNION ALL\n".join(parts)

    def compute(self, query: CompiledQuery, matched: Mapping[tuple[str, str], str],
                catalog: Mapping[str, FieldInfo]) -> dict[str, Any]:
        """``{"objects": [...], "charts": [...]}`` for the cohort of ``query``.

        ``matched`` maps (kind, template) to the relation of the group whose matched entities stand
        for that kind in the charts.
        """
        tables = self.materialize(query, [query.cohort, *matched.values()])
        sql = self.counts_sql(tables[query.cohort], {k: tables[rel] for k, rel in matched.items()})
        got: dict[int, dict[int, int]] = {}
        for chart, bar, n in self.con.execute(sql).fetchall():
            got.setdefault(int(chart), {})[int(bar)] = int(n)
        objects = [{"kind": k, "template": t, "count": got.get(0, {}).get(i, 0)}
                   for i, (k, t) in enumerate(self.present)]
        return {"objects": objects, "charts": [self._chart_json(c, got.get(c.num, {}), catalog) for c in self.charts]}

    def _chart_json(self, c: ChartDef, got: dict[int, int], catalog: Mapping[str, FieldInfo]) -> dict[str, Any]:
        bars: list[dict[str, Any]] = []
        if c.type == "histogram":
            for k in range(c.n):
                lo, hi = c.lo + k * c.step, c.lo + (k + 1) * c.step
                label = f"{lo:g}" if c.value_type == "date" and c.step == 1 else f"{lo:g}–{hi:g}"
                bars.append({"bin": k, "lo": lo, "hi": hi, "label": label, "count": got.get(k, 0)})
        else:
            info = catalog.get(c.field)
            keys = self.keys.get(c.num, {})
            rows = sorted(((keys[b], n) for b, n in got.items() if b in keys), key=lambda r: (-r[1], r[0].label))
            for key, n in rows[:SHOWN_CATEGORIES]:
                value, label = _value_of(c, key, info)
                bars.append({"key": key.raw, "label": label, "value": value, "count": n})
            rest = rows[SHOWN_CATEGORIES:]
            if rest:
                bars.append({"key": None, "label": f"other ({len(rest)} values)", "value": None,
                             "count": sum(n for _, n in rest)})
        return {"id": c.id, "kind": c.kind, "template": c.template, "field": c.field, "type": c.type,
                "value_type": c.value_type, "unit": c.unit, "description": c.description, "bars": bars}


def _needed_steps(query: CompiledQuery, roots: Sequence[str]) -> list[tuple[str, str]]:
    """The steps of ``query`` that ``roots`` depend on, in order (subsets and the label are skipped)."""
    bodies = dict(query.steps)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in bodies) + r")\b")
    need: set[str] = set()
    todo = [r for r in roots if r in bodies]
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        todo += [m for m in pattern.findall(bodies[name]) if m not in need]
    return [(n, b) for n, b in query.steps if n in need]


def _value_of(chart: ChartDef, key: _Key, info: FieldInfo | None) -> tuple[Any, str]:
    """(filter value, bar label) of a category: aliases for codes when the catalog has one."""
    if chart.value_type == "boolean":
        return key.raw == "true", key.raw
    if chart.value_type == "coded":
        for alias, code in (info.aliases if info is not None else ()):
            if code == key.raw:
                return alias, alias
        return key.raw, key.label
    if chart.value_type == "geometric":
        return None, key.raw
    return key.raw, key.label
