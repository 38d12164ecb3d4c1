"""Cohort query latency and index build throughput at 10k / 100k / 1M synthetic patients.

    python bench/query.py [--sizes 10000,100000,1000000] [--repeat 11] [--db-dir DIR] [--keep]

For each size an index (the DuckDB tables of ``cohort.index.schema``) is built straight from rows,
no DICOM files: rows are generated with numpy per chunk of patients and appended to the tables in
``entity_id`` order (what ``DuckIndex`` does when ingesting). Per patient: one CT series with its
attributes (~8 rows), 0-2 ECG waveforms (sampling rate, leads, ...), 0-2 TID 3700 ECG reports with
~12 items each (intervals, axes, age, sex, 1-2 coded findings), a registry SR with 13 items, a
procedures SR with ~8 items (OPS codes with dates, TAVI date, pacemaker after TAVI) and 0-1 SEG with
2-4 segments. The derived query columns (``pid``, the entity's kind / template on its side rows) and
``patients`` are written as ``DuckIndex`` writes them, then ``DuckIndex.optimize(force=True)`` sorts
the tables (what ``cohort ingest`` does lazily). Build throughput is reported as SR items per second
(generation + insert + optimize), with the optimize share shown.

Five specs are timed with ``cohort.index.compile_duck.evaluate`` (p50 / p95 of ``--repeat`` runs
after one warm-up). At the smallest size the same specs are also evaluated by the BASELINE: the
plain-Python evaluator of the test oracle (``tests/oracle.py``, ``Oracle.evaluate``) over the same
rows held in memory as oracle entities (its DICOM reading is skipped; evaluation is unchanged), and
both answers must be identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project and tests/ (baseline)
    sys.path.insert(0, str(ROOT))

from cohort.index.catalog import field_catalog  # noqa: E402
from cohort.index.compile_duck import evaluate  # noqa: E402
from cohort.index.duck import DuckIndex  # noqa: E402
from cohort.index.schema import KIND_BITS  # noqa: E402
from cohort.spec import parse_text  # noqa: E402
from cohort.spec.model import CohortSpec  # noqa: E402

SPECS: dict[str, str] = {
    # same-instance: QRS and LBBB on one ECG report
    "ecg_same_report": "e := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB]; cohort e",
    # same-instance and same-item: LV segmented automatically, and an RV, in one SEG
    "seg_group": "s := SEG[{segment_type = LV, algorithm_type = AUTOMATIC}, segment_type = RV]; cohort s",
    # time window: an ECG report with wide QRS within 90 days before the thin-slice CT
    "ecg_90d_before_ct": ("ct := CT[slice_thickness <= 1 mm]; "
                          "e := SR:ecg_report[qrs_duration >= 120 ms] within -90..0 days of ct; cohort ct and e"),
    # distributions over the registry cohort
    "registry_distributions": ("r := SR:registry; cohort r; histogram r.age bins 60, 70, 80, 90, 100; "
                               "histogram r.lvef bins 20, 40, 60, 80; categories r.prosthesis_type"),
    # the three-condition nested spec (the mission's question), with a label
    "nested_three": ("ct := CT[slice_thickness <= 1 mm, kvp >= 100]; "
                     "e := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB]; "
                     "p := SR:procedures[pacemaker_after_tavi exists]; cohort ct and e and p; "
                     "label p.pacemaker_after_tavi positive true negative false"),
}
NESTED = "nested_three"

EPOCH = date(2018, 1, 1)
SLOTS = 8  # entity id = patient * SLOTS + slot + 1
# slot -> (kind, template, sop class, modality)
SLOT_INFO = [
    ("CT", None, "1.2.840.10008.5.1.4.1.1.2", "CT"),
    ("ECG", None, "1.2.840.10008.5.1.4.1.1.9.1.1", "ECG"),
    ("ECG", None, "1.2.840.10008.5.1.4.1.1.9.1.1", "ECG"),
    ("SR", "ecg_report", "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    ("SR", "ecg_report", "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    ("SR", "registry", "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    ("SR", "procedures", "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    ("SEG", None, "1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
]
SEG_SLOT, CT_SLOT = 7, 0

# Codes: (value, scheme, meaning)
LBBB = ("63467002", "SCT", "Left bundle branch block")
FINDINGS = [("64730000", "SCT", "Normal sinus rhythm"), LBBB, ("59118001", "SCT", "Right bundle branch block"),
            ("270492004", "SCT", "First degree atrioventricular block"), ("49436004", "SCT", "Atrial fibrillation")]
YES, NO = ("373066001", "SCT", "Yes"), ("373067005", "SCT", "No")
SEX = [("M", "DCM", "Male"), ("F", "DCM", "Female")]
PROSTHESIS = [("PT001", "99FEDCOH", "Balloon-expandable transcatheter valve"),
              ("PT002", "99FEDCOH", "Self-expanding transcatheter valve")]
ACCESS = [("TF", "99FEDCOH", "Transfemoral"), ("TA", "99FEDCOH", "Transapical")]
NYHA = [("420300004", "SCT", "New York Heart Association Classification - Class I"),
        ("421704003", "SCT", "New York Heart Association Classification - Class II"),
        ("420913000", "SCT", "New York Heart Association Classification - Class III"),
        ("422293003", "SCT", "New York Heart Association Classification - Class IV")]
DIAB_TREAT = [("DT1", "99FEDCOH", "Diet"), ("DT2", "99FEDCOH", "Oral"), ("DT3", "99FEDCOH", "Insulin")]
OPS = [("5-35a.00", "99OPS", "OPS 5-35a.00"), ("5-377.1", "99OPS", "OPS 5-377.1"),
       ("8-83b.c6", "99OPS", "OPS 8-83b.c6"), ("3-224.0", "99OPS", "OPS 3-224.0")]
TISSUE = ("85756007", "SCT", "Tissue")
SEG_TYPES = [("87878005", "SCT", "Left ventricle"), ("53085002", "SCT", "Right ventricle"),
             ("237897009", "SCT", "Calcified"), ("HP010", "99FEDCOH", "Membranous septum")]
ALGO = ["MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"]
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CT_DESC = ["CTA TAVI Planung 0.6 Bv36", "Herz TAVI 1.0 CE", "Thorax nativ 3.0"]
THICKNESS = [0.6, 1.0, 3.0]


class Vocab:
    """Strings as small integer ids (0 = NULL), turned back into strings by one SQL list lookup."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str | None) -> int:
        if text is None:
            return 0
        return self.ids.setdefault(text, len(self.ids) + 1)

    def sql(self, column: str) -> str:
        words = ", ".join("'" + w.replace("'", "''") + "'" for w in self.ids)
        return f"list_extract([{words}], {column})"


