"""Reader of GE MUSE ``RestingECG`` XML exports.

MUSE stores the rhythm strip's eight independent leads (I, II, V1-V6) as base64 little-endian int16
with ``LeadAmplitudeUnitsPerBit``; III, aVR, aVL and aVF are derived (Einthoven / Goldberger).
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import numpy as np

from cohort.ecg.readers import findings_from_statements, parse_xml, read_input_bytes
from cohort.ecg.record import EcgRecord, derive_limb_leads
from cohort.errors import InputError

MUSE_MEASUREMENTS = {
    "VentricularRate": "heart_rate", "PRInterval": "pr_ms", "QRSDuration": "qrs_ms", "QTInterval": "qt_ms",
    "QTCorrected": "qtc_ms", "PAxis": "p_axis_deg", "RAxis": "qrs_axis_deg", "TAxis": "t_axis_deg",
}
REQUIRED_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_UNIT_FACTORS = {"MICROVOLTS": 1.0, "MILLIVOLTS": 1000.0}


def _text(root: ET.Element, path: str) -> str:
    el = root.find(path)
    return (el.text or "").strip() if el is not None else ""


def _float(path: Path, value: str, field: str) -> float:
    try:
        return float(value.replace(",", "."))
    except ValueError:
        raise InputError(f"expected a number, got {value!r}", path=str(path), field=field) from None


def _acquired(path: Path, root: ET.Element) -> datetime:
    date_s = _text(root, "TestDemographics/AcquisitionDate")
    time_s = _text(root, "TestDemographics/AcquisitionTime") or "00:00:00"
    for fmt in ("%m-%d-%Y %H:%M:%S", "%m-%d-%Y %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(f"{date_s} {time_s}", fmt)
        except ValueError:
            continue
    raise InputError(f"acquisition date/time {date_s!r} {time_s!r} not in MUSE format MM-DD-YYYY HH:MM:SS",
                     path=str(path), field="TestDemographics/AcquisitionDate")


def _lead_samples(path: Path, lead_el: ET.Element) -> tuple[str, np.ndarray]:
    lead = _text(lead_el, "LeadID")
    field = f"Waveform/LeadData[{lead or '?'}]/WaveFormData"
    encoded = "".join(_text(lead_el, "WaveFormData").split())
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("WaveFormData is not valid base64; the export is damaged: re-export it from MUSE",
                         path=str(path), field=field) from None
    size = int(_float(path, _text(lead_el, "LeadSampleSize") or "2", field))
    if size != 2 or len(raw) % 2:
        raise InputError(f"{len(raw)} bytes with sample size {size}; MUSE rhythm data must be 16-bit samples",
                         path=str(path), field=field)
    counts = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    declared = _text(lead_el, "LeadSampleCountTotal")
    if declared and int(_float(path, declared, field)) != counts.size:
        raise InputError(f"LeadSampleCountTotal says {declared} samples but WaveFormData holds {counts.size}",
                         path=str(path), field=field)
    per_bit = _float(path, _text(lead_el, "LeadAmplitudeUnitsPerBit") or "4.88", field)
    units = (_text(lead_el, "LeadAmplitudeUnits") or "MICROVOLTS").upper()
    if units not in _UNIT_FACTORS:
        raise InputError(f"unknown LeadAmplitudeUnits {units!r}; expected one of {sorted(_UNIT_FACTORS)}",
                         path=str(path), field=field)
    return lead, counts * per_bit * _UNIT_FACTORS[units]


def read_muse(path: Path) -> EcgRecord:
    """Read one MUSE RestingECG XML file; raises InputError naming the field that is wrong."""
    path = Path(path)
    root = parse_xml(path, read_input_bytes(path))
    if root.tag != "RestingECG":
        raise InputError(f"root element is <{root.tag}>, expected <RestingECG> (GE MUSE XML)",
                         path=str(path), field="RestingECG")
    patient_id = _text(root, "PatientDemographics/PatientID")
    if not patient_id:
        raise InputError("no patient identifier; export the ECG with PatientID filled in",
                         path=str(path), field="PatientDemographics/PatientID")
    rhythm = next((w for w in root.findall("Waveform") if _text(w, "WaveformType").lower() == "rhythm"), None)
    if rhythm is None:
        raise InputError("no <Waveform> with WaveformType Rhythm; export the full disclosure rhythm strip",
                         path=str(path), field="Waveform")
    fs = _float(path, _text(rhythm, "SampleBase") or "0", "Waveform/SampleBase")
    fs *= 10 ** int(_float(path, _text(rhythm, "SampleExponent") or "0", "Waveform/SampleExponent"))
    leads = dict(_lead_samples(path, el) for el in rhythm.findall("LeadData"))
    missing = [lead for lead in REQUIRED_LEADS if lead not in leads]
    if missing:
        raise InputError(f"rhythm waveform has leads {sorted(leads)}, missing {missing}; MUSE exports need "
                         "I, II and V1-V6 (8 leads) to make a 12-lead ECG", path=str(path), field="Waveform/LeadData")
    lengths = {lead: len(v) for lead, v in leads.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"leads have different numbers of samples {lengths}", path=str(path),
                         field="Waveform/LeadData")
    measurements = {}
    for tag, key in MUSE_MEASUREMENTS.items():
        value = _text(root, f"RestingECGMeasurements/{tag}")
        if value:
            measurements[key] = _float(path, value, f"RestingECGMeasurements/{tag}")
    if "heart_rate" in measurements and measurements["heart_rate"] > 0:
        measurements["rr_ms"] = float(round(60000.0 / measurements["heart_rate"]))
    statements = [_text(s, "StmtText") for s in root.findall("Diagnosis/DiagnosisStatement")]
    statements = [s for s in statements if s]
    gender = _text(root, "PatientDemographics/Gender").upper()
    age = _text(root, "PatientDemographics/PatientAge")
    age_units = _text(root, "PatientDemographics/AgeUnits").upper() or "YEARS"
    return EcgRecord(
        source_format="ge-muse", patient_source_id=patient_id, acquired=_acquired(path, root),
        sampling_frequency=fs, leads=derive_limb_leads(leads), measurements=measurements,
        findings=findings_from_statements(statements), statements=statements, manufacturer="GE Healthcare",
        device_model=_text(root, "TestDemographics/AcquisitionDevice"),
        patient_sex={"MALE": "M", "FEMALE": "F"}.get(gender, ""),
        patient_age_years=int(age) if age.isdigit() and age_units == "YEARS" else None,
    )
