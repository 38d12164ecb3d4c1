"""Resting ECG in four source formats: synthesis, device-export writers, readers and converters."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy.signal import find_peaks

from cohort.dicom.codes import TWELVE_LEADS
from cohort.dicom.patient import pseudonym
from cohort.ecg.readers import findings_from_statements
from cohort.ecg.readers.aecg import read_aecg
from cohort.ecg.readers.dicom_ecg import read_dicom_ecg
from cohort.ecg.readers.muse import read_muse
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ingest.base import STAGE_WAVEFORMS, InputHead
from cohort.ingest.converters.ecg import AecgConverter, DicomEcgConverter, MuseConverter, ScpEcgConverter
from cohort.synth.ecg_signal import synthesize_leads
from cohort.synth.model import EcgFacts, SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES, SiteProfile
from cohort.synth.writers.ecg import device_measurements, device_statements, prepare_export, write_ecg
from cohort.synth.writers.scpecg import SCP_LEAD_IDS
from tests.helpers import make_context

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# format -> (profile index, reader, stored units per bit, statement language, converter class)
FORMATS = {
    "dicom": (0, read_dicom_ecg, 2.5, "en", DicomEcgConverter),
    "ge-muse": (1, read_muse, 4.88, "de", MuseConverter),
    "hl7-aecg": (2, read_aecg, 5.0, "en", AecgConverter),
    "scp-ecg": (3, read_scpecg, 2.5, "de", ScpEcgConverter),
}
CONVERTERS = (DicomEcgConverter(), MuseConverter(), AecgConverter(), ScpEcgConverter())
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _patients(profile: SiteProfile, n: int = 3) -> list[SyntheticPatient]:
    """ECG patients of the site, preferring different conduction patterns and rhythms."""
    pts = [p for p in generate_site(11, profile.site_id, 40, profile.mix, profile.pacs_prefix, profile.case_prefix)
           if p.ecg is not None]
    chosen: list[SyntheticPatient] = []
    for key in (lambda p: p.ecg.conduction == "LBBB", lambda p: p.ecg.conduction == "RBBB",
                lambda p: p.ecg.rhythm == "afib", lambda p: p.ecg.first_degree_av_block):
        hit = next((p for p in pts if key(p) and p not in chosen), None)
        if hit is not None and len(chosen) < n:
            chosen.append(hit)
    return chosen or pts[:n]


def _expected_findings(facts: EcgFacts) -> list[str]:
    out = ["atrial_fibrillation" if facts.rhythm == "afib" else "sinus_rhythm"]
    out += {"LBBB": ["lbbb"], "RBBB": ["rbbb"]}.get(facts.conduction, [])
    if facts.first_degree_av_block:
        out.append("first_degree_av_block")
    return sorted(out)


def _write_one(fmt: str, patient: SyntheticPatient, raw: Path) -> Path:
    profile = PROFILES[FORMATS[fmt][0]]
    files = write_ecg(patient, profile, raw)
    assert len(files) == 1 and files[0].is_file()
    assert files[0].is_relative_to(raw / "ecg")
    return files[0]


@pytest.mark.parametrize("fmt", list(FORMATS), ids=list(FORMATS))
def test_round_trip_recovers_signal_measurements_findings_and_patient(fmt: str, tmp_path: Path) -> None:
    index, reader, per_bit, language, _ = FORMATS[fmt]
    profile = PROFILES[index]
    for patient in _patients(profile):
        path = _write_one(fmt, patient, tmp_path / patient.pacs_id)
        record = reader(path)
        record.check(str(path))
        export = prepare_export(patient, profile)
        id_kind = "pacs_id" if fmt == "dicom" else profile.config.ecg.id_kind
        assert record.patient_source_id == (patient.pacs_id if id_kind == "pacs_id" else patient.case_id)
        assert record.sampling_frequency == 500
        assert record.acquired == export.acquired
        assert set(record.leads) == set(TWELVE_LEADS)
        for lead in TWELVE_LEADS:
            assert len(record.leads[lead]) == 5000
            # stored leads: half a step; leads derived from two stored ones: up to one step
            tol = per_bit * (1.0 if fmt == "ge-muse" and lead in ("III", "aVR", "aVL", "aVF") else 0.5) + 1e-6
            assert np.max(np.abs(record.leads[lead] - export.leads[lead])) <= tol, lead
        assert record.measurements == pytest.approx(device_measurements(patient.ecg))
        assert record.statements == device_statements(patient.ecg, language)
        assert sorted(record.findings) == _expected_findings(patient.ecg)
        assert record.patient_sex == patient.sex


@pytest.mark.parametrize("fmt", list(FORMATS), ids=list(FORMATS))
def test_writers_are_deterministic(fmt: str, tmp_path: Path) -> None:
    patient = _patients(PROFILES[FORMATS[fmt][0]], 1)[0]
    a = _write_one(fmt, patient, tmp_path / "a")
    b = _write_one(fmt, patient, tmp_path / "b")
    assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_write_ecg_without_ecg_writes_nothing(tmp_path: Path) -> None:
    patient = replace(_patients(PROFILES[0], 1)[0], ecg=None)
    assert write_ecg(patient, PROFILES[0], tmp_path) == []
    assert not any(tmp_path.iterdir())


def test_muse_stores_eight_leads_and_reader_derives_limb_leads(tmp_path: Path) -> None:
    patient = _patients(PROFILES[1], 1)[0]
    path = _write_one("ge-muse", patient, tmp_path)
    root = ET.fromstring(path.read_bytes())
    stored = [el.findtext("LeadID") for el in root.iter("LeadData")]
    assert stored == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    record = read_muse(path)
    i, ii = record.leads["I"], record.leads["II"]
    assert np.array_equal(record.leads["III"], ii - i)
    assert np.allclose(record.leads["aVR"], -(i + ii) / 2)
    assert np.allclose(record.leads["aVL"], i - ii / 2)
    assert np.allclose(record.leads["aVF"], ii - i / 2)
    # the derived leads match what the cart "recorded" for them
    export = prepare_export(patient, PROFILES[1])
    assert np.max(np.abs(record.leads["aVF"] - export.leads["aVF"])) < 4.88


def _pixelmed_check(tmp_path: Path, scp: Path) -> tuple[dict[str, str], str]:
    """Run PixelMed's independent SCP-ECG parser and return its answers and stderr."""
    source = tmp_path / "ScpCheck.java"
    source.write_text("""
import com.pixelmed.dicom.BinaryInputStream;
import com.pixelmed.scpecg.SCPECG;
import java.io.BufferedInputStream;
import java.io.FileInputStream;

public class ScpCheck {
    public static void main(String[] args) throws Exception {
        SCPECG scp = new SCPECG(new BinaryInputStream(new BufferedInputStream(new FileInputStream(args[0])), false), false);
        StringBuilder n = new StringBuilder(), ids = new StringBuilder(), first = new StringBuilder();
        for (long v : scp.getNumbersOfSamples()) n.append(v).append(',');
        for (int v : scp.getLeadNumbers()) ids.append(v).append(',');
        byte[][] data = scp.getSection6().getCompressedLeadData();
        for (int k = 0; k < 8; k++) first.append((short) ((data[1][2 * k] & 0xff) | (data[1][2 * k + 1] << 8))).append(',');
        System.out.println("leads=" + scp.getNumberOfLeads());
        System.out.println("samples=" + n);
        System.out.println("lead_ids=" + ids);
        System.out.println("patient_id=" + scp.getNamedField("PatientIdentificationNumber"));
        System.out.println("interval_us=" + scp.getSection6().getSampleTimeInterval());
        System.out.println("lead2_first=" + first);
        System.out.println("qrs_ms=" + (scp.getSection7().getQRSOffset()[0] - scp.getSection7().getQRSOnset()[0]));
        System.out.println("statements=" + scp.getSection8().getNumberOfStatements());
    }
}
""")
    proc = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", str(PIXELMED_JAR), str(source), str(scp)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return out, proc.stderr


