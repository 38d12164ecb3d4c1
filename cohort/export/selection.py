"""Which patients an export holds and, per model input, the one object that feeds it.

The rules (docs/export.md explains them with examples):

* Every model input has one *source condition* in the spec: ``ct`` the first CT object; ``ecg`` the
  first ECG object, else the waveform that the chosen report of the first ``SR:ecg_report`` object
  measured (TID 3708 source of measurement); ``ecg_report`` (tabular ECG features) the first
  ``SR:ecg_report`` object, else the report that measured the chosen waveform; ``registry``
  (tabular registry features) the first ``SR:registry`` object. "First" is the spec's order.
* Candidates are the entities of the source condition that the engine matched for that patient
  (``compile_duck.materialized``: all predicates, its window included), so export and query cannot
  disagree. A patient without a candidate has the input *missing* (``null`` in the datalist); no
  other object stands in, and a spec without a source condition for an input exports none of it.
* Tie-break among candidates: closest to the patient's index event (in days), the earlier one when
  two are equally close, then the smaller UID. A patient without an index event: the latest, then
  the smaller UID. The date compared is the one the condition's window uses (``own_date_field`` or
  the entity date).
* Index event: the earliest date of the label object's matched entities, read as the spec's windows
  read it (their ``date_field`` when they are timed relative to the label object, else its event
  date). No label, or no matched label entity: no index event.

``cohort.export.guard`` then refuses inputs dated after the index event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum
from pathlib import Path

from cohort.errors import SpecError
from cohort.index.compile_duck import POSITIVE, CompiledQuery, event_dates_sql, lit, materialized
from cohort.index.duck import DuckIndex
from cohort.index.schema import IMAGE_KINDS
from cohort.results import ALL_SUBSET
from cohort.spec.model import CohortSpec

ECG_SOURCE_CONCEPT = "content:121112 DCM"
MEASUREMENTS_TEMPLATE = "measurements"  # cohort/templates/measurements.yaml, written by cohort.ingest.derive  # TID 3708 Source of Measurement: the report's waveform
_UID_SQL = f"CASE WHEN e.kind IN ({', '.join(lit(k) for k in IMAGE_KINDS)}) THEN e.series_uid ELSE e.sop_uid END"


class ModelInput(StrEnum):
    """The model inputs an export fills; ``ct`` and ``ecg`` are the datalist's array keys."""

    CT = "ct"
    ECG = "ecg"
    ECG_REPORT = "ecg_report"
    REGISTRY = "registry"
    MEASUREMENTS = "measurements"  # the measurement SR derived from a SEG drawn on the chosen CT series


@dataclass(frozen=True)
class ChosenObject:
    """The entity feeding one model input of one patient, and the condition it satisfies."""

    entity_id: int
    uid: str  # series UID for image kinds, SOP Instance UID otherwise
    kind: str
    day: date | None  # the date the tie-break and the post-index guard look at
    condition: str  # the spec object it comes from
    via: str | None = None  # for a linked object: how it is linked to the condition's entity

    def describe(self) -> dict[str, str | None]:
        """The manifest's record of this choice."""
        return {"uid": self.uid, "kind": self.kind, "date": self.day.isoformat() if self.day else None,
                "condition": self.condition, "via": self.via}


@dataclass
class PatientSelection:
    """One exported patient: label, index event, every matched UID, and the objects of each input."""

    patient_id: str
    label: int | None
    index_date: date | None = None
    uids: list[str] = field(default_factory=list)  # matched entities of every condition (manifest, hash)
    inputs: dict[ModelInput, ChosenObject] = field(default_factory=dict)  # a missing input is absent
    ct_files: list[Path] = field(default_factory=list)
    ecg_file: Path | None = None

    def entity(self, role: ModelInput) -> int | None:
        """The entity id feeding ``role``, None when that input is missing."""
        chosen = self.inputs.get(role)
        return chosen.entity_id if chosen else None

    @property
    def ecg_report_entity(self) -> int | None:
        return self.entity(ModelInput.ECG_REPORT)

    @property
    def registry_entity(self) -> int | None:
        return self.entity(ModelInput.REGISTRY)


@dataclass(frozen=True)
class SourceConditions:
    """Which spec object feeds which input (None: the spec names none)."""

    ct: str | None
    ecg: str | None  # an ECG object: the waveform itself
    ecg_report: str | None  # an SR:ecg_report object
    registry: str | None  # an SR:registry object

    @classmethod
    def of(cls, spec: CohortSpec) -> SourceConditions:
        return cls(_first_object(spec, "CT"), _first_object(spec, "ECG"), _first_object(spec, "SR", "ecg_report"),
                   _first_object(spec, "SR", "registry"))

    def describe(self) -> dict[str, str | None]:
        """Input -> where it comes from, in words (for the manifest)."""
        ecg = self.ecg or (f"the waveform measured by {self.ecg_report}" if self.ecg_report else None)
        report = self.ecg_report or (f"the report that measured {self.ecg}" if self.ecg else None)
        return {ModelInput.CT: self.ct, ModelInput.ECG: ecg, ModelInput.ECG_REPORT: report,
                ModelInput.REGISTRY: self.registry}


