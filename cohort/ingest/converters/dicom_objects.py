"""DICOM storage objects from a PACS export (CT, MR, SEG, SR, ...): pseudonymise and keep the rest.

Every UID and the pixel data stay as they are, so references between exported objects keep
working. 12-lead and general ECG waveforms are left to the ECG converter.

Files without the Part 10 preamble: older exports and some PACS write the bare data set (no
128-byte preamble, no "DICM", sometimes no file meta). These are accepted when the file starts
with a little-endian element of group 0002 or 0008 - the first group of every storage object -
and pydicom reads it; arbitrary bytes are not, because pydicom's ``force=True`` reads almost any
file as *something*.

Normalised, because the store (not the exporting PACS) writes the file or validity needs it: a
fresh file meta group (same transfer syntax), a zeroed preamble (it may carry anything, e.g. a TIFF
header), no group 0002 elements inside the data set, and identifying attributes that
``apply_patient`` strips kept present but empty (type 2 in some IODs).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path
from typing import ClassVar

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from cohort.dicom.conformance import (
    PIXEL_DATA_KEYWORDS,
    decode_all,
    find_truncation,
    is_image_sop_class,
    missing_attributes,
    sop_class_name,
)
from cohort.dicom.part10 import restore_as_read, undecoded
from cohort.dicom.patient import IDENTIFYING_ATTRIBUTES, apply_patient
from cohort.dicom.sop_classes import RESTING_ECG_SOP_CLASSES
from cohort.errors import InputError
from cohort.ingest.base import (
    STAGE_IMAGES,
    ConversionResult,
    ConversionWarning,
    Converter,
    IngestContext,
    InputHead,
)
from cohort.siteconfig import SiteConfig, Strictness

__all__ = ["DicomObjectConverter", "REQUIRED_IDENTIFIERS", "check_conformance", "read_dicom"]

REQUIRED_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "SOPClassUID", "Modality")
_TAGS = {"PatientID": "(0010,0020)", "StudyInstanceUID": "(0020,000D)", "SeriesInstanceUID": "(0020,000E)",
         "SOPInstanceUID": "(0008,0018)", "SOPClassUID": "(0008,0016)", "Modality": "(0008,0060)"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ALL_VRS = _LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
                        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}


def _elements(data: bytes, offset: int, explicit: bool) -> list[tuple[int, int, bytes]]:
    """(group, element, value) of the leading elements of ``data`` while they parse cleanly."""
    out = []
    while offset + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, offset)
        if explicit:
            vr = data[offset + 4:offset + 6]
            if vr not in _ALL_VRS:
                break
            if vr in _LONG_VRS:
                if offset + 12 > len(data):
                    break
                (length,) = struct.unpack_from("<I", data, offset + 8)
                start = offset + 12
            else:
                (length,) = struct.unpack_from("<H", data, offset + 6)
                start = offset + 8
        else:
            (length,) = struct.unpack_from("<I", data, offset + 4)
            start = offset + 8
        if length == 0xFFFFFFFF or start + length > len(data):
            break
        out.append((group, elem, data[start:start + length]))
        offset = start + length
    return out


def sop_class_in_head(data: bytes) -> tuple[bool, str | None]:
    """(looks like DICOM, SOP Class UID if found) from the first bytes of a file."""
    if data[128:132] == b"DICM":
        meta = _elements(data, 132, explicit=True)
        uid = next((v for g, e, v in meta if (g, e) == (0x0002, 0x0002)), None)
        return True, uid.rstrip(b"\x00 ").decode("ascii", "replace") if uid is not None else None
    if len(data) < 8 or struct.unpack_from("<H", data, 0)[0] not in (0x0002, 0x0008):
        return False, None
    explicit = data[4:6] in _ALL_VRS
    elems = _elements(data, 0, explicit)
    # A real data set yields several well-formed elements in ascending tag order.
    tags = [(g, e) for g, e, _ in elems]
    if len(tags) < 2 or tags != sorted(tags):
        return False, None
    uid = next((v for g, e, v in elems if (g, e) in ((0x0002, 0x0002), (0x0008, 0x0016))), None)
    return True, uid.rstrip(b"\x00 ").decode("ascii", "replace") if uid is not None else None


_EXPORT_AGAIN = "export it again from the PACS (the copy was cut off, e.g. by a full disk or an aborted transfer)"


def read_dicom(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file (Part 10 or bare data set, optionally gzipped); InputError if unreadable.

    A file that ends before the elements it declares is refused as truncated, although pydicom
    would read what is there without complaint.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"gzip-compressed file is corrupt ({exc}); export it again", path=str(path)) from None
    part10 = raw[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=not part10, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        cut = find_truncation(raw)
        if cut is not None:
            raise InputError(f"the file is truncated: {cut.describe()}; {_EXPORT_AGAIN}", path=str(path)) from None
        raise InputError(f"not a readable DICOM file ({type(exc).__name__}: {exc}); export it again from "
                         "the PACS as DICOM Part 10", path=str(path)) from None
    cut = find_truncation(raw)
    if cut is not None:
        field = keyword_for_tag(cut.tag) if cut.tag is not None else None
        raise InputError(f"the file is truncated: {cut.describe()}; {_EXPORT_AGAIN}", path=str(path),
                         field=field or None)
    return ds


def _check_identifiers(ds: Dataset, path: Path) -> None:
    for keyword in REQUIRED_IDENTIFIERS:
        if not str(ds.get(keyword, "") or "").strip():
            raise InputError(
                f"required attribute {keyword} {_TAGS[keyword]} is missing or empty; the object cannot be "
                "stored or referenced without it - export it again from the source system (PACS) with "
                "all identifiers", path=str(path), field=keyword)


def _check_pixel_data(ds: Dataset, path: Path) -> None:
    """An image must carry its pixels, and native (uncompressed) ones completely."""
    if not any(k in ds for k in PIXEL_DATA_KEYWORDS):
        if is_image_sop_class(str(ds.SOPClassUID)):
            raise InputError(f"{sop_class_name(str(ds.SOPClassUID))} is an image SOP class but the file has no "
                             "Pixel Data (7FE0,0010): it is truncated (it ends before its pixels) or was exported "
                             f"without them; {_EXPORT_AGAIN}", path=str(path), field="PixelData")
        return
    if "PixelData" not in ds:
        return
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and UID(str(syntax)).is_compressed:
        return
    try:
        expected = int(get_expected_length(ds, "bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # incomplete image attributes: not this check's business
    actual = len(ds.PixelData)
    if actual < expected:
        raise InputError(f"Pixel Data (7FE0,0010) holds {actual} of the {expected} bytes that Rows, Columns, "
                         "Bits Allocated and Number of Frames call for: the file is truncated; "
                         f"{_EXPORT_AGAIN}", path=str(path), field="PixelData")


def check_conformance(ds: Dataset, path: Path, strictness: Strictness) -> list[ConversionWarning]:
    """Type 1 / type 2 attributes the SOP class requires: warnings, or InputError per ``strictness``.

    Decode every element first (``decode_all`` or ``decode_in_place``), so that pydicom's reading
    warnings (invalid values) are raised while the pipeline records them for this input.
    """
    name = sop_class_name(str(ds.SOPClassUID))
    quarantine, warn = [], []
    for miss in missing_attributes(ds):
        level = strictness.missing_type1 if miss.type == "1" else strictness.missing_type2
        if miss.needed or level == "quarantine":
            quarantine.append(miss)
        elif level == "warn":
            warn.append(miss)
    if quarantine:
        needed = [m for m in quarantine if m.needed]
        why = ("the index or the export needs " + ", ".join(m.keyword for m in needed)) if needed else \
            "site.yaml strictness.missing_type1 / missing_type2 is 'quarantine'"
        raise InputError("; ".join(m.describe(name) for m in quarantine) + f" ({why}); export the object "
                         "again from the source system with the attribute, or correct it there",
                         path=str(path), field=quarantine[0].keyword)
    sop_uid = str(ds.SOPInstanceUID)
    return [ConversionWarning(f"{m.describe(name)} (site.yaml strictness.missing_type{m.type}: warn)", sop_uid)
            for m in warn]


def rebuilt_file_meta(ds: Dataset) -> FileMetaDataset:
    """A fresh file meta group: the store, not the exporting PACS, writes the file."""
    old = getattr(ds, "file_meta", None)
    syntax = old.get("TransferSyntaxUID") if old is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        if little is False:
            raise InputError("big-endian data set without file meta is not supported; convert it to "
                             "little endian (e.g. dcmconv +te) and export again", field="TransferSyntaxUID")
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(str(syntax))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


class DicomObjectConverter(Converter):
    """Any DICOM storage object except ECG waveforms: new patient module, everything else kept."""

    name: ClassVar[str] = "dicom"
    stage: ClassVar[int] = STAGE_IMAGES
    description: ClassVar[str] = "DICOM storage objects (CT, SEG, SR, ...) from a PACS export"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        is_dicom, sop_class = sop_class_in_head(head.data)
        return is_dicom and sop_class not in RESTING_ECG_SOP_CLASSES

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        ds = read_dicom(path)
        as_read = undecoded(ds)
        rewritten = decode_all(ds)  # raises pydicom's value warnings now, while they are this input's
        if str(ds.get("SOPClassUID", "")) == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
            raise InputError("this is a DICOMDIR (media index), not a storage object; the objects it lists "
                             "are converted from their own files - remove it from the export folder",
                             path=str(path), field="SOPClassUID")
        _check_identifiers(ds, path)
        _check_pixel_data(ds, path)
        found = check_conformance(ds, path, ctx.site.strictness)
        if str(ds.SOPClassUID) in RESTING_ECG_SOP_CLASSES:
            raise InputError("ECG waveform objects are converted by the DICOM ECG converter, which did not "
                             "recognise this file; check that it has a valid file meta group",
                             path=str(path), field="SOPClassUID")
        patient = ctx.patients.resolve("pacs_id", str(ds.PatientID), path=path, field="PatientID")
        present = [k for k in IDENTIFYING_ATTRIBUTES if k in ds and ds[k].VR != "SQ"]
        restore_as_read(ds, as_read, rewritten)  # the checks only read: what is not changed below keeps its bytes
        try:
            ds.file_meta = rebuilt_file_meta(ds)
        except InputError as exc:
            raise InputError(str(exc), path=str(path), field=exc.field) from None
        # Group 0002 belongs in the file meta only; some writers leak it into the data set.
        for tag in [t for t in ds.keys() if t.group == 0x0002]:
            del ds[tag]
        ds.preamble = None  # the preamble may carry anything (e.g. a TIFF header); write zeros
        apply_patient(ds, patient)
        # apply_patient deletes these; some IODs make them type 2 (e.g. Operators' Name in RT Series),
        # so keep them present with an empty value, which carries no identity either.
        for keyword in present:
            if keyword not in ds:
                setattr(ds, keyword, "")
        return ConversionResult(datasets=[ds], warnings=found)
