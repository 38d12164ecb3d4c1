"""Free-text clinical reports (plain text with an id and a date header) -> Enhanced SR.

Input: ``<id_label>: <id>`` and ``<date_label>: <date>`` lines (site.yaml ``free_text``), an empty
line, then the report text, in the configured encoding. Output: one Enhanced SR whose root container
is the project-local "Free-text clinical report" (TXT001, 99FEDCOH) holding one TEXT item, Finding
(121071 DCM), with the report body. The date becomes ContentDate (and SeriesDate).

Study: all free-text reports of one patient share one study, UID ``ctx.patient_uid(patient_id,
"free-text-study")``, whose StudyDate is left empty (type 2) because its reports have different
dates; each report is its own series (``ctx.uid("free-text-sr-series")``).
"""

from __future__ import annotations

import codecs
import gzip
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, EnhancedSRStorage, ExplicitVRLittleEndian

from cohort.dicom import codes
from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.sr_items import apply_root, container, declare_local_scheme, text
from cohort.errors import InputError
from cohort.ingest.base import STAGE_TABLES, ConversionResult, Converter, IngestContext, InputHead
from cohort.siteconfig import FreeTextSource, SiteConfig

__all__ = ["FreeTextConverter", "FreeTextReport", "parse_report"]

SR_SERIES_NUMBER = 950
SR_SERIES_DESCRIPTION = "Free-text clinical report"
STUDY_DESCRIPTION = "Free-text clinical reports"
_HEADER_LINE = re.compile(r"^\s*([^:;\t]+?)\s*:\s*(.*?)\s*$")
_NOT_TEXT = (b"<", b"{", b"[", b"\x1f\x8b", b"DICM")


@dataclass(frozen=True)
class FreeTextReport:
    """A parsed report: the patient identifier, the report date and the body (lines joined by CR LF)."""

    identifier: str
    when: datetime
    body: str


def _codec(cfg: FreeTextSource, path: Path) -> str:
    try:
        return codecs.lookup(cfg.encoding).name
    except LookupError:
        raise InputError(f"unknown encoding {cfg.encoding!r} in site.yaml; set free_text.encoding to e.g. "
                         "utf-8 or cp1252", path=str(path), field="free_text.encoding") from None


def decode_report(raw: bytes, cfg: FreeTextSource, path: Path) -> str:
    """Decode strictly in the configured encoding; InputError naming the setting when the bytes disagree."""
    codec = _codec(cfg, path)
    try:
        decoded = raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as exc:
        raise InputError(f"byte {raw[exc.start:exc.start + 1]!r} at offset {exc.start} is not valid {cfg.encoding}; "
                         "set free_text.encoding in site.yaml to the encoding the report system writes "
                         "(e.g. cp1252 or utf-8)", path=str(path), field="free_text.encoding") from None
    if codec != "utf-8" and not raw.isascii():
        # Single-byte codecs accept any UTF-8 bytes as mojibake ("Ã¼" for "ü"); German text in a
        # single-byte encoding is practically never also valid UTF-8, so this catches the mix-up.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise InputError(f"the file is UTF-8 encoded but free_text.encoding is {cfg.encoding!r}; set "
                             "free_text.encoding: utf-8 in site.yaml or export the reports in "
                             f"{cfg.encoding}", path=str(path), field="free_text.encoding")
    return decoded


