"""Resting ECGs in the four source formats: DICOM waveform, HL7 aECG, GE MUSE XML, SCP-ECG.

Each becomes a 12-Lead ECG Waveform Storage object plus, when the device measured or interpreted
anything, a TID 3700 ECG Report that references it. DICOM ECG waveforms from a PACS are kept as they
are (only the patient module is replaced), so their UIDs and any references to them survive.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from pydicom.dataset import Dataset

from cohort.dicom.conformance import decode_in_place
from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.sop_classes import RESTING_ECG_SOP_CLASSES
from cohort.ecg.dicom_report import build_ecg_report
from cohort.ecg.dicom_waveform import build_ecg_waveform
from cohort.ecg.readers.aecg import read_aecg
from cohort.ecg.readers.dicom_ecg import record_from_dataset
from cohort.ecg.readers.muse import read_muse
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ecg.record import EcgRecord
from cohort.errors import InputError
from cohort.ingest.base import (
    STAGE_WAVEFORMS,
    ConversionResult,
    ConversionWarning,
    Converter,
    IngestContext,
    InputHead,
)
from cohort.ingest.converters.dicom_objects import (  # bare data sets too
    check_conformance,
    read_dicom,
    rebuilt_file_meta,
    sop_class_in_head,
)
from cohort.siteconfig import IdKind, SiteConfig

__all__ = ["AecgConverter", "DicomEcgConverter", "MuseConverter", "ScpEcgConverter"]


def _datasets(record: EcgRecord, waveform: Dataset, patient: PatientRef, ctx: IngestContext) -> ConversionResult:
    report = build_ecg_report(record, waveform, patient, ctx.uid, ctx.site.site_id)
    return ConversionResult(datasets=[waveform] + ([report] if report is not None else []))


def _with_path(exc: InputError, path: Path) -> InputError:
    """Builders raise InputError without the file; the quarantine reason must name it."""
    if exc.path:
        return exc
    return InputError(str(exc).split(": ", 1)[-1] if exc.field else str(exc), path=str(path), field=exc.field)


class _SourceEcgConverter(Converter):
    """A non-DICOM ECG export: read, check, resolve the patient, build waveform and report."""

    reader: ClassVar[Callable[[Path], EcgRecord]]
    id_field: ClassVar[str]  # where the format keeps the patient identifier, for error messages

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        record = type(self).reader(path)
        record.check(str(path))
        id_kind: IdKind = ctx.site.ecg.id_kind
        source_id, field = self._patient_id(record, path, ctx)
        patient = ctx.patients.resolve(id_kind, source_id, path=path, field=field)
        try:
            waveform = build_ecg_waveform(record, patient, ctx.uid)
            result = _datasets(record, waveform, patient, ctx)
        except InputError as exc:
            raise _with_path(exc, path) from None
        result.warnings.extend(record_warnings(record, waveform))
        return result

    def _patient_id(self, record: EcgRecord, path: Path, ctx: IngestContext) -> tuple[str, str]:
        """The file's patient identifier, else the one ``ecg.patient_id_from_path`` finds in its path."""
        if record.patient_source_id:
            return record.patient_source_id, self.id_field
        rule = ctx.site.ecg.patient_id_from_path
        try:
            relative = path.resolve().relative_to(ctx.raw_dir.resolve()).as_posix()
        except ValueError:
            relative = path.as_posix()
        if rule is None:
            raise InputError("no patient identifier in the file; export the ECG with the patient id filled in, or "
                             "set ecg.patient_id_from_path in site.yaml to a regular expression whose group 'id' "
                             f"finds it in the file's path (here {relative!r})", path=str(path), field=self.id_field)
        found = re.search(rule, relative)
        if found is None or not found.group("id"):
            raise InputError(f"no patient identifier in the file, and ecg.patient_id_from_path {rule!r} of site.yaml "
                             f"does not match its path {relative!r}; fix the expression or the folder layout",
                             path=str(path), field="ecg.patient_id_from_path")
        return found.group("id"), "ecg.patient_id_from_path"