V = Vocab()


@dataclass
class Rows:
    """Column arrays of one table, appended per block and concatenated once."""

    cols: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))

    def add(self, **arrays: np.ndarray | np.generic) -> None:
        n = next(np.size(a) for a in arrays.values() if np.ndim(a) > 0)
        for name, arr in arrays.items():
            self.cols[name].append(np.broadcast_to(arr, (n,)) if np.ndim(arr) == 0 else np.asarray(arr))

    def done(self, order_by: str = "entity_id") -> dict[str, np.ndarray]:
        out = {k: np.concatenate(v) for k, v in self.cols.items()}
        if out:
            idx = np.argsort(out[order_by], kind="stable")
            out = {k: v[idx] for k, v in out.items()}
        return out


def _codes(choice: np.ndarray, codes: list[tuple[str, str, str]]) -> dict[str, np.ndarray]:
    table = np.array([[V(c[0]), V(c[1]), V(c[2])] for c in codes], dtype=np.int32)
    picked = table[choice]
    return {"code_value": picked[:, 0], "code_scheme": picked[:, 1], "code_meaning": picked[:, 2]}


def _item(rows: Rows, eids: np.ndarray, fld: str, path: str, grp: str, *, num: np.ndarray | None = None,
          unit: str | None = None, codes: dict[str, np.ndarray] | None = None, day: np.ndarray | None = None) -> None:
    n = len(eids)
    nan = np.full(n, np.nan)
    zero = np.zeros(n, dtype=np.int32)
    c = codes or {}
    rows.add(entity_id=eids, field=np.int32(V(fld)), item_path=np.int32(V(path)), group_key=np.int32(V(grp)),
             num=nan if num is None else num.astype(np.float64), unit=np.int32(V(unit)),
             code_value=c.get("code_value", zero), code_scheme=c.get("code_scheme", zero),
             code_meaning=c.get("code_meaning", zero), date=np.full(n, -1, np.int32) if day is None else day)