def parse_report(content: str, cfg: FreeTextSource, path: Path) -> FreeTextReport:
    """Split header and body and read the id and date lines; InputError names the missing piece."""
    lines = content.lstrip("\ufeff").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
    except StopIteration:
        raise InputError("no empty line after the header; put an empty line between the "
                         f"'{cfg.id_label}:'/'{cfg.date_label}:' lines and the report text",
                         path=str(path), field="header") from None
    headers: dict[str, str] = {}
    for number, line in enumerate(lines[:blank], start=1):
        m = _HEADER_LINE.match(line)
        if m is None:
            raise InputError(f"header line {number} {line!r} is not 'label: value'; the header ends at the "
                             "first empty line", path=str(path), field="header")
        headers.setdefault(m.group(1).casefold(), m.group(2))
    ident = headers.get(cfg.id_label.casefold(), "")
    if not ident:
        raise InputError(f"missing header line '{cfg.id_label}: <{cfg.id_kind}>' (free_text.id_label); found "
                         f"labels: {', '.join(sorted(headers)) or 'none'}", path=str(path), field=cfg.id_label)
    date_text = headers.get(cfg.date_label.casefold(), "")
    if not date_text:
        raise InputError(f"missing header line '{cfg.date_label}: <date>' (free_text.date_label)",
                         path=str(path), field=cfg.date_label)
    try:
        when = datetime.strptime(date_text, cfg.date_format)
    except ValueError:
        example = datetime(2024, 3, 31).strftime(cfg.date_format)
        raise InputError(f"date {date_text!r} does not match free_text.date_format {cfg.date_format!r} "
                         f"(e.g. {example}); fix the date or the format in site.yaml",
                         path=str(path), field=cfg.date_label) from None
    body_lines = [line.rstrip() for line in lines[blank + 1:]]
    while body_lines and not body_lines[0]:
        body_lines.pop(0)
    while body_lines and not body_lines[-1]:
        body_lines.pop()
    if not body_lines:
        raise InputError("no report text after the header", path=str(path), field="body")
    # DICOM text values separate lines with CR LF (PS3.5 6.2).
    return FreeTextReport(ident, when, "\r\n".join(body_lines))


def build_report_sr(report: FreeTextReport, patient: PatientRef, ctx: IngestContext) -> Dataset:
    """The Enhanced SR for one report; every UID and date derives from the input, never the clock."""
    ds = Dataset()
    sop_uid = UID(ctx.uid("free-text-sr"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedSRStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the body keeps its umlauts whatever the source encoding
    ds.SOPClassUID = EnhancedSRStorage
    ds.SOPInstanceUID = sop_uid
    date, time = report.when.strftime("%Y%m%d"), report.when.strftime("%H%M%S")
    # General Study: one study per patient for all free-text reports (see module docstring).
    ds.StudyInstanceUID = ctx.patient_uid(patient.patient_id, "free-text-study")
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = "TEXT"
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientSex = ""
    apply_patient(ds, patient)
    # SR Document Series and General Equipment.
    ds.Modality = "SR"
    ds.SeriesInstanceUID = ctx.uid("free-text-sr-series")
    ds.SeriesNumber = SR_SERIES_NUMBER
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = SR_SERIES_DESCRIPTION
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = "FedCohort"
    # SR Document General.
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = date
    ds.ContentTime = time
    ds.PerformedProcedureCodeSequence = []
    root = container(codes.FREE_TEXT_REPORT, [text(codes.FINDING, report.body)], rel=None)
    apply_root(ds, root)
    declare_local_scheme(ds, root)
    return ds


class FreeTextConverter(Converter):
    """Plain-text clinical report with an id and a date header -> Enhanced SR with one TEXT item."""

    name = "free-text"
    stage = STAGE_TABLES
    description = "Free-text clinical report (text file with id/date header) -> Enhanced SR"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        cfg = site.free_text
        data = head.data.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not data or data.startswith(_NOT_TEXT) or b"\x00" in data:
            return False
        try:
            codec = codecs.lookup(cfg.encoding).name
        except LookupError:
            return False
        # Lenient here: a report in the wrong encoding should reach convert() and get a clear error.
        first = data.decode(codec, errors="replace").splitlines()[0]
        m = _HEADER_LINE.match(first)
        return m is not None and m.group(1).casefold() in (cfg.id_label.casefold(), cfg.date_label.casefold())

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        path = Path(path)
        cfg = ctx.site.free_text
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        report = parse_report(decode_report(raw, cfg, path), cfg, path)
        patient = ctx.patients.resolve(cfg.id_kind, report.identifier, path=path, field=cfg.id_label)
        return ConversionResult(datasets=[build_report_sr(report, patient, ctx)])
