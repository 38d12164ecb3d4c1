"""What every object this project writes shares: Part 10 encoding, file meta and DICOM date/time strings.

Dates and times come from the sources (never the wall clock), so a converted object is reproducible.
"""

from __future__ import annotations

import io
import struct
from copy import deepcopy
from datetime import datetime
from typing import Any

from pydicom import __version_info__
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from cohort.dicom.conformance import decode_in_place

__all__ = ["encode_part10", "file_meta_for", "format_da", "format_dt", "format_tm", "restore_as_read", "undecoded"]

_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_SHORT_HEADER = struct.Struct("<HH2sH")  # explicit VR: tag, VR, 16-bit length
_LONG_HEADER = struct.Struct("<HH2s2xL")  # explicit VR with a 32-bit length (OB, OW, SQ, UN, UT, ...)
_IMPLICIT_HEADER = struct.Struct("<HHL")
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


def undecoded(ds: Dataset) -> dict[BaseTag, RawDataElement]:
    """The top-level elements of a data set just read that pydicom has not decoded yet, by tag."""
    out: dict[BaseTag, RawDataElement] = {}
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            out[tag] = elem
    return out


def restore_as_read(ds: Dataset, as_read: dict[BaseTag, RawDataElement], rewritten: set[BaseTag]) -> None:
    """Put back the undecoded form of each element that was only read since ``as_read`` was taken,
    except ``rewritten`` (``cohort.dicom.conformance.decode_all``: pydicom writes those other than they
    came), which are decoded in place with everything inside them.

    Call it after checks that read values and before any change. An element kept undecoded is written
    back as the bytes it came with (``encode_part10``), which are the bytes pydicom would write for it
    decoded. Private elements stay as they are (pydicom decodes them when they are set).
    """
    for tag, raw in as_read.items():
        if tag in rewritten or tag not in ds or tag.is_private or raw.value is None:
            continue
        if not isinstance(ds.get_item(tag, keep_deferred=True), RawDataElement):
            ds[tag] = raw
    decode_in_place(ds, {tag for tag in rewritten if tag in ds})


def _takes_data_sets(in_meta: Any, in_ds: Any) -> bool:
    """dcmwrite's rule for the file meta's SOP class or instance: it takes the data set's when the meta
    lacks one or the data set has a different one."""
    return in_meta is None or bool(in_ds and in_ds != in_meta)


def _synced_meta(meta: FileMetaDataset, ds_class: Any, ds_instance: Any) -> FileMetaDataset:
    """dcmwrite's copy of the file meta, with the SOP class and instance taken from the data set."""
    copy = deepcopy(meta)
    for keyword, in_ds in (("MediaStorageSOPClassUID", ds_class), ("MediaStorageSOPInstanceUID", ds_instance)):
        if _takes_data_sets(copy.get(keyword), in_ds):
            setattr(copy, keyword, in_ds)
    return copy


_GROUP_LENGTH, _VERSION, _SOP_CLASS, _SOP_INSTANCE = 0x00020000, 0x00020001, 0x00020002, 0x00020003
_TRANSFER_SYNTAX, _IMPLEMENTATION_UID, _IMPLEMENTATION_NAME = 0x00020010, 0x00020012, 0x00020013
_TEXT_PADDING = {"UI": b"\x00", "SH": b" ", "AE": b" "}