def record_warnings(record: EcgRecord, waveform: Dataset) -> list[ConversionWarning]:
    """What the ingest report must say about a converted ECG: the reader's assumptions and flat leads."""
    sop_uid = str(waveform.SOPInstanceUID)
    out = [ConversionWarning(note, sop_uid) for note in record.notes]
    flat = record.flat_leads()
    if flat:
        out.append(ConversionWarning(f"leads {', '.join(flat)} are all zero (electrode not connected or lead not "
                                     "recorded); stored with Channel Status DISCONNECTED", sop_uid))
    return out


class AecgConverter(_SourceEcgConverter):
    """HL7 aECG XML (``AnnotatedECG`` in namespace urn:hl7-org:v3)."""

    name: ClassVar[str] = "hl7-aecg"
    stage: ClassVar[int] = STAGE_WAVEFORMS
    description: ClassVar[str] = "HL7 aECG annotated ECG (XML)"
    reader: ClassVar[Callable[[Path], EcgRecord]] = staticmethod(read_aecg)
    id_field = "trialSubject/id/@extension"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        return b"<AnnotatedECG" in head.data and b"urn:hl7-org:v3" in head.data


class MuseConverter(_SourceEcgConverter):
    """GE MUSE ``RestingECG`` XML."""

    name: ClassVar[str] = "ge-muse"
    stage: ClassVar[int] = STAGE_WAVEFORMS
    description: ClassVar[str] = "GE MUSE resting ECG (XML)"
    reader: ClassVar[Callable[[Path], EcgRecord]] = staticmethod(read_muse)
    id_field = "PatientDemographics/PatientID"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        start = head.data.lstrip(b"\xef\xbb\xbf \t\r\n")
        return start.startswith(b"<") and b"<RestingECG" in head.data


class ScpEcgConverter(_SourceEcgConverter):
    """SCP-ECG (EN 1064) binary records."""

    name: ClassVar[str] = "scp-ecg"
    stage: ClassVar[int] = STAGE_WAVEFORMS
    description: ClassVar[str] = "SCP-ECG binary (EN 1064)"
    reader: ClassVar[Callable[[Path], EcgRecord]] = staticmethod(read_scpecg)
    id_field = "section 1 tag 2"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        data = head.data
        if len(data) < 22:
            return False
        _crc, record_len, _s0_crc, s0_id, s0_len = struct.unpack_from("<HIHHI", data)
        # Section 0 comes first; its body is a table of 10-byte pointers. Most writers also put
        # "SCPECG" in its reserved bytes; older ones do not, so the record length must fit instead.
        if s0_id != 0 or s0_len < 16 + 10 or (s0_len - 16) % 10 or record_len < 6 + s0_len:
            return False
        if data[16:22] == b"SCPECG":
            return True
        try:
            return not head.gzipped and head.path.stat().st_size == record_len
        except OSError:
            return False


class DicomEcgConverter(Converter):
    """12-lead / general ECG waveform objects from a PACS, stored as they are with a new patient module."""

    name: ClassVar[str] = "dicom-ecg"
    stage: ClassVar[int] = STAGE_WAVEFORMS
    description: ClassVar[str] = "DICOM ECG waveform objects (12-lead, general ECG)"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        is_dicom, sop_class = sop_class_in_head(head.data)
        return is_dicom and sop_class in RESTING_ECG_SOP_CLASSES

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        ds = read_dicom(path)
        record = record_from_dataset(ds, path)  # validates SOP class, PatientID, leads, annotations
        record.check(str(path))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not str(ds.get(keyword, "") or "").strip():
                raise InputError(f"{keyword} is missing; the waveform cannot be stored or referenced without "
                                 "it - export it again from the PACS", path=str(path), field=keyword)
        decode_in_place(ds)  # its value warnings now, while they are this input's; the waveform is rebuilt
        found = check_conformance(ds, path, ctx.site.strictness)
        # A DICOM object always carries the PACS identity, whatever the ECG system's own exports use.
        patient = ctx.patients.resolve("pacs_id", record.patient_source_id, path=path, field="PatientID")
        try:
            ds.file_meta = rebuilt_file_meta(ds)
        except InputError as exc:
            raise _with_path(exc, path) from None
        for tag in [t for t in ds.keys() if t.group == 0x0002]:
            del ds[tag]  # group 0002 belongs in the file meta only
        ds.preamble = None
        apply_patient(ds, patient)
        try:
            result = _datasets(record, ds, patient, ctx)
        except InputError as exc:
            raise _with_path(exc, path) from None
        result.warnings.extend(found)
        return result