def _first_object(spec: CohortSpec, kind: str, template: str | None = None) -> str | None:
    for name, obj in spec.objects.items():
        if obj.kind == kind and (template is None or obj.template == template):
            return name
    return None


def choice_key(day: date | None, uid: str, index_date: date | None) -> tuple[int, int, int, str]:
    """Sort key of a candidate: the smallest is chosen (see the module docstring)."""
    if day is None:
        return (1, 0, 0, uid)  # undated entities only when nothing dated qualifies
    if index_date is None:
        return (0, -day.toordinal(), 0, uid)
    offset = (day - index_date).days
    return (0, abs(offset), int(offset > 0), uid)


def select_patients(index: DuckIndex, spec: CohortSpec, subset: str | None) -> list[PatientSelection]:
    """Patients of the cohort (or a subset of it), each with label, index event and model inputs."""
    con = index.con
    sources = SourceConditions.of(spec)
    with materialized(index, spec) as q:
        key = subset or ALL_SUBSET
        if key not in q.subsets:
            raise SpecError(f"unknown subset {subset!r}; this spec has {sorted(k for k in q.subsets)}")
        rel = q.subsets[key]
        label_sql = (f"CASE WHEN l.v IS NULL OR l.v = 0 THEN NULL WHEN l.v = {POSITIVE} THEN 1 ELSE 0 END"
                     if q.label else "NULL")
        join = f"LEFT JOIN {q.label} l ON l.pid = s.pid" if q.label else ""
        rows = con.execute(f"SELECT s.patient_id, {label_sql} FROM {rel} s {join} ORDER BY 1").fetchall()
        index_dates = _index_dates(index, q, rel)
        selections = {pid: PatientSelection(pid, None if lab is None else int(lab), index_dates.get(pid))
                      for pid, lab in rows}
        candidates: dict[str, dict[str, list[ChosenObject]]] = {}
        for name, obj_rel in q.objects.items():
            for pid, eid, day, uid, kind in con.execute(
                    f"SELECT m.patient_id, m.entity_id, m.d, {_UID_SQL}, e.kind FROM {obj_rel} m "
                    f"JOIN entities e ON e.entity_id = m.entity_id JOIN {rel} s ON s.pid = m.pid").fetchall():
                candidates.setdefault(pid, {}).setdefault(name, []).append(
                    ChosenObject(int(eid), str(uid), str(kind), day, name))
    for pid, sel in selections.items():
        objs = candidates.get(pid, {})
        sel.uids = sorted({c.uid for cands in objs.values() for c in cands})
        for role, source in ((ModelInput.CT, sources.ct), (ModelInput.ECG, sources.ecg),
                             (ModelInput.ECG_REPORT, sources.ecg_report), (ModelInput.REGISTRY, sources.registry)):
            best = _best(objs.get(source, []) if source else [], sel.index_date)
            if best is not None:
                sel.inputs[role] = best
    _link_ecg(index, selections.values(), sources)
    _link_measurements(index, selections.values())
    _attach_files(index, selections.values())
    return list(selections.values())


def _best(candidates: Iterable[ChosenObject], index_date: date | None) -> ChosenObject | None:
    return min(candidates, key=lambda c: choice_key(c.day, c.uid, index_date), default=None)


def _index_dates(index: DuckIndex, q: CompiledQuery, rel: str) -> dict[str, date]:
    """Patient -> index event (see the module docstring), for the patients of ``rel``."""
    plan = q.plan
    if plan.label is None:
        return {}
    name = plan.label.object
    fields = list(dict.fromkeys(o.within.of_date for o in plan.objects.values()
                                if o.within is not None and o.within.of == name)) or [None]
    events = " UNION ALL ".join(f"SELECT pid, d FROM {event_dates_sql(q.objects[name], plan.objects[name], f)}"
                                for f in fields)
    rows = index.con.execute(f"SELECT s.patient_id, min(ev.d) FROM ({events}) ev JOIN {rel} s ON s.pid = ev.pid "
                             f"WHERE ev.d IS NOT NULL GROUP BY 1").fetchall()
    return {str(pid): d for pid, d in rows}


def _link_ecg(index: DuckIndex, selections: Iterable[PatientSelection], sources: SourceConditions) -> None:
    """Fill the ECG input from the chosen report, or the report input from the chosen waveform."""
    if sources.ecg is None and sources.ecg_report is not None:
        _fill_linked(index, selections, ModelInput.ECG_REPORT, ModelInput.ECG, "measured by report")
    elif sources.ecg is not None and sources.ecg_report is None:
        _fill_linked(index, selections, ModelInput.ECG, ModelInput.ECG_REPORT, "measures waveform")


