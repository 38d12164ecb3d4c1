"""Which patients an export holds and which of their objects feed each model input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cohort.errors import SpecError
from cohort.index.compile_duck import POSITIVE, materialized
from cohort.index.duck import DuckIndex
from cohort.index.schema import IMAGE_KINDS
from cohort.results import ALL_SUBSET
from cohort.spec.model import CohortSpec

ECG_SOURCE_CONCEPT = "content:121112 DCM"  # TID 3708 Source of Measurement: the report's waveform


@dataclass
class PatientSelection:
    """One exported patient: label, matched object UIDs, and the entities used as model inputs."""

    patient_id: str
    label: int | None
    uids: list[str] = field(default_factory=list)
    ct_files: list[Path] = field(default_factory=list)
    ecg_file: Path | None = None
    ecg_report_entity: int | None = None
    registry_entity: int | None = None


def _first_object(spec: CohortSpec, kind: str, template: str | None = None) -> str | None:
    for name, obj in spec.objects.items():
        if obj.kind == kind and (template is None or obj.template == template):
            return name
    return None


def select_patients(index: DuckIndex, spec: CohortSpec, subset: str | None) -> list[PatientSelection]:
    """Patients of the cohort (or a subset of it), each with label and model-input objects.

    Inputs come from the spec's own object conditions where it names them (its first CT object, its
    first ECG object or the waveform its first ECG report measured); otherwise the patient's most
    recent object of that kind is used, so a cohort defined without ECG still exports ECGs.
    """
    con = index.con
    with materialized(index, spec) as q:
        key = subset or ALL_SUBSET
        if key not in q.subsets:
            raise SpecError(f"unknown subset {subset!r}; this spec has {sorted(k for k in q.subsets)}")
        rel = q.subsets[key]
        label_sql = (f"CASE WHEN l.v IS NULL OR l.v = 0 THEN NULL WHEN l.v = {POSITIVE} THEN 1 ELSE 0 END"
                     if q.label else "NULL")
        join = f"LEFT JOIN {q.label} l ON l.patient_id = s.patient_id" if q.label else ""
        rows = con.execute(f"SELECT s.patient_id, {label_sql} FROM {rel} s {join} ORDER BY 1").fetchall()
        selections = {pid: PatientSelection(pid, None if lab is None else int(lab)) for pid, lab in rows}
        matched: dict[str, dict[str, list[tuple[int, str]]]] = {}
        for name, obj_rel in q.objects.items():
            for pid, eid, uid in con.execute(
                    f"SELECT m.patient_id, m.entity_id, CASE WHEN e.kind IN {tuple(IMAGE_KINDS)} THEN e.series_uid "
                    f"ELSE e.sop_uid END FROM {obj_rel} m JOIN entities e ON e.entity_id = m.entity_id "
                    f"JOIN {rel} s ON s.patient_id = m.patient_id "
                    f"ORDER BY m.patient_id, e.entity_date DESC NULLS LAST, m.entity_id").fetchall():
                matched.setdefault(pid, {}).setdefault(name, []).append((int(eid), str(uid)))
    ct_obj = _first_object(spec, "CT")
    ecg_obj = _first_object(spec, "ECG")
    report_obj = _first_object(spec, "SR", "ecg_report")
    for pid, sel in selections.items():
        objs = matched.get(pid, {})
        sel.uids = sorted({uid for pairs in objs.values() for _, uid in pairs})
        ct = objs.get(ct_obj, []) if ct_obj else []
        ct_eid = ct[0][0] if ct else _latest(index, pid, "CT")
        if ct_eid is not None:
            sel.ct_files = _files(index, ct_eid)
        sel.ecg_report_entity = (objs[report_obj][0][0] if report_obj and objs.get(report_obj)
                                 else _latest(index, pid, "SR", "ecg_report"))
        ecg_eid = objs[ecg_obj][0][0] if ecg_obj and objs.get(ecg_obj) else None
        if ecg_eid is None and sel.ecg_report_entity is not None:
            ecg_eid = _referenced_waveform(index, sel.ecg_report_entity)
        if ecg_eid is None:
            ecg_eid = _latest(index, pid, "ECG")
        if ecg_eid is not None:
            files = _files(index, ecg_eid)
            sel.ecg_file = files[0] if files else None
        sel.registry_entity = _latest(index, pid, "SR", "registry")
    return list(selections.values())


def _latest(index: DuckIndex, patient_id: str, kind: str, template: str | None = None) -> int | None:
    sql = "SELECT entity_id FROM entities WHERE patient_id = ? AND kind = ?"
    args: list[object] = [patient_id, kind]
    if template:
        sql += " AND template = ?"
        args.append(template)
    row = index.con.execute(sql + " ORDER BY entity_date DESC NULLS LAST, entity_id DESC LIMIT 1", args).fetchone()
    return int(row[0]) if row else None


def _referenced_waveform(index: DuckIndex, report_entity: int) -> int | None:
    row = index.con.execute(
        "SELECT e.entity_id FROM refs r JOIN entities e ON e.sop_uid = r.ref_sop_uid "
        "WHERE r.entity_id = ? AND r.relationship = ? AND e.kind = 'ECG' LIMIT 1",
        [report_entity, ECG_SOURCE_CONCEPT]).fetchone()
    return int(row[0]) if row else None


def _files(index: DuckIndex, entity_id: int) -> list[Path]:
    return [Path(p) for (p,) in index.con.execute(
        "SELECT path FROM ingested WHERE entity_id = ? ORDER BY path", [entity_id]).fetchall()]