@pytest.mark.skipif(shutil.which("java") is None or not PIXELMED_JAR.exists(), reason="PixelMed/Java not installed")
def test_scpecg_parses_with_pixelmed(tmp_path: Path) -> None:
    profile = PROFILES[3]
    patient = _patients(profile, 1)[0]
    path = _write_one("scp-ecg", patient, tmp_path)
    out, stderr = _pixelmed_check(tmp_path, path)
    assert out["leads"] == "12"
    assert out["samples"] == "5000," * 12
    assert out["patient_id"] == patient.case_id
    assert out["lead_ids"] == "".join(f"{SCP_LEAD_IDS[lead]}," for lead in TWELVE_LEADS)
    assert out["interval_us"] == "2000"
    assert out["qrs_ms"] == str(patient.ecg.qrs_ms)
    assert out["statements"] == str(len(device_statements(patient.ecg, "de")))
    export = prepare_export(patient, profile)
    expected = np.rint(export.leads["II"][:8] / 2.5).astype(int)
    assert out["lead2_first"] == "".join(f"{v}," for v in expected)
    # PixelMed validates every section and the pointers while parsing and reports problems on stderr.
    # Its decompressor always expects Huffman tables, so uncompressed data (no section 2, which EN 1064
    # allows) makes it print NullPointerExceptions from HuffmanDecoder; anything else is a finding.
    complaints = [line for line in stderr.splitlines()
                  if line.strip() and "Huffman" not in line and not line.lstrip().startswith("at ")]
    assert complaints == []