def _attr(rows: Rows, eids: np.ndarray, name: str, *, num: Any = np.nan, text: Any = 0) -> None:
    n = len(eids)
    rows.add(entity_id=eids, name=np.int32(V(name)),
             num=np.broadcast_to(np.asarray(num, dtype=np.float64), (n,)),
             text=np.broadcast_to(np.asarray(text, dtype=np.int32), (n,)))


@dataclass
class Chunk:
    """Rows of a block of patients, as column arrays (strings as vocabulary ids)."""

    entities: dict[str, np.ndarray]
    attributes: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    segments: dict[str, np.ndarray]


def generate(first: int, n: int, rng: np.random.Generator) -> Chunk:
    """Rows of patients ``first .. first + n - 1``."""
    p = np.arange(first, first + n, dtype=np.int64)
    tavi = rng.integers(0, 2000, n).astype(np.int32)  # days after EPOCH
    has = np.zeros((n, SLOTS), dtype=bool)
    has[:, CT_SLOT] = rng.random(n) < 0.9
    n_ecg = rng.choice(3, n, p=[0.15, 0.55, 0.30])
    has[:, 1], has[:, 2] = n_ecg >= 1, n_ecg >= 2
    n_rep = rng.choice(3, n, p=[0.15, 0.55, 0.30])
    has[:, 3], has[:, 4] = n_rep >= 1, n_rep >= 2
    has[:, 5] = True
    has[:, 6] = True
    has[:, SEG_SLOT] = has[:, CT_SLOT] & (rng.random(n) < 0.5)
    offset = np.stack([-rng.integers(1, 120, n), -rng.integers(0, 200, n), -rng.integers(200, 400, n),
                       -rng.integers(0, 200, n), -rng.integers(100, 500, n), np.zeros(n, np.int64),
                       rng.integers(0, 30, n), -rng.integers(1, 120, n)], axis=1)
    rows_p, slots = np.nonzero(has)  # row-major: entity ids ascending
    eid = (p[rows_p] * SLOTS + slots + 1).astype(np.int64)
    day = (tavi[rows_p] + offset[rows_p, slots]).astype(np.int32)
    ent: dict[str, np.ndarray] = {"entity_id": eid, "slot": slots.astype(np.int32), "p": p[rows_p], "day": day,
           "n_instances": np.where(slots == CT_SLOT, rng.integers(48, 96, len(eid)), 1).astype(np.int32)}

    def ids(slot: int) -> tuple[np.ndarray, np.ndarray]:
        sel = slots == slot
        return eid[sel], rows_p[sel]

    attrs, items, segs = Rows(), Rows(), Rows()
    # CT series attributes
    e, r = ids(CT_SLOT)
    proto = rng.choice(3, len(e), p=[0.5, 0.3, 0.2])
    _attr(attrs, e, "slice_thickness", num=np.array(THICKNESS)[proto])
    _attr(attrs, e, "kvp", num=np.where(rng.random(len(e)) < 0.6, 100.0, 120.0))
    _attr(attrs, e, "rows", num=512.0)
    _attr(attrs, e, "columns", num=512.0)
    _attr(attrs, e, "pixel_spacing", num=np.round(0.3 + rng.random(len(e)) * 0.5, 2))
    _attr(attrs, e, "series_description", text=np.array([V(d) for d in CT_DESC], np.int32)[proto])
    vendor = rng.random(len(e)) < 0.5
    _attr(attrs, e, "manufacturer", text=np.where(vendor, V("SIEMENS"), V("GE MEDICAL SYSTEMS")).astype(np.int32))
    _attr(attrs, e, "convolution_kernel", text=np.where(vendor, V("Bv36"), V("STANDARD")).astype(np.int32))
    # ECG waveforms
    for slot in (1, 2):
        e, r = ids(slot)
        _attr(attrs, e, "sampling_frequency", num=np.where(rng.random(len(e)) < 0.7, 500.0, 1000.0))
        _attr(attrs, e, "lead_count", num=12.0)
        _attr(attrs, e, "duration_s", num=10.0)
        _attr(attrs, e, "manufacturer", text=np.int32(V("GE Healthcare")))
        for lead in LEADS:
            _attr(attrs, e, "lead", text=np.int32(V(lead)))
    # ECG reports: ~12 items each
    lbbb_patient = rng.random(n) < 0.12
    for slot in (3, 4):
        e, r = ids(slot)
        k = len(e)
        wide = lbbb_patient[r] & (rng.random(k) < 0.8)
        qrs = np.round(85 + rng.random(k) * 35 + np.where(wide, 45, 0))
        for fld, path, values, unit in (
                ("heart_rate", "5.1.1", 50 + rng.random(k) * 50, "/min"),
                ("qrs_duration", "5.1.2", qrs, "ms"),
                ("pr_interval", "5.1.3", 140 + rng.random(k) * 100, "ms"),
                ("qt_interval", "5.1.4", 340 + rng.random(k) * 100, "ms"),
                ("qtc_interval", "5.1.5", 380 + rng.random(k) * 80, "ms"),
                ("rr_interval", "5.1.6", 600 + rng.random(k) * 600, "ms"),
                ("p_axis", "5.2.1", -30 + rng.random(k) * 120, "deg"),
                ("qrs_axis", "5.2.2", -60 + rng.random(k) * 180, "deg"),
                ("t_axis", "5.2.3", -30 + rng.random(k) * 120, "deg")):
            _item(items, e, fld, path, "5.1" if path.startswith("5.1") else "5.2", num=np.round(values), unit=unit)
        _item(items, e, "age", "1.1", "1", num=70 + (p[r] % 25), unit="a")
        _item(items, e, "sex", "1.2", "1", codes=_codes((p[r] % 2).astype(np.int64), SEX))
        rhythm = np.where(rng.random(k) < 0.75, 0, 4)  # sinus rhythm or atrial fibrillation
        _item(items, e, "ecg_finding", "6.1", "6", codes=_codes(rhythm, FINDINGS))
        extra = np.where(lbbb_patient[r] & (rng.random(k) < 0.7), 1, rng.choice([2, 3, -1], k, p=[0.1, 0.1, 0.8]))
        has_extra = extra >= 0
        _item(items, e[has_extra], "ecg_finding", "6.2", "6", codes=_codes(extra[has_extra], FINDINGS))
    # registry: 13 items
    e, r = ids(5)
    k = len(e)
    diabetes = rng.random(k) < 0.3
    _item(items, e, "tavi_date", "4.1", "4", day=tavi[r])
    _item(items, e, "age", "2.1", "2", num=70 + (p[r] % 25), unit="a")
    _item(items, e, "sex", "2.2", "2", codes=_codes((p[r] % 2).astype(np.int64), SEX))
    _item(items, e, "height", "2.3", "2", num=np.round(150 + rng.random(k) * 40), unit="cm")
    _item(items, e, "weight", "2.4", "2", num=np.round(50 + rng.random(k) * 60), unit="kg")
    _item(items, e, "lvef", "3", "0", num=np.round(20 + rng.random(k) * 50), unit="%")
    _item(items, e, "diabetes", "1.1", "1", num=diabetes.astype(np.float64),
          codes=_codes(np.where(diabetes, 0, 1), [YES, NO]))
    _item(items, e, "diabetes_treatment", "1.1.1", "1", codes=_codes(rng.integers(0, 3, k), DIAB_TREAT))
    _item(items, e, "nyha_class", "1.2", "1", codes=_codes(rng.choice(4, k, p=[0.1, 0.3, 0.45, 0.15]), NYHA))
    _item(items, e, "access_route", "4.3", "4", codes=_codes((rng.random(k) < 0.1).astype(np.int64), ACCESS))
    self_exp = rng.random(k) < 0.45
    _item(items, e, "prosthesis_type", "4.2", "4", codes=_codes(self_exp.astype(np.int64), PROSTHESIS))
    _item(items, e, "prosthesis_size", "4.4", "4", num=rng.choice([23.0, 26.0, 29.0], k), unit="mm")
    vinv = rng.random(k) < 0.05
    _item(items, e, "valve_in_valve", "4.5", "4", num=vinv.astype(np.float64), codes=_codes(np.where(vinv, 0, 1), [YES, NO]))
    # procedures: ~8 items
    e, r = ids(6)
    k = len(e)
    risk = 0.08 + 0.25 * lbbb_patient[r] + 0.1 * self_exp
    pacer = rng.random(k) < risk
    for j in range(2):
        _item(items, e, "procedure_code", f"1.{j + 1}", f"1.{j + 1}", codes=_codes(rng.integers(0, 4, k), OPS))
        _item(items, e, "procedure_date", f"1.{j + 1}.1", f"1.{j + 1}", day=tavi[r] - rng.integers(0, 60, k).astype(np.int32))
    _item(items, e, "tavi_date", "2.1", "2", day=tavi[r])
    _item(items, e, "pacemaker_in_situ", "2.0", "2", num=np.zeros(k), codes=_codes(np.ones(k, np.int64), [YES, NO]))
    _item(items, e, "pacemaker_after_tavi", "2.2", "2", num=pacer.astype(np.float64),
          codes=_codes(np.where(pacer, 0, 1), [YES, NO]))
    _item(items, e[pacer], "days_tavi_to_pacemaker", "2.3", "2", num=rng.integers(0, 30, int(pacer.sum())), unit="d")
    # SEG: 2-4 segments each
    e, r = ids(SEG_SLOT)
    count = rng.integers(2, 5, len(e))
    _attr(attrs, e, "segment_count", num=count.astype(np.float64))
    _attr(attrs, e, "segmentation_type", text=np.int32(V("BINARY")))
    for j in range(4):
        sel = count > j
        m = int(sel.sum())
        typ = np.full(m, j) if j < 2 else rng.integers(2, 4, m)
        algo = rng.integers(0, 3, m)
        t = np.array([[V(c) for c in st] for st in SEG_TYPES], np.int32)[typ]
        segs.add(entity_id=e[sel], segment_number=np.full(m, j + 1, np.int32),
                 label=np.array([V(s[2]) for s in SEG_TYPES], np.int32)[typ],
                 category_code=np.int32(V(TISSUE[0])), category_scheme=np.int32(V(TISSUE[1])),
                 category_meaning=np.int32(V(TISSUE[2])), type_code=t[:, 0], type_scheme=t[:, 1], type_meaning=t[:, 2],
                 algorithm_type=np.array([V(a) for a in ALGO], np.int32)[algo],
                 algorithm_name=np.where(algo == 0, 0, V("TotalSegmentator")).astype(np.int32))
    # SR flags
    sr = (slots >= 3) & (slots <= 6)
    _attr(attrs, eid[sr], "completion_flag", text=np.int32(V("COMPLETE")))
    _attr(attrs, eid[sr], "verification_flag", text=np.int32(V("UNVERIFIED")))
    return Chunk(ent, attrs.done(), items.done(), segs.done())