def _fill_linked(index: DuckIndex, selections: Iterable[PatientSelection], have: ModelInput, want: ModelInput,
                 via: str) -> None:
    by_entity = {s.inputs[have].entity_id: s for s in selections if have in s.inputs}
    linked = _linked(index, by_entity, waveforms_of_reports=have is ModelInput.ECG_REPORT)
    for eid, found in linked.items():
        sel = by_entity[eid]
        chosen = sel.inputs[have]
        best = _best(found, sel.index_date)
        if best is not None:
            sel.inputs[want] = replace(best, condition=chosen.condition, via=f"{via} {chosen.uid}")


def _linked(index: DuckIndex, entities: dict[int, PatientSelection], *,
            waveforms_of_reports: bool) -> dict[int, list[ChosenObject]]:
    """For each entity id: the ECG waveforms its report measured, or the ECG reports measuring it."""
    if not entities:
        return {}
    if waveforms_of_reports:
        sql = ("SELECT r.entity_id, e.entity_id, e.entity_date, e.sop_uid, e.kind FROM refs r "
               "JOIN entities e ON e.sop_uid = r.ref_sop_uid WHERE e.kind = 'ECG' AND r.relationship = ? "
               "AND r.entity_id IN (SELECT unnest(?::INTEGER[]))")
    else:
        sql = ("SELECT w.entity_id, e.entity_id, e.entity_date, e.sop_uid, e.kind FROM entities w "
               "JOIN refs r ON r.ref_sop_uid = w.sop_uid JOIN entities e ON e.entity_id = r.entity_id "
               "WHERE e.kind = 'SR' AND e.template = 'ecg_report' AND r.relationship = ? "
               "AND w.entity_id IN (SELECT unnest(?::INTEGER[]))")
    out: dict[int, list[ChosenObject]] = defaultdict(list)
    for src, eid, day, uid, kind in index.con.execute(sql, [ECG_SOURCE_CONCEPT, sorted(entities)]).fetchall():
        out[int(src)].append(ChosenObject(int(eid), str(uid), str(kind), day, ""))
    return out


def _link_measurements(index: DuckIndex, selections: Iterable[PatientSelection]) -> None:
    """The measurements input: a derived measurement SR (template ``measurements``) that references
    the chosen CT series (a SEG drawn on exactly the images the model sees); tie-break as for inputs."""
    by_series: dict[str, list[PatientSelection]] = defaultdict(list)
    for sel in selections:
        if ModelInput.CT in sel.inputs:
            by_series[sel.inputs[ModelInput.CT].uid].append(sel)
    if not by_series:
        return
    found: dict[str, list[ChosenObject]] = defaultdict(list)
    for series, eid, day, uid, kind in index.con.execute(
            "SELECT DISTINCT r.ref_series_uid, e.entity_id, e.entity_date, e.sop_uid, e.kind FROM refs r "
            "JOIN entities e ON e.entity_id = r.entity_id WHERE e.kind = 'SR' AND e.template = ? "
            "AND r.ref_series_uid IN (SELECT unnest(?::VARCHAR[]))",
            [MEASUREMENTS_TEMPLATE, sorted(by_series)]).fetchall():
        found[str(series)].append(ChosenObject(int(eid), str(uid), str(kind), day, ""))
    for series, sels in by_series.items():
        for sel in sels:
            best = _best(found.get(series, []), sel.index_date)
            if best is not None:
                ct = sel.inputs[ModelInput.CT]
                sel.inputs[ModelInput.MEASUREMENTS] = replace(best, condition=ct.condition,
                                                              via=f"measures CT series {ct.uid}")


def _attach_files(index: DuckIndex, selections: Iterable[PatientSelection]) -> None:
    """The stored files of the chosen CT series and ECG waveforms."""
    sels = list(selections)
    wanted = [s.inputs[r].entity_id for s in sels for r in (ModelInput.CT, ModelInput.ECG) if r in s.inputs]
    files: dict[int, list[Path]] = defaultdict(list)
    if wanted:
        for eid, path in index.con.execute("SELECT entity_id, path FROM ingested WHERE entity_id IN "
                                           "(SELECT unnest(?::INTEGER[])) ORDER BY entity_id, path",
                                           [sorted(set(wanted))]).fetchall():
            files[int(eid)].append(index.file_path(path))
    for sel in sels:
        if ModelInput.CT in sel.inputs:
            sel.ct_files = files.get(sel.inputs[ModelInput.CT].entity_id, [])
        if ModelInput.ECG in sel.inputs:
            ecg = files.get(sel.inputs[ModelInput.ECG].entity_id, [])
            sel.ecg_file = ecg[0] if ecg else None
