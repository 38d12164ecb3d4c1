"""Extraction, template configs, the field catalog and the DuckDB index (incremental, reindex)."""

from __future__ import annotations

import os
import shutil
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cohort.dicom import codes
from cohort.dicom import sr_items as sr
from cohort.dicom.clinical_sr import (
    DocumentIds,
    PacemakerFindings,
    ProcedureEntry,
    RegistryRecord,
    procedure_history_tree,
    registry_tree,
    sr_document,
)
from cohort.dicom.patient import PatientRef
from cohort.ecg.dicom_report import build_ecg_report
from cohort.ecg.dicom_waveform import build_ecg_waveform
from cohort.ecg.record import EcgRecord, derive_limb_leads
from cohort.errors import ConfigError, SpecError
from cohort.index.catalog import field_catalog, fields_for, resolve_field
from cohort.index.compile_duck import evaluate, matching_entities
from cohort.index.duck import DuckIndex, unindexed_items
from cohort.index.extract import extract_dataset, extract_file
from cohort.index.publish import reindex
from cohort.index.templates import load_templates
from cohort.spec.model import CohortSpec
from cohort.spec.units import convert
from tests.helpers import make_context

PATIENT = PatientRef("PIDX0001", "PACS-1")
TEMPLATES = load_templates()


def _items(ex) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in ex.items:
        out.setdefault(row[0], []).append(row)
    return out


def _ecg_objects(tmp_path: Path, qrs: float = 132.0, findings=("sinus_rhythm", "lbbb")) -> tuple[Dataset, Dataset]:
    t = np.arange(5000) / 500.0
    measured = {lead: 300 * np.sin(2 * np.pi * (1 + i) * t) for i, lead in
                enumerate(("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"))}
    record = EcgRecord(source_format="test", patient_source_id="PACS-1", acquired=datetime(2023, 4, 5, 9, 30),
                       sampling_frequency=500.0, leads=derive_limb_leads(measured),
                       measurements={"qrs_ms": qrs, "pr_ms": 170.0, "heart_rate": 70.0}, findings=list(findings),
                       statements=["Linksschenkelblock"], patient_sex="F", patient_age_years=81)
    ctx = make_context(tmp_path)
    waveform = build_ecg_waveform(record, PATIENT, ctx.uid)
    report = build_ecg_report(record, waveform, PATIENT, ctx.uid, ctx.site.site_id)
    assert report is not None
    return waveform, report


# --- catalog and template configs ---------------------------------------------------------------

def test_catalog_has_fields_of_every_source_with_types_and_units() -> None:
    cat = field_catalog()
    assert (cat["qrs_duration"].source, cat["qrs_duration"].unit) == ("item", "ms")
    assert cat["qrs_duration"].templates == ("ecg_report",)
    assert cat["slice_thickness"].source == "attribute" and "CT" in cat["slice_thickness"].kinds
    assert cat["segment_type"].groupable and not cat["slice_thickness"].groupable
    assert set(cat["tavi_date"].templates) == {"procedures", "registry"}
    assert cat["ecg_finding"].value_aliases["LBBB"] == "63467002 SCT"
    assert ">=" in cat["qrs_duration"].operators and ">=" not in cat["ecg_finding"].operators


def test_fields_for_kind_and_template() -> None:
    ecg_report = fields_for("SR", "ecg_report")
    assert "qrs_duration" in ecg_report and "prosthesis_type" not in ecg_report
    assert "segment_label" in fields_for("SEG") and "segment_label" not in fields_for("CT")


