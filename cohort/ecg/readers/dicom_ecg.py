"""Reader of DICOM resting-ECG waveform objects (12-Lead and General ECG Waveform Storage).

Leads are recognised by their channel source codes in scheme MDC (CID 3001) or the older SCPECG
scheme, measurements by the concept codes of WaveformAnnotationSequence items (MDC, SCPECG, LOINC)
and statements by their UnformattedTextValue.
"""

from __future__ import annotations

import io
import re
import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from cohort.dicom import codes
from cohort.dicom.conformance import find_truncation
from cohort.dicom.sop_classes import RESTING_ECG_SOP_CLASSES, TWELVE_LEAD_ECG_STORAGE
from cohort.ecg.readers import findings_from_statements, read_input_bytes
from cohort.ecg.record import EcgRecord, derive_limb_leads
from cohort.errors import InputError

LEADS_BY_CODE: dict[tuple[str, str], str] = {
    **{("MDC", v): lead for lead, v in codes.LEAD_CODES_MDC.items()},
    **{("SCPECG", v): lead for lead, v in codes.LEAD_CODES_SCPECG.items()},
}
# (scheme, code) -> canonical measurement key
MEASUREMENTS_BY_CODE: dict[tuple[str, str], str] = {
    ("MDC", codes.PR_INTERVAL.value): "pr_ms", ("MDC", codes.QRS_DURATION.value): "qrs_ms",
    ("MDC", codes.QT_INTERVAL.value): "qt_ms", ("MDC", codes.QTC_INTERVAL.value): "qtc_ms",
    ("MDC", "2:15880"): "qtc_ms",  # QTc using Bazett
    ("MDC", codes.RR_INTERVAL.value): "rr_ms", ("MDC", "2:16000"): "rr_ms",
    ("MDC", codes.P_AXIS.value): "p_axis_deg", ("MDC", codes.QRS_AXIS.value): "qrs_axis_deg",
    ("MDC", codes.T_AXIS.value): "t_axis_deg", ("MDC", "2:16770"): "heart_rate",
    ("LN", "8867-4"): "heart_rate",
    ("SCPECG", "5.10.2.1-3"): "rr_ms", ("SCPECG", "5.13.5-7"): "pr_ms", ("SCPECG", "5.13.5-9"): "qrs_ms",
    ("SCPECG", "5.13.5-11"): "qt_ms", ("SCPECG", "5.10.2.5-5"): "qtc_ms", ("SCPECG", "5.10.3-11"): "p_axis_deg",
    ("SCPECG", "5.10.3-13"): "qrs_axis_deg", ("SCPECG", "5.10.3-15"): "t_axis_deg",
}
_UNIT_FACTORS = {"uV": 1.0, "mV": 1000.0, "V": 1e6, "nV": 1e-3}
_MEANING_LEAD = re.compile(r"^(?:lead\s+)?(I{1,3}|aV[RLF]|V[1-6])\b", re.IGNORECASE)


