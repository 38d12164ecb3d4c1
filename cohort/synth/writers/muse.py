"""A resting ECG as a GE MUSE system exports it: ``RestingECG`` XML, ISO-8859-1, German statements.

MUSE stores the eight independent leads (I, II, V1-V6) of the rhythm strip as base64 little-endian
int16 with ``LeadAmplitudeUnitsPerBit``; readers derive III, aVR, aVL and aVF.
"""

from __future__ import annotations

import base64
from pathlib import Path
from xml.sax.saxutils import escape

from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize

MUSE_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
UNITS_PER_BIT = 4.88  # microvolts per count, as MUSE writes it
DEVICE = "MAC55"


def _el(name: str, value: object, indent: int) -> str:
    return f"{'   ' * indent}<{name}>{escape(str(value))}</{name}>\n"


def _measurements(export: EcgExport) -> str:
    m = export.measurements
    tags = [("VentricularRate", "heart_rate"), ("AtrialRate", "heart_rate"), ("PRInterval", "pr_ms"),
            ("QRSDuration", "qrs_ms"), ("QTInterval", "qt_ms"), ("QTCorrected", "qtc_ms"),
            ("PAxis", "p_axis_deg"), ("RAxis", "qrs_axis_deg"), ("TAxis", "t_axis_deg")]
    out = "<RestingECGMeasurements>\n"
    for tag, key in tags:
        if key in m and not (tag == "AtrialRate" and "pr_ms" not in m):
            out += _el(tag, int(round(m[key])), 1)
    out += _el("QRSCount", int(round(len(export.leads["I"]) / export.fs * m["heart_rate"] / 60)), 1)
    out += _el("ECGSampleBase", export.fs, 1) + _el("ECGSampleExponent", 0, 1)
    return out + "</RestingECGMeasurements>\n"


def _diagnosis(export: EcgExport, tag: str) -> str:
    out = f"<{tag}>\n" + _el("Modality", "RESTING", 1)
    for k, text in enumerate(export.statements):
        flag = "ENDSLINE" if k < len(export.statements) - 1 else "USERINSERT"
        out += ("   <DiagnosisStatement>\n" + _el("StmtFlag", flag, 2) + _el("StmtText", text, 2)
                + "   </DiagnosisStatement>\n")
    return out + f"</{tag}>\n"


def _rhythm(export: EcgExport) -> str:
    n = len(export.leads["I"])
    out = ("<Waveform>\n" + _el("WaveformType", "Rhythm", 1) + _el("WaveformStartTime", 0, 1)
           + _el("NumberofLeads", len(MUSE_LEADS), 1) + _el("SampleType", "CONTINUOUS_SAMPLES", 1)
           + _el("SampleBase", export.fs, 1) + _el("SampleExponent", 0, 1) + _el("HighPassFilter", 5, 1)
           + _el("LowPassFilter", 150, 1) + _el("ACFilter", 50, 1))
    for lead in MUSE_LEADS:
        counts = quantize(export.leads[lead], UNITS_PER_BIT)
        out += ("   <LeadData>\n" + _el("LeadByteCountTotal", 2 * n, 2) + _el("LeadTimeOffset", 0, 2)
                + _el("LeadSampleCountTotal", n, 2) + _el("LeadAmplitudeUnitsPerBit", UNITS_PER_BIT, 2)
                + _el("LeadAmplitudeUnits", "MICROVOLTS", 2) + _el("LeadHighLimit", 32767, 2)
                + _el("LeadLowLimit", -32768, 2) + _el("LeadID", lead, 2) + _el("LeadOffsetFirstSample", 0, 2)
                + _el("FirstSampleBaseline", 0, 2) + _el("LeadSampleSize", 2, 2) + _el("LeadOff", "FALSE", 2)
                + _el("BaselineSway", "FALSE", 2)
                + _el("WaveFormData", base64.b64encode(counts.tobytes()).decode("ascii"), 2)
                + "   </LeadData>\n")
    return out + "</Waveform>\n"


def render_muse(export: EcgExport, site_name: str) -> bytes:
    """The MUSE XML document for one ECG (bytes in ISO-8859-1, as MUSE writes it)."""
    acq = export.acquired
    doc = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n'
        "<RestingECG>\n"
        "<MuseInfo>\n" + _el("MuseVersion", "9.0.10.18920", 1) + "</MuseInfo>\n"
        "<PatientDemographics>\n"
        + _el("PatientID", export.patient_id, 1) + _el("PatientAge", export.age_years, 1)
        + _el("AgeUnits", "YEARS", 1) + _el("DateofBirth", export.birth_date.strftime("%m-%d-%Y"), 1)
        + _el("Gender", "MALE" if export.sex == "M" else "FEMALE", 1)
        + _el("PatientLastName", export.family_name, 1) + _el("PatientFirstName", export.given_name, 1)
        + "</PatientDemographics>\n"
        "<TestDemographics>\n"
        + _el("DataType", "RESTING", 1) + _el("Site", 1, 1) + _el("SiteName", site_name, 1)
        + _el("AcquisitionDevice", DEVICE, 1) + _el("Status", "CONFIRMED", 1)
        + _el("AcquisitionTime", acq.strftime("%H:%M:%S"), 1)
        + _el("AcquisitionDate", acq.strftime("%m-%d-%Y"), 1)
        + _el("AcquisitionSoftwareVersion", "010A", 1)
        + "</TestDemographics>\n"
        + _measurements(export) + _diagnosis(export, "Diagnosis") + _diagnosis(export, "OriginalDiagnosis")
        + _rhythm(export)
        + "</RestingECG>\n"
    )
    return doc.encode("iso-8859-1", errors="xmlcharrefreplace")


def write_muse(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write ``raw_dir/ecg/muse/MUSE_<date>_<time>_<n>.xml``."""
    export = prepare_export(patient, profile, language="de")
    out = (Path(raw_dir) / "ecg" / "muse"
           / f"MUSE_{export.acquired:%Y%m%d_%H%M%S}_{export.seed % 100000:05d}.xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_muse(export, profile.display_name))
    return [out]
