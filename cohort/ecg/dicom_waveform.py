"""Build the 12-Lead ECG Waveform Storage object that every ingested ECG becomes.

One multiplex group holds the twelve leads in ``TWELVE_LEADS`` order as interleaved 16-bit signed
samples; waveform_array() on the result gives back the record's microvolts within half a
quantization step. Dates and UIDs come from the record and the ``uid`` callable only, so the same
input always yields a byte-identical object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import format_number_as_ds

from cohort.dicom.codes import LEAD_CODES_MDC, LEAD_MEANINGS_MDC, MICROVOLT, TWELVE_LEADS
from cohort.dicom.part10 import file_meta_for, format_da, format_dt, format_tm
from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.sop_classes import GENERAL_ECG_STORAGE, TWELVE_LEAD_ECG_STORAGE
from cohort.dicom.sr_items import coded_entry
from cohort.dicom.vr_text import fit_vr
from cohort.ecg.record import EcgRecord
from cohort.errors import InputError

__all__ = [
    "TWELVE_LEAD_MAX_SAMPLES", "build_ecg_waveform", "quantization_step",
]

# The 12-Lead ECG IOD limits Number of Waveform Samples to 16384 (PS3.3 A.34.3.4); longer recordings
# (e.g. a 60 s rhythm strip) become General ECG Waveform Storage, which has the same modules and no
# such limit, so nothing is cut.
TWELVE_LEAD_MAX_SAMPLES = 16384
_INT16_MAX = 32767  # -32768 stays unused so the range is symmetric
# 1 uV per bit is finer than any ECG front end records (MUSE 4.88, SCP-ECG 5, DICOM 1.25-5 uV).
_BASE_STEP_UV = 1.0


def quantization_step(leads: dict[str, np.ndarray], source_step_uv: float | None = None) -> float:
    """Microvolts per bit: 1 uV (or the source's finer step), doubled until the largest amplitude fits in 16 bits.

    A source that counts in less than 1 uV (e.g. 183 nV) keeps its own step, so its integers survive.
    """
    peak = max(float(np.max(np.abs(v))) for v in leads.values()) if leads else 0.0
    step = _BASE_STEP_UV
    if source_step_uv is not None and 0 < source_step_uv < _BASE_STEP_UV:
        step = source_step_uv
    while peak / step > _INT16_MAX:
        step *= 2.0
    return step


def _age_string(years: int) -> str:
    if not 0 <= years <= 999:
        raise InputError(f"patient age {years} years outside 0-999", field="patient_age_years")
    return f"{years:03d}Y"


def _channel(lead: str, step_uv: float, flat: bool) -> Dataset:
    ch = Dataset()
    ch.ChannelLabel = lead
    if flat:
        # Channel Status (type 3): every sample of the source lead is 0, so no electrode signal was recorded.
        ch.ChannelStatus = "DISCONNECTED"
    source = coded_entry(_lead_code(lead))
    ch.ChannelSourceSequence = [source]
    ch.ChannelSensitivity = format_number_as_ds(step_uv) if step_uv < _BASE_STEP_UV else f"{step_uv:g}"
    ch.ChannelSensitivityUnitsSequence = [coded_entry(MICROVOLT)]
    ch.ChannelSensitivityCorrectionFactor = "1"  # the step above is already the true scale
    ch.ChannelBaseline = "0"  # the record's microvolts are baseline-free
    ch.ChannelSampleSkew = "0"  # all leads sampled simultaneously in the canonical record
    ch.WaveformBitsStored = 16
    # Filter settings are not carried by EcgRecord: leaving the optional filter attributes out
    # is truthful, made-up values would mislead readers about the signal's bandwidth.
    return ch


def _lead_code(lead: str) -> Code:
    return Code(LEAD_CODES_MDC[lead], "MDC", LEAD_MEANINGS_MDC[lead])


def _waveform_group(record: EcgRecord) -> Dataset:
    leads = {lead: np.asarray(record.leads[lead], dtype=np.float64) for lead in TWELVE_LEADS}
    if not all(np.all(np.isfinite(v)) for v in leads.values()):
        raise InputError("ECG samples contain NaN or infinite values", field="leads")
    step = quantization_step(leads, record.amplitude_resolution_uv)
    samples = np.stack([leads[lead] for lead in TWELVE_LEADS], axis=1)  # (n, channels): interleaved
    raw = np.clip(np.rint(samples / step), -_INT16_MAX, _INT16_MAX).astype("<i2")

    group = Dataset()
    # No Multiplex Group / Trigger Time Offset: they are 1C on the Synchronization module, absent here.
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(TWELVE_LEADS)
    group.NumberOfWaveformSamples = int(raw.shape[0])
    group.SamplingFrequency = f"{record.sampling_frequency:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    flat = set(record.flat_leads())
    group.ChannelDefinitionSequence = [_channel(lead, step, lead in flat) for lead in TWELVE_LEADS]
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = raw.tobytes()
    return group


def build_ecg_waveform(record: EcgRecord, patient: PatientRef, uid: Callable[[str], str]) -> Dataset:
    """The 12-Lead ECG Waveform Storage object for ``record`` (with Part 10 file meta).

    ``uid(role)`` mints the object's UIDs (the ingest context's ``uid``: the same input, the same UIDs).

    Raises InputError when the record has no usable twelve leads (see ``EcgRecord.check``).
    """
    missing = [lead for lead in TWELVE_LEADS if lead not in record.leads]
    if missing:
        raise InputError(f"ECG lacks leads {missing}; derive limb leads before building DICOM", field="leads")
    acquired = record.acquired
    sop_uid = uid("ecg-waveform")
    n_samples = len(record.leads[TWELVE_LEADS[0]])
    sop_class = TWELVE_LEAD_ECG_STORAGE if n_samples <= TWELVE_LEAD_MAX_SAMPLES else GENERAL_ECG_STORAGE

    ds = Dataset()
    ds.file_meta = file_meta_for(sop_class, sop_uid)
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"  # manufacturer strings may hold non-ASCII characters
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = format_da(acquired)  # no wall clock: the object must be reproducible
    ds.InstanceCreationTime = format_tm(acquired)
    # Patient (pseudonymous) and Patient Study
    apply_patient(ds, patient)
    ds.PatientSex = record.patient_sex if record.patient_sex in ("M", "F") else ""
    if record.patient_age_years is not None:
        ds.PatientAge = _age_string(record.patient_age_years)
    # General Study
    ds.StudyInstanceUID = uid("ecg-study")
    ds.StudyDate = format_da(acquired)
    ds.StudyTime = format_tm(acquired)
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = "12-lead ECG"
    # General Series
    ds.Modality = "ECG"
    ds.SeriesInstanceUID = uid("ecg-series")
    ds.SeriesNumber = 1
    ds.SeriesDate = format_da(acquired)
    ds.SeriesTime = format_tm(acquired)
    ds.SeriesDescription = "Resting 12-lead ECG"
    # General Equipment
    ds.Manufacturer = fit_vr(record.manufacturer, "LO")
    if fit_vr(record.device_model, "LO"):
        ds.ManufacturerModelName = fit_vr(record.device_model, "LO")
    # Waveform Identification
    ds.InstanceNumber = 1
    ds.ContentDate = format_da(acquired)
    ds.ContentTime = format_tm(acquired)
    ds.AcquisitionDateTime = format_dt(acquired)
    # Acquisition Context: type 2; TID 3401's items (electrode placement etc.) are unknown here.
    ds.AcquisitionContextSequence = []
    # Waveform
    ds.WaveformSequence = [_waveform_group(record)]
    return ds