def _insert(con: Any, chunk: Chunk) -> None:
    kinds = "[" + ", ".join(f"'{k}'" for k, *_ in SLOT_INFO) + "]"
    templates = "[" + ", ".join(f"'{t}'" if t else "NULL" for _, t, *_ in SLOT_INFO) + "]"
    classes = "[" + ", ".join(f"'{c}'" for _, _, c, _ in SLOT_INFO) + "]"
    bits = "[" + ", ".join(str(KIND_BITS[k]) for k, *_ in SLOT_INFO) + "]"
    # Derived columns (schema.DERIVED) as DuckIndex fills them: pid = patient + 1, the entity's kind /
    # template on its side rows (entity id = patient * SLOTS + slot + 1).
    slot, pid = f"((entity_id - 1) % {SLOTS})", f"CAST((entity_id - 1) // {SLOTS} + 1 AS INTEGER)"
    con.register("_e", chunk.entities)
    con.execute(f"""INSERT INTO entities SELECT entity_id, {kinds}[slot + 1], {templates}[slot + 1],
        'P' || lpad(CAST(p AS VARCHAR), 7, '0'), '1.2.826.0.1.' || p, '1.2.826.0.2.' || entity_id,
        CASE WHEN slot = {CT_SLOT} THEN NULL ELSE '1.2.826.0.3.' || entity_id END, {classes}[slot + 1],
        {kinds}[slot + 1], DATE '{EPOCH}' + day, CAST(DATE '{EPOCH}' + day AS TIMESTAMP), n_instances,
        '/bench/' || p || '/' || entity_id || '.dcm', CAST(p + 1 AS INTEGER) FROM _e""")
    con.execute(f"""INSERT INTO patients SELECT CAST(p + 1 AS INTEGER), 'P' || lpad(CAST(p AS VARCHAR), 7, '0'),
        bit_or({bits}[slot + 1]) FROM _e GROUP BY p""")
    con.unregister("_e")
    con.register("_a", chunk.attributes)
    con.execute(f"INSERT INTO attributes SELECT entity_id, {V.sql('name')}, num, {V.sql('text')}, {pid}, "
                f"{kinds}[{slot} + 1] FROM _a")
    con.unregister("_a")
    con.register("_i", chunk.items)
    con.execute(f"""INSERT INTO items SELECT entity_id, {V.sql('field')}, {V.sql('item_path')}, {V.sql('group_key')},
        num, {V.sql('unit')}, {V.sql('code_value')}, {V.sql('code_scheme')}, {V.sql('code_meaning')}, NULL,
        CASE WHEN date >= 0 THEN DATE '{EPOCH}' + date END, {pid}, {templates}[{slot} + 1] FROM _i""")
    con.unregister("_i")
    con.register("_s", chunk.segments)
    cols = ["label", "category_code", "category_scheme", "category_meaning", "type_code", "type_scheme",
            "type_meaning", "algorithm_type", "algorithm_name"]
    con.execute(f"INSERT INTO segments SELECT entity_id, segment_number, {', '.join(V.sql(c) for c in cols)}, "
                f"NULL, NULL, NULL, {pid} FROM _s")
    con.unregister("_s")