def test_resolve_field_suggests_the_closest_valid_name() -> None:
    with pytest.raises(SpecError, match="did you mean 'slice_thickness'"):
        resolve_field("slice_thicknes", "CT", None)
    with pytest.raises(SpecError, match="only for SR templates ecg_report"):
        resolve_field("qrs_duration", "SR", "registry")
    with pytest.raises(SpecError, match="identifies patients"):
        resolve_field("patient_id", "CT", None)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("key: x\nfields:\n  f: {path: ['1 DCM'], type: numbr, unit: ms}\n", "did you mean 'numeric'"),
    ("key: x\nfields:\n  f: {path: ['1 DCM'], type: numeric}\n", "need a unit"),
    ("key: x\nfields:\n  f: {path: ['1 DCM'], type: numeric, unit: msec2}\n", "not known"),
    ("key: x\nfields:\n  f: {path: ['122144'], type: text}\n", "CODE SCHEME"),
    ("key: x\nfields:\n  qrs_duration: {path: ['1 DCM'], type: text}\n", "one name needs one type"),
    ("key: x\nfields:\n  kvp: {path: ['1 DCM'], type: text}\n", "built-in field"),
    ("key: x\ndocument_titles: ['11524-6 LN']\nfields: {}\n", "identifies both templates"),
    ("key: x\nfield: {}\n", "unknown top-level"),
])
def test_bad_template_configs_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    _write(tmp_path / "x.yaml", body)
    with pytest.raises(ConfigError, match=message):
        field_catalog([tmp_path])


def test_path_patterns_with_wildcards(tmp_path: Path) -> None:
    _write(tmp_path / "x.yaml", "key: ecg_report\nfields:\n  any_num: {path: ['**', '2:16156 MDC'], type: numeric, "
                                "unit: s}\n  one_level: {path: ['*', '55112-7 LN'], type: text}\n")
    t = load_templates([tmp_path])["ecg_report"]
    assert t.fields["any_num"].matches(("122144 DCM", "122158 DCM", "2:16156 MDC"))
    assert t.fields["any_num"].matches(("2:16156 MDC",))
    assert not t.fields["one_level"].matches(("55112-7 LN",))
    assert "qrs_duration" in t.fields  # the package config's fields are kept, the new ones added


def test_units_convert_and_refuse() -> None:
    assert convert(0.12, "s", "ms") == 120.0
    assert convert(2, "cm", "mm") == 20.0
    with pytest.raises(SpecError, match="not compatible"):
        convert(1, "mm", "ms", field="qrs_duration")
    with pytest.raises(SpecError, match="did you mean"):
        convert(1, "mss", "ms")


# --- extraction ------------------------------------------------------------------------------------

def test_ecg_report_from_the_project_builder_is_extracted(tmp_path: Path) -> None:
    waveform, report = _ecg_objects(tmp_path)
    ex = extract_dataset(report, TEMPLATES)
    assert (ex.kind, ex.template) == ("SR", "ecg_report")
    items = _items(ex)
    assert items["qrs_duration"][0][3:5] == (132.0, "ms")
    assert items["heart_rate"][0][3] == 70.0
    assert {r[5] for r in items["ecg_finding"]} == {"63467002", "64730000"}
    assert items["ecg_statement"][0][8] == "Linksschenkelblock"
    assert items["age"][0][3:5] == (81.0, "a")
    assert items["ecg_datetime"][0][9] == "2023-04-05"
    # measurements of one container share a group; findings are in another
    assert items["qrs_duration"][0][2] == items["pr_interval"][0][2] != items["ecg_finding"][0][2]
    refs = {(r[0], r[3]) for r in ex.refs}
    assert ("content:121112 DCM", str(waveform.SOPInstanceUID)) in refs
    assert ("evidence", str(waveform.SOPInstanceUID)) in refs
    wf = extract_dataset(waveform, TEMPLATES)
    assert wf.kind == "ECG" and ("sampling_frequency", 500.0, None) in wf.attributes
    assert ("duration_s", 10.0, None) in wf.attributes and ("lead", None, "aVF") in wf.attributes


