"""Build the TID 3700 ECG Report (Comprehensive SR) that carries an ECG's measurements and findings.

The report sits in the waveform's study, in a series of its own, and references the waveform both
from its content (WAVEFORM "Source of Measurement") and from its evidence sequence. The observer is
the ECG device whose analysis program produced the measurements and statements, so the report is
COMPLETE but UNVERIFIED (no physician signed it).

The tree is built with ``cohort.dicom.sr_items`` rather than highdicom, whose 0.28.2 release cannot
hold a WAVEFORM item. The root concept is LOINC 11524-6 "EKG study": DICOM's TID 3700 prints
11524-0, which fails LOINC's check digit; readers of this project accept both
(``codes.ECG_REPORT_TITLES``).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from cohort.dicom import codes
from cohort.dicom import sr_items as sr
from cohort.dicom.part10 import file_meta_for, format_da, format_tm
from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.sop_classes import COMPREHENSIVE_SR_STORAGE
from cohort.dicom.uids import derived_uid
from cohort.ecg.record import FINDINGS, EcgRecord

__all__ = ["MEASUREMENT_CODES", "FINDING_CODES", "build_ecg_report"]

SR_MANUFACTURER = "FedCohort"

# Canonical measurement key (cohort.ecg.record.MEASUREMENT_UNITS) -> concept and UCUM unit.
MEASUREMENT_CODES: dict[str, tuple[Code, Code]] = {
    "heart_rate": (codes.HEART_RATE, codes.PER_MINUTE),
    "pr_ms": (codes.PR_INTERVAL, codes.MILLISECOND),
    "qrs_ms": (codes.QRS_DURATION, codes.MILLISECOND),
    "qt_ms": (codes.QT_INTERVAL, codes.MILLISECOND),
    "qtc_ms": (codes.QTC_INTERVAL, codes.MILLISECOND),
    "rr_ms": (codes.RR_INTERVAL, codes.MILLISECOND),
    "p_axis_deg": (codes.P_AXIS, codes.DEGREE),
    "qrs_axis_deg": (codes.QRS_AXIS, codes.DEGREE),
    "t_axis_deg": (codes.T_AXIS, codes.DEGREE),
}
# Canonical finding (cohort.ecg.record.FINDINGS) -> value of "ECG finding".
FINDING_CODES: dict[str, Code] = {
    "sinus_rhythm": codes.SINUS_RHYTHM,
    "atrial_fibrillation": codes.ATRIAL_FIBRILLATION,
    "lbbb": codes.LEFT_BUNDLE_BRANCH_BLOCK,
    "rbbb": codes.RIGHT_BUNDLE_BRANCH_BLOCK,
    "first_degree_av_block": codes.FIRST_DEGREE_AV_BLOCK,
}

Rel = sr.RelationshipType


def _observation_context(record: EcgRecord, uid: Callable[[str], str], site_id: str) -> list[Dataset]:
    """TID 1001 / 1004: the ECG device as observer."""
    if record.manufacturer or record.device_model:
        # One UID per device type and site, so reports of the same device share their observer.
        device_uid = str(derived_uid(site_id, "ecg-device", record.manufacturer, record.device_model))
    else:
        device_uid = uid("ecg-device-observer")
    items = [
        sr.code(codes.OBSERVER_TYPE, codes.DEVICE, rel=Rel.HAS_OBS_CONTEXT),
        sr.uidref(codes.DEVICE_OBSERVER_UID, device_uid, rel=Rel.HAS_OBS_CONTEXT),
    ]
    name = " ".join(p for p in (record.manufacturer, record.device_model) if p)
    if name:
        items.append(sr.text(codes.DEVICE_OBSERVER_NAME, name, rel=Rel.HAS_OBS_CONTEXT))
    if record.manufacturer:
        items.append(sr.text(codes.DEVICE_OBSERVER_MANUFACTURER, record.manufacturer, rel=Rel.HAS_OBS_CONTEXT))
    if record.device_model:
        items.append(sr.text(codes.DEVICE_OBSERVER_MODEL_NAME, record.device_model, rel=Rel.HAS_OBS_CONTEXT))
    return items


def _patient_characteristics(record: EcgRecord) -> Dataset | None:
    """TID 3704, with the age and sex the source knew."""
    items = []
    if record.patient_age_years is not None:
        items.append(sr.num(codes.SUBJECT_AGE, record.patient_age_years, codes.YEAR))
    sex = {"M": codes.MALE, "F": codes.FEMALE}.get(record.patient_sex)
    if sex is not None:
        items.append(sr.code(codes.SUBJECT_SEX, sex))
    return sr.container(codes.PATIENT_CHARACTERISTICS, items) if items else None


def _procedure_description(record: EcgRecord, waveform: Dataset) -> Dataset:
    """TID 3708: the waveform the measurements come from, and when it was recorded."""
    # No ReferencedWaveformChannels: the global measurements derive from all channels of the object.
    source = sr.waveform_ref(codes.SOURCE_OF_MEASUREMENT, str(waveform.SOPClassUID),
                             str(waveform.SOPInstanceUID))
    when = sr.datetime_item(codes.PROCEDURE_DATETIME, record.acquired)
    return sr.container(codes.CURRENT_PROCEDURE_DESCRIPTIONS, [source, when])


def _measurements(record: EcgRecord) -> Dataset | None:
    """Quantitative analysis > TID 3713 ECG Global Measurements, in canonical key order."""
    unknown = sorted(set(record.measurements) - set(MEASUREMENT_CODES))
    if unknown:
        raise ValueError(f"reader produced unknown measurement keys {unknown}; valid: {list(MEASUREMENT_CODES)}")
    items = [sr.num(concept, record.measurements[key], unit)
             for key, (concept, unit) in MEASUREMENT_CODES.items() if key in record.measurements]
    if not items:
        return None
    return sr.container(codes.QUANTITATIVE_ANALYSIS, [sr.container(codes.ECG_GLOBAL_MEASUREMENTS, items)])


def _findings(record: EcgRecord) -> Dataset | None:
    """TID 3717 Qualitative analysis: one "ECG finding" per canonical finding, duplicates dropped."""
    ordered = [f for f in FINDINGS if f in record.findings]  # canonical order: deterministic output
    if not ordered:
        return None
    return sr.container(codes.QUALITATIVE_ANALYSIS,
                        [sr.code(codes.ECG_FINDING, FINDING_CODES[f]) for f in ordered])


def _summary(record: EcgRecord) -> Dataset | None:
    """TID 3719 Summary: the device's statements verbatim, one TEXT item each."""
    statements = [s.strip() for s in record.statements if s.strip()]
    if not statements:
        return None
    return sr.container(codes.SUMMARY, [sr.text(codes.FINDING, s) for s in statements])


