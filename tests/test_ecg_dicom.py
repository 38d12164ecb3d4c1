"""The 12-lead ECG waveform object and its TID 3700 ECG Report, checked by the reference validators."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from cohort.dicom import codes
from cohort.dicom import sr_items as sr
from cohort.dicom.patient import PatientRef
from cohort.dicom.sop_classes import COMPREHENSIVE_SR_STORAGE, TWELVE_LEAD_ECG_STORAGE
from cohort.dicom.validate import SR_VALIDATOR_JAVA_OPTIONS, dciodvfy, dsrdump, sr_validator
from cohort.ecg.dicom_report import (
    FINDING_CODES,
    MEASUREMENT_CODES,
    build_ecg_report,
)
from cohort.ecg.dicom_waveform import build_ecg_waveform, quantization_step
from cohort.ecg.record import FINDINGS, MEASUREMENT_UNITS, EcgRecord, derive_limb_leads
from cohort.errors import InputError
from tests.helpers import make_context

PATIENT = PatientRef("PTESTPSEUDONYM", "PACS-1")
ACQUIRED = datetime(2023, 4, 5, 9, 30, 15)
ALL_MEASUREMENTS = {"heart_rate": 71.0, "pr_ms": 168.0, "qrs_ms": 132.0, "qt_ms": 412.0, "qtc_ms": 436.5,
                    "rr_ms": 845.0, "p_axis_deg": 55.0, "qrs_axis_deg": -35.0, "t_axis_deg": 120.0}
# PixelMed knows no TID 3700, so it flags every item as outside a known template; nothing else is allowed.
NOT_IN_TEMPLATE = "Content Item not in template"


def synthetic_leads(fs: float = 500.0, seconds: float = 10.0, peak_uv: float = 1200.0) -> dict[str, np.ndarray]:
    """Eight measured leads (sines plus narrow QRS-like pulses at 75/min); limb leads derived."""
    t = np.arange(int(fs * seconds)) / fs
    beat = np.exp(-(((t % 0.8) - 0.25) ** 2) / (2 * 0.012**2))
    measured = {lead: 150.0 * np.sin(2 * np.pi * (0.3 + 0.1 * i) * t + i) + peak_uv * (1 - 0.15 * i) * beat
                for i, lead in enumerate(("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"))}
    return derive_limb_leads(measured)


def make_record(**overrides: object) -> EcgRecord:
    base = dict(source_format="test", patient_source_id="PACS-1", acquired=ACQUIRED, sampling_frequency=500.0,
                leads=synthetic_leads(), measurements=dict(ALL_MEASUREMENTS), findings=["sinus_rhythm", "lbbb"],
                statements=["Sinusrhythmus", "Linksschenkelblock (QRS 132 ms)"], manufacturer="Müller Medical",
                device_model="CardioStar 12", patient_sex="F", patient_age_years=81)
    base.update(overrides)
    return EcgRecord(**base)  # type: ignore[arg-type]


def record_from_pydicom_ecg() -> EcgRecord:
    """The real 12-lead ECG of pydicom's test data, read with plain pydicom access."""
    source = get_testdata_file("waveform_ecg.dcm")
    assert isinstance(source, str)
    ds = pydicom.dcmread(source)
    group = ds.WaveformSequence[0]
    by_code = {v: k for k, v in codes.LEAD_CODES_SCPECG.items()}
    samples = ds.waveform_array(0)
    leads = {by_code[ch.ChannelSourceSequence[0].CodeValue]: samples[:, i].astype(np.float64)
             for i, ch in enumerate(group.ChannelDefinitionSequence)}
    return EcgRecord(source_format="dicom", patient_source_id=str(ds.PatientID),
                     acquired=datetime.strptime(str(ds.AcquisitionDateTime)[:14], "%Y%m%d%H%M%S"),
                     sampling_frequency=float(group.SamplingFrequency), leads=leads,
                     manufacturer=str(ds.Manufacturer), device_model=str(ds.ManufacturerModelName),
                     patient_sex=str(ds.PatientSex))