def _qrs_fraction(leads: dict[str, np.ndarray], fs: int = 500) -> float:
    """Fraction of time the spatial velocity is high: proportional to QRS width at a fixed rate."""
    v = np.sqrt(sum(np.diff(leads[lead]) ** 2 for lead in TWELVE_LEADS))
    return float(np.mean(v > 0.2 * np.percentile(v, 99.5)))


def _facts(**kw: object) -> EcgFacts:
    base = dict(acquired=date(2021, 5, 3), hour=9, heart_rate=70, pr_ms=160, qrs_ms=95, qt_ms=400, qrs_axis_deg=30,
                p_axis_deg=50, t_axis_deg=40, rhythm="sinus", conduction="none", first_degree_av_block=False)
    base.update(kw)
    return EcgFacts(**base)  # type: ignore[arg-type]


def test_signal_qrs_width_grows_with_qrs_duration() -> None:
    widths = [_qrs_fraction(synthesize_leads(_facts(qrs_ms=q), seed=3)) for q in (80, 110, 140)]
    assert widths[0] < widths[1] < widths[2]
    lbbb = _qrs_fraction(synthesize_leads(_facts(qrs_ms=160, conduction="LBBB"), seed=3))
    assert lbbb > 1.4 * widths[0]


def test_signal_is_einthoven_consistent_and_deterministic() -> None:
    leads = synthesize_leads(_facts(conduction="RBBB", qrs_ms=140), seed=5)
    assert list(leads) == list(TWELVE_LEADS)
    assert np.allclose(leads["III"], leads["II"] - leads["I"])
    assert np.allclose(leads["aVR"] + leads["aVL"] + leads["aVF"], 0.0, atol=1e-9)
    again = synthesize_leads(_facts(conduction="RBBB", qrs_ms=140), seed=5)
    assert all(np.array_equal(leads[k], again[k]) for k in leads)
    other = synthesize_leads(_facts(conduction="RBBB", qrs_ms=140), seed=6)
    assert not np.array_equal(leads["II"], other["II"])
    assert 300 < np.ptp(leads["II"]) < 5000  # microvolts: a plausible QRS amplitude


def test_signal_bundle_branch_block_patterns() -> None:
    def qrs_extremes(leads: dict[str, np.ndarray], lead: str) -> tuple[float, float]:
        return float(np.max(leads[lead])), float(np.min(leads[lead]))

    lbbb = synthesize_leads(_facts(conduction="LBBB", qrs_ms=160, qrs_axis_deg=-10), seed=2)
    hi, lo = qrs_extremes(lbbb, "V1")
    assert -lo > 2 * hi  # LBBB: deep QS in V1
    hi, lo = qrs_extremes(lbbb, "V6")
    assert hi > 2 * -lo  # and a broad positive R in V6
    rbbb = synthesize_leads(_facts(conduction="RBBB", qrs_ms=140), seed=2)
    normal = synthesize_leads(_facts(conduction="none", qrs_ms=90), seed=2)
    assert np.max(rbbb["V1"]) > 2 * np.max(normal["V1"])  # RBBB: R' in V1


@pytest.mark.parametrize("rhythm,irregular", [("sinus", False), ("afib", True)], ids=["sinus", "afib"])
def test_signal_rr_regularity_follows_rhythm(rhythm: str, irregular: bool) -> None:
    leads = synthesize_leads(_facts(rhythm=rhythm, pr_ms=0 if rhythm == "afib" else 160, heart_rate=80), seed=4)
    v = np.sqrt(sum(np.diff(leads[lead]) ** 2 for lead in TWELVE_LEADS))
    peaks, _ = find_peaks(v, height=0.5 * np.percentile(v, 99.5), distance=150)
    rr = np.diff(peaks)
    cv = float(np.std(rr) / np.mean(rr))
    assert (cv > 0.08) if irregular else (cv < 0.04)