@dataclass
class Built:
    index: DuckIndex
    patients: int
    items: int
    seconds: float
    insert_seconds: float
    optimize_seconds: float
    chunks: list[Chunk]  # kept only for the baseline size


def build(path: Path, patients: int, *, chunk: int = 50_000, keep_rows: bool = False, seed: int = 0) -> Built:
    """A DuckDB index of ``patients`` synthetic patients at ``path`` (replaced)."""
    path.unlink(missing_ok=True)
    index = DuckIndex(path)
    rng = np.random.default_rng(seed)
    kept, items, insert_s = [], 0, 0.0
    t0 = time.perf_counter()
    for first in range(0, patients, chunk):
        rows = generate(first, min(chunk, patients - first), rng)
        t1 = time.perf_counter()
        index.con.execute("BEGIN")
        _insert(index.con, rows)
        index.con.execute("COMMIT")
        insert_s += time.perf_counter() - t1
        items += len(rows.items["entity_id"])
        if keep_rows:
            kept.append(rows)
    t1 = time.perf_counter()
    index.optimize(force=True)  # what ingest does lazily: sort for zone maps (and checkpoint)
    optimize_s = time.perf_counter() - t1
    return Built(index, patients, items, time.perf_counter() - t0, insert_s, optimize_s, kept)