def _content_tree(record: EcgRecord, waveform: Dataset, uid: Callable[[str], str], site_id: str) -> Dataset:
    children = [
        sr.code(codes.LANGUAGE_OF_CONTENT, codes.ENGLISH_US, rel=Rel.HAS_CONCEPT_MOD),
        *_observation_context(record, uid, site_id),
        sr.code(codes.PROCEDURE_REPORTED, codes.TWELVE_LEAD_ECG, rel=Rel.HAS_CONCEPT_MOD),
        _patient_characteristics(record),
        _procedure_description(record, waveform),
        _measurements(record),
        _findings(record),
        _summary(record),
    ]
    return sr.container(codes.ECG_REPORT, [c for c in children if c is not None], rel=None, template_id="3700")


def build_ecg_report(record: EcgRecord, waveform: Dataset, patient: PatientRef,
                     uid: Callable[[str], str], site_id: str) -> Dataset | None:
    """The TID 3700 ECG Report for ``record``, or None when it has nothing to report.

    ``uid(role)`` mints the report's UIDs; ``site_id`` keys the UID of the device observer, which all
    reports of one device type at a site share.

    ``waveform`` is the object ``build_ecg_waveform`` made from the same record; the report joins its
    study. A record with measurements, findings or statements gets a report (statements alone are
    kept, not dropped).
    """
    if not (record.measurements or record.findings or any(s.strip() for s in record.statements)):
        return None
    acquired = record.acquired
    sop_uid = uid("ecg-report")

    ds = Dataset()
    ds.file_meta = file_meta_for(COMPREHENSIVE_SR_STORAGE, sop_uid)
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"  # statements may be German, Italian, ...
    ds.SOPClassUID = COMPREHENSIVE_SR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = format_da(acquired)  # no wall clock: the object must be reproducible
    ds.InstanceCreationTime = format_tm(acquired)
    # Patient: the same pseudonymous identity and demographics as the waveform
    apply_patient(ds, patient)
    ds.PatientSex = waveform.get("PatientSex", "")
    if "PatientAge" in waveform:
        ds.PatientAge = waveform.PatientAge
    # General Study: the waveform's study
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                    "AccessionNumber", "StudyDescription"):
        if keyword in waveform:
            setattr(ds, keyword, waveform[keyword].value)
    # SR Document Series
    ds.Modality = "SR"
    ds.SeriesInstanceUID = uid("ecg-sr-series")
    ds.SeriesNumber = 2  # the waveform's series is 1
    ds.SeriesDate = format_da(acquired)
    ds.SeriesTime = format_tm(acquired)
    ds.SeriesDescription = "ECG report"
    ds.ReferencedPerformedProcedureStepSequence = []
    # General Equipment: this project wrote the object; the ECG device is the observer in the content
    ds.Manufacturer = SR_MANUFACTURER
    # SR Document General
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # a device interpretation that no physician has signed
    ds.ContentDate = format_da(acquired)
    ds.ContentTime = format_tm(acquired)
    ds.PerformedProcedureCodeSequence = [sr.coded_entry(codes.TWELVE_LEAD_ECG)]
    ds.CurrentRequestedProcedureEvidenceSequence = sr.evidence_sequence([waveform])
    # SR Document Content
    root = _content_tree(record, waveform, uid, site_id)
    sr.apply_root(ds, root)
    sr.declare_local_scheme(ds, root)
    return ds