def test_numbers_in_another_unit_are_stored_in_the_field_unit() -> None:
    root = sr.container(codes.ECG_REPORT, [
        sr.container(codes.QUANTITATIVE_ANALYSIS, [sr.container(codes.ECG_GLOBAL_MEASUREMENTS, [
            sr.num(codes.QRS_DURATION, 0.126, pydicom.sr.coding.Code("s", "UCUM", "second")),
            sr.num(codes.PR_INTERVAL, 5, pydicom.sr.coding.Code("mm", "UCUM", "millimeter")),
        ])])], rel=None)
    ds = Dataset()
    ds.SOPClassUID, ds.Modality, ds.PatientID = "1.2.840.10008.5.1.4.1.1.88.33", "SR", "P"
    sr.apply_root(ds, root)
    items = _items(extract_dataset(ds, TEMPLATES))
    assert items["qrs_duration"][0][3:5] == (126.0, "ms")
    # an incompatible unit is kept visible as text, never compared as a number
    assert items["pr_interval"][0][3] is None and items["pr_interval"][0][8] == "5 mm"


def test_registry_and_procedure_documents_from_the_project_builder() -> None:
    ids = DocumentIds("1.2.3", "1.2.3.4", "1.2.3.4.5", 900, "Registry")
    reg = sr_document(registry_tree(RegistryRecord(
        tavi_date=date(2021, 3, 1), age=82, sex="M", lvef_percent=35, diabetes="insulin",
        prosthesis_type="self-expanding", prosthesis_size_mm=29, valve_in_valve=False, nyha=3)),
        PATIENT, ids, date(2021, 3, 1))
    ex = extract_dataset(reg, TEMPLATES)
    items = _items(ex)
    assert ex.template == "registry"
    assert items["tavi_date"][0][9] == "2021-03-01"
    assert items["prosthesis_type"][0][5:7] == ("PT002", "99FEDCOH")
    assert items["diabetes"][0][3] == 1.0 and items["valve_in_valve"][0][3] == 0.0
    assert items["diabetes_treatment"][0][5] == "DM003" and items["lvef"][0][3] == 35.0
    entries = [ProcedureEntry("5-35a.00", date(2021, 3, 1), "TAVI"),
               ProcedureEntry("5-377.1", date(2021, 3, 4), "Schrittmacher")]
    proc = sr_document(procedure_history_tree(entries, PacemakerFindings(date(2021, 3, 1), True, 3, False)),
                       PATIENT, DocumentIds("1.2.3", "1.2.3.6", "1.2.3.6.7", 901, "Procedures"), date(2021, 3, 4))
    items = _items(extract_dataset(proc, TEMPLATES))
    assert items["pacemaker_after_tavi"][0][3] == 1.0 and items["days_tavi_to_pacemaker"][0][3:5] == (3.0, "d")
    by_group = {r[2]: r[5] for r in items["procedure_code"]}
    dates = {r[2]: r[9] for r in items["procedure_date"]}
    assert {by_group[g]: dates[g] for g in by_group} == {"5-35a.00": "2021-03-01", "5-377.1": "2021-03-04"}


def test_pydicom_seg_and_ct_files() -> None:
    seg = extract_file(get_testdata_file("liver_1frame.dcm"), TEMPLATES)
    assert seg.kind == "SEG" and seg.segments[0][1] == "Liver" and seg.segments[0][8] == "SEMIAUTOMATIC"
    assert any(r[0] == "source_series" for r in seg.refs) and sum(r[0] == "source_image" for r in seg.refs) >= 1
    ct = extract_file(get_testdata_file("CT_small.dcm"), TEMPLATES)
    assert ct.kind == "CT" and ("slice_thickness", 5.0, None) in ct.attributes and ct.entity_date == "1997-04-30"


# --- the DuckDB index --------------------------------------------------------------------------------

def _copy(name: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file(name), dst)
    return dst


def _second_instance(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst)
    return dst