def _file_meta_bytes(meta: FileMetaDataset, ds_class: Any, ds_instance: Any) -> bytes | None:
    """The file meta group exactly as ``write_file_meta_info(enforce_standard=True)`` writes dcmwrite's
    copy, for the usual elements (text UIDs and names, OB version, UL lengths); None for anything else,
    which pydicom then writes."""
    values: dict[int, tuple[str, object]] = {}
    for tag in meta.keys():
        elem = meta.get_item(tag)
        if isinstance(elem, RawDataElement) or elem.VR not in ("UI", "SH", "AE", "OB", "UL"):
            return None
        values[int(tag)] = (elem.VR, elem.value)
    for number, in_ds in ((_SOP_CLASS, ds_class), (_SOP_INSTANCE, ds_instance)):
        if _takes_data_sets(values[number][1] if number in values else None, in_ds):
            values[number] = ("UI", in_ds)
    # What validate_file_meta adds to a meta group that lacks it.
    if not values.get(_VERSION, ("OB", None))[1]:
        values[_VERSION] = ("OB", b"\x00\x01")
    if not values.get(_IMPLEMENTATION_UID, ("UI", None))[1]:
        values[_IMPLEMENTATION_UID] = ("UI", PYDICOM_IMPLEMENTATION_UID)
    if _IMPLEMENTATION_NAME not in values:
        values[_IMPLEMENTATION_NAME] = ("SH", f"PYDICOM {'.'.join(__version_info__)}")
    body = bytearray()
    for number in sorted(values):
        if number == _GROUP_LENGTH:
            continue
        vr, value = values[number]
        group, element = number >> 16, number & 0xFFFF
        if vr == "OB" and isinstance(value, bytes):
            data = value + b"\x00" * (len(value) % 2)
            body += _LONG_HEADER.pack(group, element, b"OB", len(data)) + data
            continue
        if vr == "UL" and isinstance(value, int) and not isinstance(value, bool):
            body += _SHORT_HEADER.pack(group, element, b"UL", 4) + struct.pack("<L", value)
            continue
        if vr not in _TEXT_PADDING or not isinstance(value, str) or not value or not value.isascii() \
                or "\\" in value:
            return None  # empty required values, text beyond ASCII, several values: pydicom's business
        data = value.encode("ascii")
        data += _TEXT_PADDING[vr] * (len(data) % 2)
        body += _SHORT_HEADER.pack(group, element, vr.encode("ascii"), len(data)) + data
    return _SHORT_HEADER.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + bytes(body)


def encode_part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file: the bytes ``ds.save_as(f, enforce_file_format=True)`` writes.

    Elements still undecoded since they were read (pydicom's raw elements) are copied byte for byte
    with a header built here, instead of passing each through pydicom's general element writer; that
    is most of a pass-through image (a CT slice keeps all but its patient module). Every other case
    (a data set built in memory, a change of transfer syntax or character set, deflate, big endian,
    an element that needs pydicom's special handling) is written by pydicom itself. The two paths
    give the same bytes: ``tests/test_part10_encoding.py`` compares them object by object.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    fast = (syntax is not None and not syntax.is_private and syntax.is_transfer_syntax
            and syntax.is_little_endian and not syntax.is_deflated
            and ds.original_encoding == (syntax.is_implicit_VR, True)
            and ds.original_character_set == ds._character_set
            and not any(tag.group in (0x0000, 0x0002) for tag in ds.keys())
            and len(getattr(ds, "preamble", None) or b"\x00" * 128) == 128)
    if not fast:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    assert meta is not None and syntax is not None
    # What dcmwrite does before the data set: its own copy of the file meta, the SOP identity there
    # taken from the data set, Pixel Data's length form from the transfer syntax.
    ds_class, ds_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")  # decoded in place, as dcmwrite does
    meta_bytes = _file_meta_bytes(meta, ds_class, ds_instance)
    pixels = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if pixels is not None and not (isinstance(pixels, RawDataElement) and not syntax.is_compressed
                                   and pixels.length != _UNDEFINED_LENGTH):
        ds[_PIXEL_DATA].is_undefined_length = syntax.is_compressed  # as dcmwrite does
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    fp.write(getattr(ds, "preamble", None) or b"\x00" * 128)
    fp.write(b"DICM")
    if meta_bytes is not None:
        fp.write(meta_bytes)
    else:
        write_file_meta_info(fp, _synced_meta(meta, ds_class, ds_instance), enforce_standard=True)
    implicit = syntax.is_implicit_VR
    fp.is_implicit_VR = implicit
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    write = fp.write
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED_LENGTH:
            value = elem.value
            if implicit:
                write(_IMPLICIT_HEADER.pack(tag >> 16, tag & 0xFFFF, len(value)))
                write(value)
                continue
            vr = elem.VR
            if vr in _LONG_VRS:
                write(_LONG_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value)))
                write(value)
                continue
            if vr is not None and len(vr) == 2 and len(value) <= 0xFFFF:
                write(_SHORT_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value)))
                write(value)
                continue
        write_data_element(fp, elem, encodings)
    return fp.getvalue()


def file_meta_for(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """Part 10 file meta for an object written in Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def format_da(dt: datetime) -> str:
    """DICOM DA of ``dt``'s clock date (any time zone is ignored: sources give local time)."""
    return dt.strftime("%Y%m%d")


def format_tm(dt: datetime) -> str:
    """DICOM TM, with microseconds only when there are any."""
    return dt.strftime("%H%M%S") + (f".{dt.microsecond:06d}" if dt.microsecond else "")


def format_dt(dt: datetime) -> str:
    """DICOM DT without offset, consistent with ``format_da`` and ``format_tm``."""
    return format_da(dt) + format_tm(dt)