def build_pair(record: EcgRecord, tmp: Path, digest: str = "0" * 64) -> tuple[Dataset, Dataset | None]:
    ctx = make_context(tmp, digest=digest)
    waveform = build_ecg_waveform(record, PATIENT, ctx.uid)
    return waveform, build_ecg_report(record, waveform, PATIENT, ctx.uid, ctx.site.site_id)


def content_at(root: Dataset, *path: Code) -> list[Dataset]:
    """Content items reached from ``root`` by the concept-name path (each step matches value + scheme)."""
    level = [root]
    for concept in path:
        level = [child for item in level for child in item.get("ContentSequence", [])
                 if child.ConceptNameCodeSequence[0].CodeValue == concept.value
                 and child.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme_designator]
    return level


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant written once as Part 10 files, so the validators run over all of them in one go."""
    out = tmp_path_factory.mktemp("ecg")
    variants = {
        "full": make_record(),
        "no-demographics": make_record(patient_sex="", patient_age_years=None, manufacturer="", device_model=""),
        "findings-only": make_record(measurements={}, statements=[]),
        "statements-only": make_record(measurements={}, findings=[]),
        "pydicom": replace(record_from_pydicom_ecg(), measurements={"qrs_ms": 75.0, "rr_ms": 982.0},
                           findings=["sinus_rhythm"], statements=["RITMO SINUSALE"]),
    }
    paths: dict[str, Path] = {}
    for i, (name, record) in enumerate(variants.items()):
        waveform, report = build_pair(record, out, digest=f"{i:064d}")
        paths[f"{name}-waveform"] = out / f"{name}-waveform.dcm"
        waveform.save_as(paths[f"{name}-waveform"], enforce_file_format=True)
        assert report is not None
        paths[f"{name}-report"] = out / f"{name}-report.dcm"
        report.save_as(paths[f"{name}-report"], enforce_file_format=True)
    return paths


# --- waveform ----------------------------------------------------------------------------------------

def test_waveform_objects_pass_dciodvfy(written: dict[str, Path]) -> None:
    files = [p for k, p in written.items() if k.endswith("-waveform")]
    results = dciodvfy(files)
    assert len(results) == len(files)
    for res in results:
        assert res.errors == [], res.path


def test_waveform_round_trips_microvolts_within_quantization(tmp_path: Path) -> None:
    record = make_record()
    waveform, _ = build_pair(record, tmp_path)
    path = tmp_path / "w.dcm"
    waveform.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == TWELVE_LEAD_ECG_STORAGE and ds.Modality == "ECG"
    group = ds.WaveformSequence[0]
    assert group.WaveformSampleInterpretation == "SS" and group.WaveformBitsAllocated == 16
    assert float(group.SamplingFrequency) == 500.0
    assert [ch.ChannelSourceSequence[0].CodeValue for ch in group.ChannelDefinitionSequence] == [
        codes.LEAD_CODES_MDC[lead] for lead in codes.TWELVE_LEADS]
    assert {ch.ChannelSensitivityUnitsSequence[0].CodeValue for ch in group.ChannelDefinitionSequence} == {"uV"}
    samples = ds.waveform_array(0)
    assert samples.shape == (5000, 12)
    step = quantization_step(record.leads)
    for i, lead in enumerate(codes.TWELVE_LEADS):
        assert np.max(np.abs(samples[:, i] - record.leads[lead])) <= step / 2 + 1e-9, lead
    # Interleaved: the first twelve stored values are sample 0 of each lead, in lead order.
    raw = np.frombuffer(group.WaveformData, dtype="<i2")
    expected_first = [round(record.leads[lead][0] / step) for lead in codes.TWELVE_LEADS]
    assert raw[:12].tolist() == expected_first


def test_waveform_carries_patient_study_and_equipment(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    ds = build_ecg_waveform(make_record(), PATIENT, ctx.uid)
    assert ds.PatientID == PATIENT.patient_id and ds.PatientBirthDate == ""
    assert ds.PatientSex == "F" and ds.PatientAge == "081Y"
    assert ds.StudyInstanceUID == ctx.uid("ecg-study") and ds.SOPInstanceUID == ctx.uid("ecg-waveform")
    assert ds.Manufacturer == "Müller Medical" and ds.ManufacturerModelName == "CardioStar 12"
    assert (ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime) == ("20230405", "093015", "20230405093015")
    assert ds.InstanceCreationDate == "20230405"  # from the acquisition, never the wall clock


def test_real_pydicom_ecg_round_trips(tmp_path: Path) -> None:
    record = record_from_pydicom_ecg()
    waveform, report = build_pair(record, tmp_path)
    assert report is None  # the record as read carries no measurements, findings or statements
    path = tmp_path / "w.dcm"
    waveform.save_as(path, enforce_file_format=True)
    samples = pydicom.dcmread(path).waveform_array(0)
    assert samples.shape == (10000, 12)
    for i, lead in enumerate(codes.TWELVE_LEADS):
        assert np.max(np.abs(samples[:, i] - record.leads[lead])) <= 0.5 + 1e-9, lead


def test_large_amplitudes_get_a_coarser_step_instead_of_clipping(tmp_path: Path) -> None:
    leads = synthetic_leads(peak_uv=50_000.0)  # 50 mV: beyond 16 bits at 1 uV
    step = quantization_step(leads)
    assert step == 2.0
    waveform, _ = build_pair(make_record(leads=leads), tmp_path)
    waveform.save_as(tmp_path / "w.dcm", enforce_file_format=True)
    samples = pydicom.dcmread(tmp_path / "w.dcm").waveform_array(0)
    assert np.max(np.abs(samples[:, 1] - leads["II"])) <= step / 2 + 1e-9


@pytest.mark.parametrize("change", [
    pytest.param(lambda leads: leads.pop("aVF"), id="missing-lead"),
    pytest.param(lambda leads: leads["V2"].__setitem__(10, np.nan), id="nan-sample"),
])
def test_unusable_leads_raise_input_error(tmp_path: Path, change) -> None:  # noqa: ANN001
    leads = {k: v.copy() for k, v in synthetic_leads().items()}
    change(leads)
    with pytest.raises(InputError, match="leads"):
        build_ecg_waveform(make_record(leads=leads), PATIENT, make_context(tmp_path).uid)


# --- report ------------------------------------------------------------------------------------------

def test_full_report_pixelmed_output_has_nothing_but_template_notes(written: dict[str, Path]) -> None:
    """Raw PixelMed output: validate.py counts only lines starting with Error/Warning, but PixelMed
    also reports illegal relationships as "Parent ... has illegal relationship ..."; allow no such line."""
    exe = shutil.which("DicomSRValidator")
    if exe is None:
        pytest.skip("DicomSRValidator missing: apt-get install -y pixelmed-apps")
    env = dict(os.environ, JAVA_TOOL_OPTIONS=SR_VALIDATOR_JAVA_OPTIONS)
    proc = subprocess.run([exe, str(written["full-report"])], capture_output=True, text=True, env=env)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert "Found ComprehensiveSR IOD" in lines and "IOD validation complete" in lines
    other = [ln for ln in lines if NOT_IN_TEMPLATE not in ln and not ln.startswith("Picked up JAVA_TOOL_OPTIONS")
             and ln not in ("Found ComprehensiveSR IOD", "IOD validation complete")]
    assert other == []
    items = len(list(sr.walk(pydicom.dcmread(written["full-report"]))))
    assert sum(NOT_IN_TEMPLATE in ln for ln in lines) == items == 31  # one note per content item


def test_reports_pass_dciodvfy_pixelmed_and_dcmtk(written: dict[str, Path]) -> None:
    reports = [p for k, p in written.items() if k.endswith("-report")]
    for res in dciodvfy(reports):
        assert res.errors == [], res.path
    # DicomSRValidator's main() takes exactly one file (more print its usage and exit 0), so the
    # structurally distinct variants go one JVM each; the others are subsets of "full".
    sr_files = [written[k] for k in ("no-demographics-report", "pydicom-report")]
    sr_results = [res for path in sr_files for res in sr_validator([path])]
    assert len(sr_results) == len(sr_files)
    for res in sr_results:
        assert res.errors == [], res.path
        assert res.warnings, "PixelMed should report on every item; no output means it did not run"
        unexpected = [w for w in res.warnings if NOT_IN_TEMPLATE not in w]
        assert unexpected == [], res.path
    for res in dsrdump(reports):
        assert res.errors == [], res.path


def test_report_content_tree(tmp_path: Path) -> None:
    waveform, report = build_pair(make_record(), tmp_path)
    assert report is not None
    path = tmp_path / "r.dcm"
    report.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_SR_STORAGE and ds.Modality == "SR"
    assert ds.ConceptNameCodeSequence[0].CodeValue == codes.ECG_REPORT.value == "11524-6"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "3700"
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert (ds.ContentDate, ds.ContentTime) == ("20230405", "093015")

    qrs = content_at(ds, codes.QUANTITATIVE_ANALYSIS, codes.ECG_GLOBAL_MEASUREMENTS, codes.QRS_DURATION)
    assert len(qrs) == 1
    measured = qrs[0].MeasuredValueSequence[0]
    assert float(measured.NumericValue) == 132.0
    assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    assert measured.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    globals_ = content_at(ds, codes.QUANTITATIVE_ANALYSIS, codes.ECG_GLOBAL_MEASUREMENTS)[0].ContentSequence
    assert len(globals_) == len(ALL_MEASUREMENTS)

    found = [c.ConceptCodeSequence[0].CodeValue for c in content_at(ds, codes.QUALITATIVE_ANALYSIS, codes.ECG_FINDING)]
    assert found == [codes.SINUS_RHYTHM.value, codes.LEFT_BUNDLE_BRANCH_BLOCK.value]

    source = content_at(ds, codes.CURRENT_PROCEDURE_DESCRIPTIONS, codes.SOURCE_OF_MEASUREMENT)
    assert [s.ValueType for s in source] == ["WAVEFORM"]
    ref = source[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == waveform.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == TWELVE_LEAD_ECG_STORAGE
    when = content_at(ds, codes.CURRENT_PROCEDURE_DESCRIPTIONS, codes.PROCEDURE_DATETIME)
    assert when[0].DateTime == "20230405093015"

    age = content_at(ds, codes.PATIENT_CHARACTERISTICS, codes.SUBJECT_AGE)[0].MeasuredValueSequence[0]
    assert (age.NumericValue, age.MeasurementUnitsCodeSequence[0].CodeValue) == ("81", "a")
    sex = content_at(ds, codes.PATIENT_CHARACTERISTICS, codes.SUBJECT_SEX)[0]
    assert sex.ConceptCodeSequence[0].CodeValue == "F"
    texts = [t.TextValue for t in content_at(ds, codes.SUMMARY, codes.FINDING)]
    assert texts == ["Sinusrhythmus", "Linksschenkelblock (QRS 132 ms)"]

    # Same study as the waveform, own series, waveform listed as evidence.
    assert ds.StudyInstanceUID == waveform.StudyInstanceUID
    assert ds.SeriesInstanceUID != waveform.SeriesInstanceUID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == waveform.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == waveform.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        waveform.SOPInstanceUID
    assert "CodingSchemeIdentificationSequence" not in ds  # no local codes in an ECG report today


def test_report_without_measurements_findings_or_statements_is_none(tmp_path: Path) -> None:
    _, report = build_pair(make_record(measurements={}, findings=[], statements=["  "]), tmp_path)
    assert report is None


def test_report_branches_follow_what_the_record_has(tmp_path: Path) -> None:
    _, report = build_pair(make_record(measurements={}, statements=[], patient_sex="", patient_age_years=None),
                           tmp_path)
    assert report is not None
    assert content_at(report, codes.QUANTITATIVE_ANALYSIS) == []
    assert content_at(report, codes.SUMMARY) == []
    assert content_at(report, codes.PATIENT_CHARACTERISTICS) == []
    assert len(content_at(report, codes.QUALITATIVE_ANALYSIS, codes.ECG_FINDING)) == 2


def test_unknown_measurement_key_is_a_reader_bug(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    record = make_record(measurements={"qrs_width": 120.0})
    waveform = build_ecg_waveform(record, PATIENT, ctx.uid)
    with pytest.raises(ValueError, match="qrs_width"):
        build_ecg_report(record, waveform, PATIENT, ctx.uid, ctx.site.site_id)


def test_every_canonical_measurement_and_finding_has_a_code() -> None:
    assert set(MEASUREMENT_CODES) == set(MEASUREMENT_UNITS)
    assert set(FINDING_CODES) == set(FINDINGS)
    for key, (_, unit) in MEASUREMENT_CODES.items():
        assert unit.value == MEASUREMENT_UNITS[key], key


def test_same_input_gives_byte_identical_objects(tmp_path: Path) -> None:
    blobs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        waveform, report = build_pair(make_record(), folder)
        assert report is not None
        waveform.save_as(folder / "w.dcm", enforce_file_format=True)
        report.save_as(folder / "r.dcm", enforce_file_format=True)
        blobs.append(((folder / "w.dcm").read_bytes(), (folder / "r.dcm").read_bytes()))
    assert blobs[0] == blobs[1]
    other_w, other_r = build_pair(make_record(), tmp_path, digest="1" * 64)
    assert other_r is not None
    assert other_w.SOPInstanceUID != pydicom.dcmread(tmp_path / "a" / "w.dcm").SOPInstanceUID


# --- sr_items ----------------------------------------------------------------------------------------

def test_coded_entry_uses_long_code_value_beyond_16_characters() -> None:
    item = sr.coded_entry(Code("1234567890ABCDEFG", "99X", "long"))
    assert item.LongCodeValue == "1234567890ABCDEFG" and "CodeValue" not in item


def test_num_keeps_exact_value_when_ds_rounds() -> None:
    exact = sr.num(codes.QTC_INTERVAL, 436.5, codes.MILLISECOND).MeasuredValueSequence[0]
    assert exact.NumericValue == "436.5" and "FloatingPointValue" not in exact
    rounded = sr.num(codes.QTC_INTERVAL, 1 / 3, codes.MILLISECOND).MeasuredValueSequence[0]
    assert len(str(rounded.NumericValue)) <= 16 and rounded.FloatingPointValue == 1 / 3


def test_evidence_sequence_is_order_independent() -> None:
    def obj(study: str, series: str, sop: str) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = study, series, sop, "1.2"
        return ds
    objs = [obj("1.1", "1.1.1", "1.1.1.2"), obj("1.1", "1.1.1", "1.1.1.1"), obj("1.0", "1.0.1", "1.0.1.1")]
    a, b = sr.evidence_sequence(objs), sr.evidence_sequence(reversed(objs))
    assert a == b
    assert [s.StudyInstanceUID for s in a] == ["1.0", "1.1"]
    assert [r.ReferencedSOPInstanceUID for r in a[1].ReferencedSeriesSequence[0].ReferencedSOPSequence] == [
        "1.1.1.1", "1.1.1.2"]


def test_local_scheme_is_declared_only_when_used() -> None:
    plain = sr.container(codes.ECG_REPORT, [sr.text(codes.FINDING, "x")], rel=None)
    ds = Dataset()
    sr.declare_local_scheme(ds, plain)
    assert "CodingSchemeIdentificationSequence" not in ds
    local = sr.container(codes.ECG_REPORT, [sr.code(codes.PROSTHESIS_TYPE, codes.SELF_EXPANDING_PROSTHESIS)],
                         rel=None)
    sr.declare_local_scheme(ds, local)
    assert [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence] == [codes.LOCAL_SCHEME]
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeUID == codes.LOCAL_SCHEME_UID


def test_date_item_writes_a_plain_day() -> None:
    item = sr.date_item(codes.PROCEDURE_DATETIME, datetime(2024, 2, 29, 23, 59).date())
    assert (item.ValueType, item.Date, item.RelationshipType) == ("DATE", "20240229", "CONTAINS")


def test_apply_root_refuses_a_non_root_item() -> None:
    with pytest.raises(ValueError, match="rel=None"):
        sr.apply_root(Dataset(), sr.container(codes.SUMMARY))