def test_incremental_indexing_series_and_removal(tmp_path: Path) -> None:
    ct1 = _copy("CT_small.dcm", tmp_path / "ct" / "1.dcm")
    ct2 = _second_instance(ct1, tmp_path / "ct" / "2.dcm")
    ecg = _copy("waveform_ecg.dcm", tmp_path / "ecg.dcm")
    bad = _write(tmp_path / "bad.dcm", "not dicom")
    seen: list[tuple[int, int]] = []
    with DuckIndex.for_store(tmp_path / "store") as index:
        rep = index.add_files([ct1, ct2, ecg, bad], progress=lambda n, t: seen.append((n, t)))
        assert (rep.indexed, len(rep.failed)) == (3, 1) and "bad.dcm" in rep.failed[0][0]
        assert seen[-1] == (4, 4)
        assert index.count_entities("CT") == 1 and index.count_entities() == 2
        assert index.con.execute("SELECT n_instances FROM entities WHERE kind = 'CT'").fetchone()[0] == 2
        again = index.add_files([ct1, ct2, ecg])
        assert (again.indexed, again.unchanged) == (0, 3)
        copy = _copy("waveform_ecg.dcm", tmp_path / "copy.dcm")
        assert index.add_files([copy]).duplicates == 1
        os.utime(ecg, (1, 1))
        assert index.add_files([ecg]).indexed == 1 and index.count_entities("ECG") == 1
        uid = index.con.execute("SELECT series_uid FROM entities WHERE kind = 'CT'").fetchone()[0]
        assert [p.name for p in index.files_of([uid])[uid]] == ["1.dcm", "2.dcm"]
        assert index.remove([ct1]) == 1 and index.count_entities("CT") == 1
        assert index.remove([ct2]) == 1 and index.count_entities("CT") == 0
        assert index.count_files() == 1


def test_store_templates_reindex_and_unindexed_items(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, report = _ecg_objects(tmp_path)
    path = tmp_path / "report.dcm"
    report.save_as(path, enforce_file_format=True)
    with DuckIndex.for_store(store) as index:
        index.add_files([path])
        assert index.count_items("heart_rate") == 1
    missing = {u.concept_path: u for u in unindexed_items(store)}
    lang = "121049 DCM"
    assert lang in missing and missing[lang].template == "ecg_report" and missing[lang].count == 1
    assert "122144 DCM/122158 DCM/2:16156 MDC" not in missing
    _write(store / "templates" / "language.yaml",
           f"key: ecg_report\nfields:\n  report_language:\n    path: ['{lang}']\n    type: coded\n")
    assert reindex(store).srs == 1
    with DuckIndex.for_store(store) as index:
        assert index.count_items("report_language") == 1 and index.count_items("qrs_duration") == 1
        assert "report_language" in index.catalog
        spec = CohortSpec.model_validate({"objects": {"r": {"kind": "SR", "template": "ecg_report", "where": [
            {"field": "report_language", "op": "=", "value": "en-US"}]}}, "cohort": "r"})
        assert evaluate(index, spec).patients == 1
        assert list(matching_entities(index, spec)) == [PATIENT.patient_id]
    assert lang not in {u.concept_path for u in unindexed_items(store)}


def test_evaluate_builder_objects_end_to_end(tmp_path: Path) -> None:
    paths = []
    for i, (qrs, findings) in enumerate([(132.0, ("lbbb",)), (150.0, ()), (100.0, ("lbbb",))]):
        waveform, report = _ecg_objects(tmp_path / str(i), qrs, findings)
        # each report its own SOP instance (the test context derives UIDs from one digest)
        report.SOPInstanceUID = pydicom.uid.generate_uid()
        report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
        p = tmp_path / f"r{i}.dcm"
        report.save_as(p, enforce_file_format=True)
        paths.append(p)
    with DuckIndex() as index:
        index.add_files(paths)
        spec = CohortSpec.model_validate({"objects": {"r": {"kind": "SR", "template": "ecg_report", "where": [
            {"field": "qrs_duration", "op": ">=", "value": 0.12, "unit": "s"},
            {"field": "ecg_finding", "op": "=", "value": "LBBB"}]}}, "cohort": "r"})
        assert evaluate(index, spec).patients == 1
        uids = matching_entities(index, spec)[PATIENT.patient_id]["r"]
        assert uids == [str(pydicom.dcmread(paths[0]).SOPInstanceUID)]