# --- baseline: the test oracle's plain-Python evaluation over the same rows --------------------------

def baseline_oracle(chunks: list[Chunk]) -> Any:
    """``tests.oracle.Oracle`` holding the rows of ``chunks`` as its entities (no DICOM reading)."""
    from tests.oracle import TEMPLATE_DIR, Entity, Oracle, Value, load_template_defs

    words = [None, *V.ids]
    oracle = Oracle.__new__(Oracle)
    oracle.titles, oracle.templates = load_template_defs([TEMPLATE_DIR])
    oracle.entities = []
    by_id: dict[int, Entity] = {}
    for ch in chunks:
        en = ch.entities
        for eid, slot, p, day, n_inst in zip(en["entity_id"].tolist(), en["slot"].tolist(), en["p"].tolist(),
                                             en["day"].tolist(), en["n_instances"].tolist(), strict=True):
            kind, template, sop_class, modality = SLOT_INFO[slot]
            d = EPOCH + timedelta(days=day)
            ent = Entity(kind, template, f"P{p:07d}", str(eid), d)
            ent.values["date"].append(Value(None, day=d))
            ent.values["n_instances"].append(Value(None, num=float(n_inst)))
            ent.values["modality"].append(Value(None, text=modality))
            ent.values["sop_class_uid"].append(Value(None, text=sop_class))
            by_id[eid] = ent
            oracle.entities.append(ent)
        a = ch.attributes
        for eid, name, num, text in zip(a["entity_id"].tolist(), a["name"].tolist(), a["num"].tolist(),
                                        a["text"].tolist(), strict=True):
            value = Value(None, text=words[text]) if text else Value(None, num=num)
            by_id[eid].values[words[name]].append(value)
        it = ch.items
        for eid, fld, grp, num, code, scheme, meaning, day in zip(
                *(it[c].tolist() for c in ("entity_id", "field", "group_key", "num", "code_value", "code_scheme",
                                           "code_meaning", "date")), strict=True):
            ent = by_id[eid]
            name = words[fld]
            fdef = oracle.field_def(name, ent.template)
            if fdef.vtype == "boolean":
                v = Value(words[grp], flag=num != 0)
            elif fdef.vtype == "coded":
                v = Value(words[grp], code=(words[code], words[scheme], words[meaning]))
            elif fdef.vtype == "date":
                v = Value(words[grp], day=EPOCH + timedelta(days=day))
            else:
                v = Value(words[grp], num=num)
            ent.values[name].append(v)
        s = ch.segments
        for eid, number, label, ttype, tscheme, tmeaning, algo, algo_name in zip(
                *(s[c].tolist() for c in ("entity_id", "segment_number", "label", "type_code", "type_scheme",
                                          "type_meaning", "algorithm_type", "algorithm_name")), strict=True):
            ent, item = by_id[eid], f"segment{number}"
            ent.values["segment_number"].append(Value(item, num=float(number)))
            ent.values["segment_label"].append(Value(item, text=words[label]))
            ent.values["segment_category"].append(Value(item, code=TISSUE))
            ent.values["segment_type"].append(Value(item, code=(words[ttype], words[tscheme], words[tmeaning])))
            ent.values["algorithm_type"].append(Value(item, text=words[algo]))
            if algo_name:
                ent.values["algorithm_name"].append(Value(item, text=words[algo_name]))
    return oracle


