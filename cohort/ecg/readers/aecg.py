"""Reader of HL7 aECG (Annotated ECG, HL7 v3 XML) resting ECGs.

Signal: the first series' sequenceSet, a ``GLIST_TS`` time sequence (head + increment) and one
``SLIST_PQ`` sequence per lead (value = origin + scale * digit). Measurements and statements: the
series' annotationSet (MDC codes).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import numpy as np

from cohort.dicom.codes import TWELVE_LEADS
from cohort.ecg.readers import findings_from_statements, parse_xml, read_input_bytes
from cohort.ecg.record import EcgRecord, derive_limb_leads
from cohort.errors import InputError

NS = {"v3": "urn:hl7-org:v3"}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
ANNOTATION_KEYS = {
    "MDC_ECG_HEART_RATE": "heart_rate", "MDC_ECG_TIME_PD_RR": "rr_ms", "MDC_ECG_TIME_PD_PR": "pr_ms",
    "MDC_ECG_TIME_PD_QRS": "qrs_ms", "MDC_ECG_TIME_PD_QT": "qt_ms", "MDC_ECG_TIME_PD_QTc": "qtc_ms",
    "MDC_ECG_TIME_PD_QTcB": "qtc_ms", "MDC_ECG_ANGLE_P_FRONT": "p_axis_deg",
    "MDC_ECG_ANGLE_QRS_FRONT": "qrs_axis_deg", "MDC_ECG_ANGLE_T_FRONT": "t_axis_deg",
}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_VOLT_UNITS = {"uV": 1.0, "µV": 1.0, "mV": 1000.0, "V": 1e6, "nV": 1e-3}
_TS = re.compile(r"^(\d{8})(\d{0,6})")


def _ts(path: Path, value: str, field: str) -> datetime:
    m = _TS.match(value or "")
    if not m:
        raise InputError(f"timestamp {value!r} is not an HL7 TS (YYYYMMDDHHMMSS)", path=str(path), field=field)
    return datetime.strptime(m.group(1) + m.group(2).ljust(6, "0"), "%Y%m%d%H%M%S")


def _num(path: Path, value: str | None, field: str) -> float:
    try:
        return float(value or "")
    except ValueError:
        raise InputError(f"expected a number, got {value!r}", path=str(path), field=field) from None


def _code(el: ET.Element) -> str:
    c = el.find("v3:code", NS)
    return c.get("code", "") if c is not None else ""


def _lead(path: Path, code: str, value: ET.Element) -> np.ndarray:
    field = f"sequence[{code}]/value"
    if value.get(XSI_TYPE, "").split(":")[-1] != "SLIST_PQ":
        raise InputError(f"lead value has xsi:type {value.get(XSI_TYPE)!r}; expected SLIST_PQ",
                         path=str(path), field=field)
    origin, scale = value.find("v3:origin", NS), value.find("v3:scale", NS)
    digits = value.find("v3:digits", NS)
    if origin is None or scale is None or digits is None:
        raise InputError("SLIST_PQ needs origin, scale and digits", path=str(path), field=field)
    factors = []
    for el, name in ((origin, "origin"), (scale, "scale")):
        unit = el.get("unit", "uV")
        if unit not in _VOLT_UNITS:
            raise InputError(f"{name} unit {unit!r} unknown; expected one of {sorted(_VOLT_UNITS)}",
                             path=str(path), field=f"{field}/{name}")
        factors.append(_num(path, el.get("value"), f"{field}/{name}") * _VOLT_UNITS[unit])
    try:
        samples = np.array((digits.text or "").split(), dtype=np.float64)
    except ValueError:
        raise InputError("digits must be whitespace-separated integers", path=str(path),
                         field=f"{field}/digits") from None
    return factors[0] + factors[1] * samples


def read_aecg(path: Path) -> EcgRecord:
    """Read one HL7 aECG file; raises InputError naming the element that is wrong."""
    path = Path(path)
    root = parse_xml(path, read_input_bytes(path))
    if root.tag != "{urn:hl7-org:v3}AnnotatedECG":
        raise InputError(f"root element is <{root.tag}>, expected AnnotatedECG in namespace urn:hl7-org:v3",
                         path=str(path), field="AnnotatedECG")
    subject = root.find(".//v3:trialSubject/v3:id", NS)
    patient_id = subject.get("extension", "").strip() if subject is not None else ""
    if not patient_id:
        raise InputError("no patient identifier; the export must fill trialSubject/id/@extension",
                         path=str(path), field="trialSubject/id/@extension")
    series = root.find("v3:component/v3:series", NS)
    seq_set = series.find("v3:component/v3:sequenceSet", NS) if series is not None else None
    if series is None or seq_set is None:
        raise InputError("no component/series/component/sequenceSet with the waveforms",
                         path=str(path), field="series/sequenceSet")
    fs = 0.0
    acquired: datetime | None = None
    leads: dict[str, np.ndarray] = {}
    for seq in seq_set.findall("v3:component/v3:sequence", NS):
        code, value = _code(seq), seq.find("v3:value", NS)
        if value is None:
            continue
        if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            inc = value.find("v3:increment", NS)
            head = value.find("v3:head", NS)
            unit = inc.get("unit", "s") if inc is not None else "s"
            if inc is None or unit not in _TIME_UNITS:
                raise InputError(f"time sequence needs an increment in {sorted(_TIME_UNITS)}",
                                 path=str(path), field="sequence[TIME_ABSOLUTE]/value/increment")
            step = _num(path, inc.get("value"), "sequence[TIME_ABSOLUTE]/value/increment") * _TIME_UNITS[unit]
            fs = 1.0 / step if step > 0 else 0.0
            if code == "TIME_ABSOLUTE" and head is not None:
                acquired = _ts(path, head.get("value", ""), "sequence[TIME_ABSOLUTE]/value/head")
        elif code.startswith("MDC_ECG_LEAD_"):
            name = code.removeprefix("MDC_ECG_LEAD_")
            if name in TWELVE_LEADS:
                leads[name] = _lead(path, code, value)
    if fs <= 0:
        raise InputError("no time sequence (GLIST_TS) with a positive increment; cannot know the sampling rate",
                         path=str(path), field="sequence[TIME_ABSOLUTE]")
    lengths = {lead: len(v) for lead, v in leads.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"leads have different numbers of samples {lengths}; every lead of a sequenceSet "
                         "must cover the same time axis", path=str(path), field="sequenceSet")
    if acquired is None:
        low = series.find("v3:effectiveTime/v3:low", NS)
        acquired = _ts(path, low.get("value", "") if low is not None else "", "series/effectiveTime/low")
    measurements: dict[str, float] = {}
    statements: list[str] = []
    for ann in series.findall("v3:subjectOf/v3:annotationSet//v3:annotation", NS):
        code, value = _code(ann), ann.find("v3:value", NS)
        if value is None:
            continue
        if code in ANNOTATION_KEYS and value.get("value") is not None:
            measurements[ANNOTATION_KEYS[code]] = _num(path, value.get("value"), f"annotation[{code}]/value")
        elif code.startswith("MDC_ECG_INTERPRETATION") and (value.text or "").strip():
            statements.append((value.text or "").strip())
    if {"I", "II"} <= leads.keys():
        leads = derive_limb_leads(leads)
    model = series.findtext(".//v3:manufacturedSeriesDevice/v3:manufacturerModelName", "", NS)
    maker = series.findtext(".//v3:manufacturerOrganization/v3:name", "", NS)
    gender = root.find(".//v3:subjectDemographicPerson/v3:administrativeGenderCode", NS)
    sex = gender.get("code", "") if gender is not None else ""
    return EcgRecord(
        source_format="hl7-aecg", patient_source_id=patient_id, acquired=acquired, sampling_frequency=fs,
        leads=leads, measurements=measurements, findings=findings_from_statements(statements),
        statements=statements, manufacturer=maker.strip(), device_model=model.strip(),
        patient_sex=sex if sex in ("M", "F") else "",
    )