def _lead_name(channel: Dataset) -> str | None:
    src = channel.get("ChannelSourceSequence")
    if not src:
        return None
    item = src[0]
    key = (str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", "")))
    if key in LEADS_BY_CODE:
        return LEADS_BY_CODE[key]
    m = _MEANING_LEAD.match(str(item.get("CodeMeaning", "")).strip())
    if m:
        name = m.group(1)
        return next((lead for lead in codes.TWELVE_LEADS if lead.lower() == name.lower()), None)
    return None


def _pick_group(path: Path, ds: Dataset) -> int:
    groups = ds.get("WaveformSequence")
    if not groups:
        raise InputError("no WaveformSequence; the object carries no waveform", path=str(path),
                         field="WaveformSequence")
    candidates = [(str(g.get("MultiplexGroupLabel", "")).upper() == "RHYTHM", int(g.NumberOfWaveformSamples), k)
                  for k, g in enumerate(groups) if int(g.get("NumberOfWaveformChannels", 0)) >= 8]
    if not candidates:
        raise InputError("no multiplex group with at least 8 channels; not a 12-lead ECG", path=str(path),
                         field="WaveformSequence")
    return max(candidates)[2]  # the rhythm group, else the longest


def _check_waveform_length(group: Dataset, index: int, path: Path) -> None:
    """WaveformData must hold channels x samples x bytes per sample: a cut-off file holds fewer."""
    try:
        expected = (int(group.NumberOfWaveformChannels) * int(group.NumberOfWaveformSamples)
                    * int(group.WaveformBitsAllocated) // 8)
        actual = len(group.WaveformData)
    except (AttributeError, TypeError, ValueError):
        return  # incomplete group attributes: decoding below names them
    where = f"WaveformSequence[{index}].WaveformData"
    if actual < expected:
        raise InputError(f"WaveformData (5400,1010) holds {actual} of the {expected} bytes that Number of "
                         "Waveform Channels, Number of Waveform Samples and Waveform Bits Allocated call for: "
                         "the file is truncated; export it again from the PACS or the ECG system",
                         path=str(path), field=where)
    if actual > expected + 1:  # one pad byte keeps an odd value length even
        raise InputError(f"WaveformData (5400,1010) holds {actual} bytes but Number of Waveform Channels, Number "
                         f"of Waveform Samples and Waveform Bits Allocated call for {expected}: the group's "
                         "attributes do not describe its data; export it again from the ECG system",
                         path=str(path), field=where)


def _acquired(ds: Dataset) -> datetime:
    for value in (ds.get("AcquisitionDateTime"),
                  f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}",
                  f"{ds.get('StudyDate', '')}{ds.get('StudyTime', '')}"):
        digits = re.sub(r"[^0-9]", "", str(value or "").split(".")[0].split("+")[0])
        if len(digits) >= 8:
            return datetime.strptime(digits[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
    return datetime(1900, 1, 1)


def record_from_dataset(ds: Dataset, path: Path) -> EcgRecord:
    """The ECG record of an already read DICOM ECG waveform dataset."""
    path = Path(path)
    if str(ds.get("SOPClassUID", "")) not in RESTING_ECG_SOP_CLASSES:
        raise InputError(f"SOP class {ds.get('SOPClassUID', '(none)')} is not a resting ECG waveform; expected "
                         f"12-Lead ({TWELVE_LEAD_ECG_STORAGE}) or General ECG", path=str(path), field="SOPClassUID")
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise InputError("PatientID is missing or empty; the PACS export must carry the patient identifier",
                         path=str(path), field="PatientID")
    index = _pick_group(path, ds)
    group = ds.WaveformSequence[index]
    _check_waveform_length(group, index, path)
    try:
        fs = float(group.SamplingFrequency)
        samples = ds.waveform_array(index)
    except (AttributeError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"waveform data cannot be decoded ({exc})", path=str(path),
                         field=f"WaveformSequence[{index}]") from None
    leads: dict[str, np.ndarray] = {}
    for k, channel in enumerate(group.ChannelDefinitionSequence):
        name = _lead_name(channel)
        if name is None or name in leads:
            continue
        units = channel.get("ChannelSensitivityUnitsSequence")
        unit = str(units[0].get("CodeValue", "uV")) if units else "uV"
        if unit not in _UNIT_FACTORS:
            raise InputError(f"channel {k + 1} sensitivity unit {unit!r} unknown; expected one of "
                             f"{sorted(_UNIT_FACTORS)}", path=str(path), field="ChannelSensitivityUnitsSequence")
        leads[name] = np.asarray(samples[:, k], dtype=np.float64) * _UNIT_FACTORS[unit]
    if {"I", "II"} <= leads.keys():
        leads = derive_limb_leads(leads)
    measurements: dict[str, float] = {}
    statements: list[str] = []
    for ann in ds.get("WaveformAnnotationSequence", []):
        text = str(ann.get("UnformattedTextValue", "") or "").strip()
        if text:
            statements.append(text)
        concept = ann.get("ConceptNameCodeSequence")
        value = ann.get("NumericValue")
        if concept and value not in (None, ""):
            key = MEASUREMENTS_BY_CODE.get((str(concept[0].get("CodingSchemeDesignator", "")),
                                            str(concept[0].get("CodeValue", ""))))
            number = float(value[0] if isinstance(value, (list, MultiValue)) else value)
            if key and key not in measurements and not (number == 0 and key.endswith("_ms")):
                measurements[key] = number  # 0 ms: the device did not measure it (e.g. PP in AF)
    age = str(ds.get("PatientAge", "") or "")
    return EcgRecord(
        source_format="dicom-ecg", patient_source_id=patient_id, acquired=_acquired(ds), sampling_frequency=fs,
        leads=leads, measurements=measurements, findings=findings_from_statements(statements),
        statements=statements, manufacturer=str(ds.get("Manufacturer", "") or ""),
        device_model=str(ds.get("ManufacturerModelName", "") or ""),
        patient_sex=str(ds.get("PatientSex", "") or "") if ds.get("PatientSex") in ("M", "F") else "",
        patient_age_years=int(age[:3]) if len(age) == 4 and age.endswith("Y") and age[:3].isdigit() else None,
    )


def read_dataset(path: Path) -> Dataset:
    """Read a (possibly gzipped) DICOM file; InputError when it is not DICOM."""
    path = Path(path)
    raw = read_input_bytes(path)
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        cut = find_truncation(raw)
        if cut is not None:
            raise InputError(f"the file is truncated: {cut.describe()}; export it again from the PACS",
                             path=str(path), field="file") from None
        raise InputError(f"not a readable DICOM file ({exc}); re-export it from the PACS", path=str(path),
                         field="file") from None
    return ds


def read_dicom_ecg(path: Path) -> EcgRecord:
    """Read one DICOM ECG waveform file into an EcgRecord."""
    return record_from_dataset(read_dataset(path), Path(path))