# --- running ---------------------------------------------------------------------------------------

def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    """Run ``fn`` once to warm up, then ``repeat`` times; milliseconds per run and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def pct(times: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``times`` (nearest rank)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="patient counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=11, help="timed runs per spec (after one warm-up)")
    ap.add_argument("--baseline-repeat", type=int, default=3, help="timed baseline runs per spec")
    ap.add_argument("--db-dir", type=Path, default=None, help="where the index files go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the index files")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's, = cores)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console()
    catalog = field_catalog()  # the synthetic index has no store: the built-in fields
    specs: dict[str, CohortSpec] = {name: parse_text(text, catalog=catalog) for name, text in SPECS.items()}
    tmp = tempfile.TemporaryDirectory(prefix="query-bench-")
    db_dir = args.db_dir or Path(tmp.name)
    db_dir.mkdir(parents=True, exist_ok=True)

    build_table = Table(title="index build (rows generated with numpy, appended to DuckDB)")
    for col in ("patients", "entities", "SR items", "build s", "of which optimize s", "SR items/s",
                "insert-only items/s", "file MB"):
        build_table.add_column(col, justify="right")
    lat = Table(title=f"query latency, ms (p50 / p95 of {args.repeat} runs after a warm-up)")
    lat.add_column("spec")
    for n in sizes:
        lat.add_column(f"{n:,} p50", justify="right")
        lat.add_column(f"{n:,} p95", justify="right")
    lat.add_column("patients matched", justify="right")
    results: dict[str, list[str]] = {name: [] for name in specs}
    matched: dict[str, list[str]] = {name: [] for name in specs}
    base = Table(title=f"DuckDB vs BASELINE (plain-Python oracle evaluator, same rows) at {sizes[0]:,} patients")
    for col in ("spec", "DuckDB p50 ms", "baseline p50 ms", "speed-up", "same counts"):
        base.add_column(col, justify="right")

    for i, n in enumerate(sizes):
        path = db_dir / f"bench-{n}.duckdb"
        with console.status(f"building {n:,} patients ..."):
            built = build(path, n, keep_rows=(i == 0))
        index = built.index
        if args.threads:
            index.con.execute(f"SET threads = {int(args.threads)}")
        threads = index.scalar("SELECT current_setting('threads')")
        build_table.add_row(f"{n:,}", f"{index.count_entities():,}", f"{built.items:,}", f"{built.seconds:.1f}",
                            f"{built.optimize_seconds:.1f}", f"{built.items / built.seconds:,.0f}",
                            f"{built.items / built.insert_seconds:,.0f}",
                            f"{path.stat().st_size / 1e6:.0f}")
        console.print(f"[dim]{n:,} patients built in {built.seconds:.1f} s; DuckDB threads = {threads}[/dim]")
        oracle = baseline_oracle(built.chunks) if i == 0 else None
        for name, spec in specs.items():
            times, counts = timed(lambda spec=spec, index=index: evaluate(index, spec), args.repeat)
            results[name] += [f"{pct(times, 0.5):.1f}", f"{pct(times, 0.95):.1f}"]
            matched[name].append(f"{counts.patients:,}")
            if oracle is not None:
                btimes, bcounts = timed(lambda spec=spec, oracle=oracle: oracle.evaluate(spec),
                                          args.baseline_repeat)
                same = bcounts.to_json() == counts.to_json()
                d50, b50 = pct(times, 0.5), pct(btimes, 0.5)
                base.add_row(name, f"{d50:.1f}", f"{b50:.1f}", f"{b50 / d50:.1f}x", "yes" if same else "[red]NO[/red]")
                if not same:
                    console.print(f"[red]{name}: DuckDB {counts.to_json()} != baseline {bcounts.to_json()}[/red]")
        index.close()
        if not args.keep:
            path.unlink(missing_ok=True)
    for name in specs:
        lat.add_row(name + (" (target p50 <= 100 ms at 1M)" if name == NESTED else ""), *results[name],
                    " / ".join(matched[name]))
    console.print(build_table)
    console.print(lat)
    console.print(base)
    console.print("specs:")
    for name, text in SPECS.items():
        console.print(f"  {name}: {text}", markup=False, highlight=False)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