@pytest.mark.parametrize("statements,expected", [
    (["Sinus rhythm", "Left bundle branch block"], ["sinus_rhythm", "lbbb"]),
    (["Sinusrhythmus", "AV-Block I. Grades", "Rechtsschenkelblock"], ["sinus_rhythm", "rbbb", "first_degree_av_block"]),
    (["Vorhofflimmern", "Linksschenkelblock"], ["atrial_fibrillation", "lbbb"]),
    (["Normal sinus rhythm with 1st degree A-V block"], ["sinus_rhythm", "first_degree_av_block"]),
    (["RITMO SINUSALE", "ECG NORMALE"], ["sinus_rhythm"]),
    (["Incomplete right bundle branch block"], []),
    (["Inkompletter Rechtsschenkelblock", "kein Linksschenkelblock mehr"], []),
], ids=["en", "de", "de-afib", "ge-style", "it", "incomplete-en", "incomplete-negated-de"])
def test_statements_map_to_canonical_findings(statements: list[str], expected: list[str]) -> None:
    assert findings_from_statements(statements) == expected


def test_reads_pydicoms_real_12_lead_ecg() -> None:
    path = Path(get_testdata_file("waveform_ecg.dcm"))
    record = read_dicom_ecg(path)
    record.check(str(path))
    assert record.patient_source_id == "642341"
    assert record.sampling_frequency == 1000
    assert set(record.leads) == set(TWELVE_LEADS) and len(record.leads["I"]) == 10000
    raw = pydicom.dcmread(path).waveform_array(0)
    assert np.allclose(record.leads["I"], raw[:, 0])  # SCPECG lead codes, microvolts
    assert record.measurements["qrs_ms"] == 75 and record.measurements["pr_ms"] == 161
    assert record.measurements["rr_ms"] == 982 and record.measurements["qrs_axis_deg"] == 52
    assert record.statements == ["RITMO SINUSALE", "ECG NORMALE"]
    assert record.findings == ["sinus_rhythm"]


# --- converters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS), ids=list(FORMATS))
def test_converters_sniff_by_content_only(fmt: str, tmp_path: Path) -> None:
    patient = _patients(PROFILES[FORMATS[fmt][0]], 1)[0]
    path = _write_one(fmt, patient, tmp_path)
    renamed = path.rename(tmp_path / "export.bin")  # file names must not matter
    head = InputHead.read(renamed)
    site = PROFILES[FORMATS[fmt][0]].config
    claimed = [c.name for c in CONVERTERS if c.sniff(head, site)]
    assert claimed == [FORMATS[fmt][4].name]


@pytest.mark.parametrize("fmt", list(FORMATS), ids=list(FORMATS))
def test_converter_builds_waveform_and_report(fmt: str, tmp_path: Path) -> None:
    profile = PROFILES[FORMATS[fmt][0]]
    patient = _patients(profile, 1)[0]
    path = _write_one(fmt, patient, tmp_path / "raw")
    ctx = make_context(tmp_path, site=profile.config, case_to_pacs={patient.case_id: patient.pacs_id})
    conv = FORMATS[fmt][4]()
    assert conv.stage == STAGE_WAVEFORMS
    result = conv.convert(path, ctx)
    waveform, report = result.datasets
    expected_id = pseudonym(profile.config.pseudonym_key, profile.site_id, patient.pacs_id)
    assert waveform.PatientID == expected_id and report.PatientID == expected_id
    assert waveform.PatientBirthDate == ""
    assert waveform.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert report.SOPClassUID == COMPREHENSIVE_SR
    assert report.StudyInstanceUID == waveform.StudyInstanceUID
    export = prepare_export(patient, profile)
    samples = waveform.waveform_array(0)
    assert samples.shape == (5000, 12)
    assert np.max(np.abs(samples[:, 1] - export.leads["II"])) < 5.0  # lead II is channel 2 everywhere here
    if fmt == "dicom":
        assert waveform.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID  # kept as it is
    again = conv.convert(path, ctx).datasets
    assert [d.SOPInstanceUID for d in again] == [waveform.SOPInstanceUID, report.SOPInstanceUID]


def test_dicom_ecg_converter_takes_pydicoms_real_ecg(tmp_path: Path) -> None:
    path = Path(get_testdata_file("waveform_ecg.dcm"))
    ctx = make_context(tmp_path)
    head = InputHead.read(path)
    assert DicomEcgConverter().sniff(head, ctx.site)
    result = DicomEcgConverter().convert(path, ctx)
    waveform, report = result.datasets
    original = pydicom.dcmread(path)
    assert waveform.SOPInstanceUID == original.SOPInstanceUID
    assert waveform.PatientID == pseudonym(ctx.site.pseudonym_key, ctx.site.site_id, "642341")
    assert "OtherPatientIDs" not in waveform and "PatientAddress" not in waveform
    assert np.array_equal(waveform.waveform_array(0), original.waveform_array(0))
    assert report.SOPClassUID == COMPREHENSIVE_SR
    out = tmp_path / "ecg.dcm"
    waveform.save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).PatientID == waveform.PatientID
