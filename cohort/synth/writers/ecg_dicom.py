"""A resting ECG as the PACS exports it: a DICOM 12-Lead ECG Waveform Storage object.

Like the carts that store to a PACS, it carries the PACS patient identity, MDC lead codes, the cart's
global measurements as coded numeric annotations and its interpretation as unformatted text
annotations (WaveformAnnotationSequence).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian

from cohort.dicom import codes
from cohort.dicom.sop_classes import TWELVE_LEAD_ECG_STORAGE
from cohort.dicom.uids import derived_uid
from cohort.ecg.dicom_report import MEASUREMENT_CODES
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize

SENSITIVITY_UV = 2.5  # microvolts per count
MANUFACTURER = "SCHILLER"
MODEL = "CARDIOVIT AT-102 G2"

# The device annotates the same measurements, with the same codes, that the ECG report carries.
ANNOTATION_CODES = MEASUREMENT_CODES


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _channel(lead: str) -> Dataset:
    ch = Dataset()
    ch.ChannelSourceSequence = Sequence([_code_item(
        Code(codes.LEAD_CODES_MDC[lead], "MDC", codes.LEAD_MEANINGS_MDC[lead]))])
    ch.ChannelSensitivity = f"{SENSITIVITY_UV}"
    ch.ChannelSensitivityUnitsSequence = Sequence([_code_item(codes.MICROVOLT)])
    ch.ChannelSensitivityCorrectionFactor = "1"
    ch.ChannelBaseline = "0"
    ch.ChannelSampleSkew = "0"
    ch.WaveformBitsStored = 16
    ch.FilterLowFrequency = "0.05"
    ch.FilterHighFrequency = "150"
    ch.NotchFilterFrequency = "50"
    return ch


def _annotations(export: EcgExport) -> Sequence:
    items = []
    for text in export.statements:
        a = Dataset()
        a.UnformattedTextValue = text
        a.ReferencedWaveformChannels = [1, 0]  # multiplex group 1, all channels
        a.AnnotationGroupNumber = 0
        items.append(a)
    for key, (concept, unit) in ANNOTATION_CODES.items():
        if key not in export.measurements:
            continue
        a = Dataset()
        a.ConceptNameCodeSequence = Sequence([_code_item(concept)])
        a.MeasurementUnitsCodeSequence = Sequence([_code_item(unit)])
        a.NumericValue = f"{export.measurements[key]:g}"
        a.ReferencedWaveformChannels = [1, 0]
        a.AnnotationGroupNumber = 1
        items.append(a)
    return Sequence(items)


def build_dataset(export: EcgExport, site_id: str) -> Dataset:
    """The cart's 12-lead ECG waveform object (deterministic UIDs from site, patient and time)."""
    stamp = export.acquired.strftime("%Y%m%d%H%M%S")
    sop_uid = derived_uid(site_id, export.patient_id, stamp, "ecg-sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(TWELVE_LEAD_ECG_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = TWELVE_LEAD_ECG_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = export.acquired.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = export.acquired.strftime("%H%M%S")
    ds.AcquisitionDateTime = stamp
    ds.AccessionNumber = ""
    ds.Modality = "ECG"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL
    ds.SoftwareVersions = "2.4.1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Ruhe-EKG"
    ds.PatientName = f"{export.family_name}^{export.given_name}"
    ds.PatientID = export.patient_id
    ds.PatientBirthDate = export.birth_date.strftime("%Y%m%d")
    ds.PatientSex = export.sex
    ds.PatientAge = f"{export.age_years:03d}Y"
    ds.StudyInstanceUID = derived_uid(site_id, export.patient_id, stamp, "ecg-study")
    ds.SeriesInstanceUID = derived_uid(site_id, export.patient_id, stamp, "ecg-series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AcquisitionContextSequence = Sequence([])
    samples = np.stack([quantize(export.leads[lead], SENSITIVITY_UV) for lead in codes.TWELVE_LEADS], axis=1)
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(codes.TWELVE_LEADS)
    group.NumberOfWaveformSamples = int(samples.shape[0])
    group.SamplingFrequency = f"{export.fs}"
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = Sequence([_channel(lead) for lead in codes.TWELVE_LEADS])
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = samples.astype("<i2").tobytes()  # interleaved: sample 1 of every channel, ...
    ds.WaveformSequence = Sequence([group])
    ds.WaveformAnnotationSequence = _annotations(export)
    return ds


def write_dicom_ecg(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write ``raw_dir/ecg/pacs/<n>.dcm``; DICOM ECGs always carry the PACS patient id."""
    export = prepare_export(patient, profile, language="en")
    if export.patient_id != patient.pacs_id:
        export = replace(export, patient_id=patient.pacs_id)  # a PACS object knows no case numbers
    ds = build_dataset(export, profile.site_id)
    out = Path(raw_dir) / "ecg" / "pacs" / f"ECG{patient.index + 1:06d}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return [out]
