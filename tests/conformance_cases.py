"""The shared conformance list: one small synthetic index (built from rows, no DICOM) and specs with
their exact expected counts. Every backend must answer every case identically.

Patients (P01..P14), what they have, and the traps they set:

P01  CT 0.6 mm; ECG; ECG report QRS 130 + LBBB; SEG with LV and RV (one SEG); procedures: TAVI
     2021-01-20, pacemaker yes (3 d); registry self-expanding, age 82, M
P02  CT 1.0 mm; two ECG reports: QRS 150 without LBBB, LBBB with QRS 100 (same-instance trap);
     SEG LV and SEG RV (split across two SEGs); procedures pacemaker no
P03  ECG report QRS 119 + RBBB; two procedure SRs: pacemaker yes and no (conflict: positive wins)
P04  CT 3.0 mm "Thorax nativ" only
P05  ECG waveform 500 Hz 10 s only; procedures pacemaker no
P06  ECG report QRS 120 + LBBB dated 200 days before TAVI; procedures pacemaker yes
P07  registry only: balloon-expandable, diabetes yes, NYHA III, LVEF 35 %
P08  free-text report; CT 2021-05-01; one SEG: calcification MANUAL (no algorithm name) and calcification
     SEMIAUTOMATIC (named): "exists false" in a group is about the whole SEG
P09  landmarks: (hinge, NCC) and (LM ostium, LCC)
P10  landmarks: (hinge, LCC)
P11  MR series; ECG report QRS 140, statement "Sinus rhythm", no findings
P12  procedures: 5-35a.00 on 2021-03-01, 5-377.1 on 2021-03-05
P13  procedures: 5-377.1 on 2020-01-01, 5-35a.00 on 2021-03-01 (group trap)
P14  ECG waveform 2021-06-01 and ECG report QRS 0.13 s stored as 130 ms, LBBB, no procedures
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cohort.index.extract import Extracted

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
ECG_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LBBB = ("63467002", "SCT", "Left bundle branch block")
RBBB = ("59118001", "SCT", "Right bundle branch block")
YES = ("373066001", "SCT", "Yes")
NO = ("373067005", "SCT", "No")
LV = ("87878005", "SCT", "Left ventricle")
RV = ("53085002", "SCT", "Right ventricle")
CALC = ("237897009", "SCT", "Calcified")
TISSUE = ("85756007", "SCT", "Tissue")
HINGE = ("HP001", "99FEDCOH", "Aortic valve hinge point")
LM_OSTIUM = ("1256091001", "SCT", "Ostium of left main coronary artery")
NCC = ("24865005", "SCT", "Non-coronary Sinus")
LCC = ("36371001", "SCT", "Left Sinus of Valsalva")
SELF_EXP = ("PT002", "99FEDCOH", "Self-expanding transcatheter valve")
BALLOON = ("PT001", "99FEDCOH", "Balloon-expandable transcatheter valve")
NYHA3 = ("420913000", "SCT", "New York Heart Association Classification - Class III")
MALE = ("M", "DCM", "Male")

_counter = itertools.count(1)


def _uid() -> str:
    return f"2.25.{next(_counter)}"


def _entity(pid: str, kind: str, date: str, *, template: str | None = None, modality: str | None = None,
            sop_class: str = SR_CLASS) -> Extracted:
    return Extracted(kind=kind, template=template, patient_id=pid, study_uid=f"1.2.{pid}", series_uid=_uid(),
                     sop_uid=_uid(), sop_class_uid=sop_class, modality=modality or kind, entity_date=date,
                     entity_datetime=f"{date} 10:00:00")


def _num(fld: str, pos: str, grp: str, value: float, unit: str) -> tuple:
    return (fld, pos, grp, value, unit, None, None, None, None, None)


def _code(fld: str, pos: str, grp: str, code: tuple[str, str, str]) -> tuple:
    return (fld, pos, grp, None, None, *code, None, None)


def _bool(fld: str, pos: str, grp: str, code: tuple[str, str, str]) -> tuple:
    return (fld, pos, grp, 1.0 if code == YES else 0.0, None, *code, None, None)


def _text(fld: str, pos: str, grp: str, text: str) -> tuple:
    return (fld, pos, grp, None, None, None, None, None, text, None)


def _date(fld: str, pos: str, grp: str, date: str) -> tuple:
    return (fld, pos, grp, None, None, None, None, None, None, date)


def ct(pid: str, date: str, thickness: float, description: str = "Cardio CTA", modality: str = "CT") -> Extracted:
    e = _entity(pid, modality, date, modality=modality, sop_class=CT_CLASS if modality == "CT" else MR_CLASS)
    e.attributes = [("slice_thickness", thickness, None), ("series_description", None, description),
                    ("kvp", 100.0, None)]
    return e


def ecg(pid: str, date: str, hz: float = 500.0, seconds: float = 10.0) -> Extracted:
    e = _entity(pid, "ECG", date, sop_class=ECG_CLASS)
    e.attributes = [("sampling_frequency", hz, None), ("duration_s", seconds, None), ("lead_count", 12.0, None)]
    return e


def ecg_report(pid: str, date: str, qrs: float | None, findings: tuple = (), statement: str | None = None) -> Extracted:
    e = _entity(pid, "SR", date, template="ecg_report")
    if qrs is not None:
        e.items.append(_num("qrs_duration", "5.1.2", "5.1", qrs, "ms"))
    for k, f in enumerate(findings, 1):
        e.items.append(_code("ecg_finding", f"6.{k}", "6", f))
    if statement:
        e.items.append(_text("ecg_statement", "7.1", "7", statement))
    return e


def procedures(pid: str, date: str, *, tavi: str | None = None, pacemaker: tuple | None = None,
               days: float | None = None, ops: tuple[tuple[str, str], ...] = ()) -> Extracted:
    e = _entity(pid, "SR", date, template="procedures")
    for k, (code, when) in enumerate(ops, 1):
        e.items.append(_code("procedure_code", f"1.{k}", f"1.{k}", (code, "99OPS", f"OPS {code}")))
        e.items.append(_date("procedure_date", f"1.{k}.1", f"1.{k}", when))
    if tavi:
        e.items.append(_date("tavi_date", "2.1", "2", tavi))
    if pacemaker:
        e.items.append(_bool("pacemaker_after_tavi", "2.2", "2", pacemaker))
    if days is not None:
        e.items.append(_num("days_tavi_to_pacemaker", "2.3", "2", days, "d"))
    return e


def registry(pid: str, date: str, *, prosthesis: tuple, age: float | None = None, sex: tuple | None = None,
             diabetes: tuple | None = None, nyha: tuple | None = None, lvef: float | None = None) -> Extracted:
    e = _entity(pid, "SR", date, template="registry")
    e.items.append(_code("prosthesis_type", "4.2", "4", prosthesis))
    e.items.append(_date("tavi_date", "4.1", "4", date))
    if age is not None:
        e.items.append(_num("age", "2.1", "2", age, "a"))
    if sex:
        e.items.append(_code("sex", "2.2", "2", sex))
    if diabetes:
        e.items.append(_bool("diabetes", "1.1", "1", diabetes))
    if nyha:
        e.items.append(_code("nyha_class", "1.2", "1", nyha))
    if lvef is not None:
        e.items.append(_num("lvef", "3", "0", lvef, "%"))
    return e


def seg(pid: str, date: str, segments: list[tuple[str, tuple, str]]) -> Extracted:
    e = _entity(pid, "SEG", date, sop_class=SEG_CLASS)
    e.segments = [(n, label, *TISSUE, *typ, algo, "site tool" if algo != "MANUAL" else None, None, None, None)
                  for n, (label, typ, algo) in enumerate(segments, 1)]
    e.attributes = [("segment_count", float(len(segments)), None)]
    return e


def landmarks(pid: str, date: str, groups: list[tuple[tuple, tuple]]) -> Extracted:
    e = _entity(pid, "SR", date, template="landmarks")
    for k, (finding, site) in enumerate(groups, 1):
        grp = f"5.{k}"
        e.items.append(_code("landmark_finding", f"{grp}.3", grp, finding))
        e.items.append(_code("landmark_site", f"{grp}.3.1", grp, site))
        e.items.append(("landmark_point", f"{grp}.4", grp, 1.0, None, None, None, None, "POINT", None))
    return e


def free_text(pid: str, date: str, text: str) -> Extracted:
    e = _entity(pid, "SR", date, template="free_text")
    e.items.append(_text("report_text", "1", "0", text))
    return e


def build_objects() -> list[Extracted]:
    """Every entity of the conformance index."""
    return [
        ct("P01", "2021-01-10", 0.6), ecg("P01", "2020-12-01"),
        ecg_report("P01", "2020-12-01", 130, (LBBB,)),
        seg("P01", "2021-01-10", [("LV", LV, "AUTOMATIC"), ("RV", RV, "AUTOMATIC")]),
        procedures("P01", "2021-01-23", tavi="2021-01-20", pacemaker=YES, days=3),
        registry("P01", "2021-01-20", prosthesis=SELF_EXP, age=82, sex=MALE),
        ct("P02", "2021-01-15", 1.0),
        ecg_report("P02", "2020-12-20", 150, ()), ecg_report("P02", "2020-12-21", 100, (LBBB,)),
        seg("P02", "2021-01-15", [("LV", LV, "SEMIAUTOMATIC")]), seg("P02", "2021-01-15", [("RV", RV, "MANUAL")]),
        procedures("P02", "2021-02-01", tavi="2021-02-01", pacemaker=NO),
        ecg_report("P03", "2021-01-05", 119, (RBBB,)),
        procedures("P03", "2021-02-10", tavi="2021-02-10", pacemaker=YES, days=8),
        procedures("P03", "2021-02-11", tavi="2021-02-10", pacemaker=NO),
        ct("P04", "2021-03-01", 3.0, "Thorax nativ"),
        ecg("P05", "2021-02-01", 500.0, 10.0), procedures("P05", "2021-03-01", tavi="2021-03-01", pacemaker=NO),
        ecg_report("P06", "2020-07-01", 120, (LBBB,)),
        procedures("P06", "2021-01-20", tavi="2021-01-17", pacemaker=YES, days=3),
        registry("P07", "2021-04-01", prosthesis=BALLOON, diabetes=YES, nyha=NYHA3, lvef=35),
        free_text("P08", "2021-05-02", "Befund: Linksschenkelblock, QRS breit"),
        ct("P08", "2021-05-01", 0.5), seg("P08", "2021-05-01", [("Calcium", CALC, "MANUAL"), ("Calcium", CALC, "SEMIAUTOMATIC")]),
        landmarks("P09", "2021-05-03", [(HINGE, NCC), (LM_OSTIUM, LCC)]),
        landmarks("P10", "2021-05-04", [(HINGE, LCC)]),
        ct("P11", "2021-06-01", 1.5, "Cardiac MR", modality="MR"),
        ecg_report("P11", "2021-06-02", 140, (), "Sinus rhythm"),
        procedures("P12", "2021-03-05", ops=(("5-35a.00", "2021-03-01"), ("5-377.1", "2021-03-05"))),
        procedures("P13", "2021-03-01", ops=(("5-377.1", "2020-01-01"), ("5-35a.00", "2021-03-01"))),
        ecg("P14", "2021-06-01", 1000.0, 12.5), ecg_report("P14", "2021-06-01", 130, (LBBB,)),
    ]


def build_duck_index():  # -> DuckIndex (imported lazily: the list itself needs no backend)
    """A fresh in-memory DuckDB index holding ``build_objects()``."""
    from cohort.index.duck import DuckIndex

    index = DuckIndex()
    index.add_extracted((obj, f"/conformance/{obj.patient_id}/{obj.sop_uid}.dcm") for obj in build_objects())
    return index


@dataclass(frozen=True)
class Case:
    """A spec and what every backend must answer (only the keys given are compared)."""

    id: str
    spec: dict[str, Any]
    patients: int | None = None
    subsets: dict[str, int] = field(default_factory=dict)
    labels: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # subset -> (pos, neg, unknown)
    distributions: list[dict[str, int]] = field(default_factory=list)  # per request: bin label -> count
    error: str | None = None  # substring of the SpecError expected instead


def _one(name: str, obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"objects": {name: obj}, "cohort": name, **extra}


def _sr(template: str, *where: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "SR", "template": template, "where": list(where)}


def _p(field_: str, op: str, value: Any = None, **kw: Any) -> dict[str, Any]:
    return {"field": field_, "op": op, "value": value, **kw}


_ECG_REPORT = "ecg_report"
_LABEL = {"object": "proc", "field": "pacemaker_after_tavi", "positive": [True], "negative": [False]}

CASES: list[Case] = [
    # --- kinds, attributes, operators -----------------------------------------------------------
    Case("any_ct", _one("ct", {"kind": "CT"}), patients=4),
    Case("ct_thin_slices", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "<=", 1.0)]}), patients=3),
    Case("ct_lt", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "<", 1.0)]}), patients=2),
    Case("ct_gt", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", ">", 1.0)]}), patients=1),
    Case("ct_eq", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "=", 1.0)]}), patients=1),
    Case("ct_ne", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "!=", 1.0)]}), patients=3),
    Case("ct_in", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "in", [0.5, 3.0])]}), patients=2),
    Case("ct_unit_cm", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "<=", 0.1, unit="cm")]}),
         patients=3),
    Case("ct_text_contains", _one("ct", {"kind": "CT", "where": [_p("series_description", "contains", "NATIV")]}),
         patients=1),
    Case("ct_text_eq", _one("ct", {"kind": "CT", "where": [_p("series_description", "=", "Cardio CTA")]}),
         patients=3),
    Case("ct_text_eq_is_exact", _one("ct", {"kind": "CT", "where": [_p("series_description", "=", "cardio cta")]}),
         patients=0),
    Case("ct_text_in", _one("ct", {"kind": "CT", "where": [
        _p("series_description", "in", ["Thorax nativ", "Cardiac MR"])]}), patients=1),
    Case("mr_kind", _one("mr", {"kind": "MR"}), patients=1),
    Case("ecg_attrs", _one("ecg", {"kind": "ECG", "where": [_p("sampling_frequency", ">=", 1, unit="kHz")]}),
         patients=1),
    Case("ecg_duration_ms", _one("ecg", {"kind": "ECG", "where": [_p("duration_s", ">", 10000, unit="ms")]}),
         patients=1),
    Case("entity_date", _one("ct", {"kind": "CT", "where": [_p("date", ">=", "2021-03-01")]}), patients=2),
    # --- SR items, units, same-instance ---------------------------------------------------------
    Case("qrs_ge_120", _one("r", _sr(_ECG_REPORT, _p("qrs_duration", ">=", 120))), patients=5),
    Case("qrs_seconds", _one("r", _sr(_ECG_REPORT, _p("qrs_duration", ">=", 0.12, unit="s"))), patients=5),
    Case("lbbb_alias", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "=", "LBBB"))), patients=4),
    Case("lbbb_code", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "=", "63467002 SCT"))), patients=4),
    Case("lbbb_meaning", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "=", "left bundle branch block"))), patients=4),
    Case("qrs_and_lbbb_same_report",
         _one("r", _sr(_ECG_REPORT, _p("qrs_duration", ">=", 120), _p("ecg_finding", "=", "LBBB"))), patients=3),
    Case("qrs_and_lbbb_any_reports",
         {"objects": {"q": _sr(_ECG_REPORT, _p("qrs_duration", ">=", 120)),
                      "l": _sr(_ECG_REPORT, _p("ecg_finding", "=", "LBBB"))}, "cohort": {"all": ["q", "l"]}},
         patients=4),
    Case("finding_in", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "in", ["RBBB", "LBBB"]))), patients=5),
    Case("finding_exists", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "exists"))), patients=5),
    Case("finding_absent", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", "exists", False))), patients=2),
    Case("statement_contains", _one("r", _sr(_ECG_REPORT, _p("ecg_statement", "contains", "sinus"))), patients=1),
    Case("free_text_contains", _one("t", _sr("free_text", _p("report_text", "contains", "linksschenkel"))),
         patients=1),
    Case("registry_bool_and_coded",
         _one("reg", _sr("registry", _p("diabetes", "=", True), _p("nyha_class", "=", "III"))), patients=1),
    Case("registry_percent", _one("reg", _sr("registry", _p("lvef", "<", 40, unit="%"))), patients=1),
    Case("registry_age_years", _one("reg", _sr("registry", _p("age", ">=", 80))), patients=1),
    Case("registry_age_months", _one("reg", _sr("registry", _p("age", ">=", 960, unit="mo"))), patients=1),
    # --- groups -----------------------------------------------------------------------------------
    Case("seg_lv_and_rv_any_segments",
         _one("s", {"kind": "SEG", "where": [_p("segment_type", "=", "LV"), _p("segment_type", "=", "RV")]}),
         patients=1),
    Case("seg_lv_and_rv_same_segment",
         _one("s", {"kind": "SEG", "where": [_p("segment_type", "=", "LV", group="a"),
                                             _p("segment_type", "=", "RV", group="a")]}), patients=0),
    Case("seg_lv_automatic_same_segment",
         _one("s", {"kind": "SEG", "where": [_p("segment_type", "=", "LV", group="a"),
                                             _p("algorithm_type", "=", "AUTOMATIC", group="a")]}), patients=1),
    Case("seg_manual_label",
         _one("s", {"kind": "SEG", "where": [_p("algorithm_type", "=", "MANUAL"),
                                             _p("segment_label", "=", "Calcium")]}), patients=1),
    Case("seg_attribute_inside_group",
         _one("s", {"kind": "SEG", "where": [_p("segment_count", ">=", 2, group="a"),
                                             _p("segment_type", "=", "LV", group="a")]}), patients=1),
    Case("absent_in_group_is_entity_level",  # P08's SEG has a named segment, so only P02's unnamed RV SEG
         _one("s", {"kind": "SEG", "where": [_p("algorithm_type", "=", "MANUAL", group="a"),
                                             _p("algorithm_name", "exists", False, group="a")]}), patients=1),
    Case("absent_ungrouped",
         _one("s", {"kind": "SEG", "where": [_p("algorithm_type", "=", "MANUAL"),
                                             _p("algorithm_name", "exists", False)]}), patients=1),
    Case("present_in_group",
         _one("s", {"kind": "SEG", "where": [_p("algorithm_type", "=", "MANUAL", group="a"),
                                             _p("algorithm_name", "exists", True, group="a")]}), patients=0),
    Case("landmark_group_trap",
         _one("l", _sr("landmarks", _p("landmark_finding", "=", "hinge_point", group="g"),
                       _p("landmark_site", "=", "LCC", group="g"))), patients=1),
    Case("landmark_ungrouped",
         _one("l", _sr("landmarks", _p("landmark_finding", "=", "hinge_point"), _p("landmark_site", "=", "LCC"))),
         patients=2),
    Case("landmark_point_exists", _one("l", _sr("landmarks", _p("landmark_point", "exists"))), patients=2),
    Case("procedure_group_trap",
         _one("p", _sr("procedures", _p("procedure_code", "=", "5-377.1 99OPS", group="g"),
                       _p("procedure_date", ">=", "2021-01-01", group="g"))), patients=1),
    Case("procedure_code_contains", _one("p", _sr("procedures", _p("procedure_code", "contains", "5-377"))),
         patients=2),
    # --- patient-level logic -----------------------------------------------------------------------
    Case("ct_or_ecg", {"objects": {"ct": {"kind": "CT"}, "ecg": {"kind": "ECG"}}, "cohort": {"any": ["ct", "ecg"]}},
         patients=6),
    Case("ct_and_ecg", {"objects": {"ct": {"kind": "CT"}, "ecg": {"kind": "ECG"}}, "cohort": {"all": ["ct", "ecg"]}},
         patients=1),
    Case("ct_not_ecg_report",
         {"objects": {"ct": {"kind": "CT"}, "r": _sr(_ECG_REPORT)}, "cohort": {"all": ["ct", {"not": "r"}]}},
         patients=2),
    Case("not_free_text", {"objects": {"x": _sr("free_text")}, "cohort": {"not": "x"}}, patients=13),
    Case("ct_without_any_sr", {"objects": {"x": _sr("free_text")}, "cohort": {"all": ["CT", {"not": "SR"}]}},
         patients=1),
    # --- time windows --------------------------------------------------------------------------------
    Case("ecg_within_90d_before_ct",
         {"objects": {"ct": {"kind": "CT"}, "r": {**_sr(_ECG_REPORT), "within": {"of": "ct", "min_days": -90,
                                                                                    "max_days": 0}}},
          "cohort": "r"}, patients=2),
    Case("ecg_before_tavi_date_field",
         {"objects": {"proc": _sr("procedures", _p("tavi_date", "exists")),
                      "r": {**_sr(_ECG_REPORT, _p("ecg_finding", "=", "LBBB")),
                            "within": {"of": "proc", "max_days": -1, "min_days": -90, "date_field": "tavi_date"}}},
          "cohort": "r"}, patients=2),
    Case("pacemaker_after_tavi_window",
         {"objects": {"reg": _sr("registry"),
                      "proc": {**_sr("procedures", _p("days_tavi_to_pacemaker", "exists")),
                               "within": {"of": "reg", "min_days": 0, "max_days": 30, "date_field": "tavi_date",
                                          "own_date_field": "tavi_date"}}},
          "cohort": "proc"}, patients=1),
    # --- label, subsets, distributions ---------------------------------------------------------------
    Case("label_positive_wins",
         {"objects": {"proc": _sr("procedures", _p("tavi_date", "exists")),
                      "yes": _sr("procedures", _p("pacemaker_after_tavi", "=", True))},
          "cohort": "proc", "label": _LABEL, "subsets": {"positive_only": "yes"}},
         patients=5, subsets={"positive_only": 3},
         labels={"positive_only": (3, 0, 0), "CT": (1, 1, 0)}),
    Case("label_unknown_and_subsets",
         {"objects": {"proc": _sr("procedures"), "ct": {"kind": "CT"}, "r": _sr(_ECG_REPORT)},
          "cohort": {"any": ["ct", "r"]}, "label": _LABEL, "subsets": {"with_report": "r", "ct_report": {"all": ["ct", "r"]}}},
         patients=8, subsets={"CT": 4, "ECG": 2, "CT+ECG": 1, "with_report": 6, "ct_report": 2},
         labels={"with_report": (3, 1, 2), "CT": (1, 1, 2), "ECG": (1, 0, 1)}),
    Case("distribution_qrs",
         {**_one("r", _sr(_ECG_REPORT)),
          "distributions": [{"object": "r", "field": "qrs_duration", "bins": [0.11, 0.12, 0.14], "unit": "s"},
                            {"object": "r", "field": "ecg_finding"}]},
         patients=6,
         distributions=[{"0.11-0.12": 1, "0.12-0.14": 3}, {"LBBB": 4, "RBBB": 1}]),
    Case("distribution_subset",
         {"objects": {"r": _sr(_ECG_REPORT), "ct": {"kind": "CT"}}, "cohort": "r", "subsets": {"with_ct": "ct"},
          "distributions": [{"object": "r", "field": "qrs_duration", "bins": [0, 120, 1000], "subset": "with_ct"},
                            {"object": "r", "field": "ecg_statement"}]},
         patients=6, subsets={"with_ct": 2}, distributions=[{"0-120": 1, "120-1000": 2}, {"Sinus rhythm": 1}]),
    Case("distribution_boolean",
         {**_one("proc", _sr("procedures")),
          "distributions": [{"object": "proc", "field": "pacemaker_after_tavi"}]},
         patients=7, distributions=[{"false": 3, "true": 3}]),
    # --- errors ---------------------------------------------------------------------------------------
    Case("bad_unit", _one("r", _sr(_ECG_REPORT, _p("qrs_duration", ">=", 120, unit="mm"))), error="not compatible"),
    Case("bad_field", _one("r", _sr(_ECG_REPORT, _p("qrs_durations", ">=", 120))), error="did you mean 'qrs_duration'"),
    Case("field_of_other_kind", _one("ct", {"kind": "CT", "where": [_p("qrs_duration", ">=", 120)]}),
         error="not indexed for CT"),
    Case("bad_template", _one("r", _sr("ecg_reports")), error="did you mean 'ecg_report'"),
    Case("group_on_attribute", _one("ct", {"kind": "CT", "where": [_p("slice_thickness", "<", 1, group="a")]}),
         patients=2),
    Case("histogram_needs_edges", {**_one("r", _sr(_ECG_REPORT)),
                                   "distributions": [{"object": "r", "field": "qrs_duration"}]}, error="bin edges"),
    Case("order_op_on_code", _one("r", _sr(_ECG_REPORT, _p("ecg_finding", ">", "LBBB"))), error="does not apply"),
    Case("window_cycle",
         {"objects": {"a": {"kind": "CT", "within": {"of": "b"}}, "b": {"kind": "ECG", "within": {"of": "a"}}},
          "cohort": "a"}, error="cycle"),
]
