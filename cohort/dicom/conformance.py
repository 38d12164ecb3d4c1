"""Attributes a DICOM object's SOP class requires, checked when the object is ingested.

The tables are the standard's IOD and module tables as highdicom ships them (SOP class -> IOD ->
modules with their usage -> attributes with their type and the sequence path they sit under).
Checked are the unconditional types only: type 1 (present and not empty) and type 2 (present, may
be empty); 1C / 2C depend on conditions the tables do not hold, and ``cohort validate`` (dciodvfy)
checks those on the store. Modules checked: every mandatory one of the IOD, and a user-optional or
conditional one when the object carries an attribute that only that module defines (the module is
then present and must be complete). Attributes inside a sequence are checked in every item of it;
in SR content items only what every item has, and in functional group sequences nothing directly
(the tables merge the value-type macros and all functional group macros there, conditions lost).

What a missing attribute leads to is the site's ``strictness`` setting; attributes the index or the
export read (``NEEDED_ATTRIBUTES``) are not a matter of strictness: without them the object is of no
use here, so it is quarantined whatever the setting.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass
from functools import lru_cache

from highdicom._standard_utils import (  # the standard's tables; highdicom has no public accessor
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

__all__ = ["MissingAttribute", "NEEDED_ATTRIBUTES", "PIXEL_DATA_KEYWORDS", "Truncation", "decode_all", "decode_in_place",
           "find_truncation", "is_image_sop_class", "missing_attributes", "sop_class_name"]

# Read by the index (identity, references, per-kind fields) or the export (CT volumes, SEG segments,
# ECG waveforms, SR trees): an object without one of them cannot be counted or exported correctly.
NEEDED_ATTRIBUTES = frozenset({
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SegmentSequence", "SegmentNumber", "SegmentLabel", "SegmentedPropertyCategoryCodeSequence",
    "SegmentedPropertyTypeCodeSequence", "SegmentAlgorithmType",
    "ValueType", "ConceptNameCodeSequence",
    "WaveformSequence", "NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
    "ChannelDefinitionSequence", "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData",
})
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_PIXEL_MODULE = "image-pixel"
_MANDATORY = "M"
_CHECKED_TYPES = ("1", "2")
_EVERY_CONTENT_ITEM = frozenset({"ValueType", "RelationshipType"})
_FUNCTIONAL_GROUPS = frozenset({("SharedFunctionalGroupsSequence",), ("PerFrameFunctionalGroupsSequence",)})


@dataclass(frozen=True)
class MissingAttribute:
    """A type 1 or type 2 attribute the object's SOP class requires and the object lacks."""

    keyword: str
    type: str  # "1" (missing or empty) or "2" (missing)
    module: str
    path: tuple[str, ...]  # enclosing sequences, outermost first
    empty: bool  # present but empty (type 1 only)

    @property
    def needed(self) -> bool:
        """The index or the export reads it."""
        return self.keyword in NEEDED_ATTRIBUTES

    @property
    def where(self) -> str:
        tag = tag_for_keyword(self.keyword)
        tag_text = f" ({Tag(tag).group:04X},{Tag(tag).element:04X})" if tag is not None else ""
        inside = f" in {' > '.join(self.path)}" if self.path else ""
        return f"{self.keyword}{tag_text}{inside}"

    def describe(self, sop_class_name: str) -> str:
        state = "is empty" if self.empty else "is missing"
        return (f"type {self.type} attribute {self.where} of the {self.module} module {state}; "
                f"{sop_class_name} requires it")


@dataclass(frozen=True)
class _Requirement:
    keyword: str
    tag: BaseTag  # not int: a BaseTag key compares with a BaseTag without converting it
    type: str
    module: str
    path: tuple[str, ...]


# Requirements grouped by the sequence path they sit under (() for the top level).
_ByPath = dict[tuple[str, ...], tuple[_Requirement, ...]]


def _iod_of(sop_class: str) -> str | None:
    return get_sop_class_iod_map().get(str(sop_class))


def is_image_sop_class(sop_class: str) -> bool:
    """True when the SOP class's IOD has the Image Pixel module as mandatory (it must carry pixels)."""
    iod = _iod_of(sop_class)
    return iod is not None and any(m["key"] == _IMAGE_PIXEL_MODULE and m["usage"] == _MANDATORY
                                   for m in get_iod_module_map()[iod])


@lru_cache(maxsize=256)
def _requirements(sop_class: str) -> tuple[list[str], dict[str, frozenset[BaseTag]]]:
    """The IOD's mandatory modules, and per other module the top-level tags that only it defines."""
    iod = _iod_of(sop_class)
    if iod is None:
        return [], {}
    modules = get_iod_module_map()[iod]
    attrs = get_module_attribute_map()
    mandatory = [m["key"] for m in modules if m["usage"] == _MANDATORY]
    in_mandatory = {a["keyword"] for key in mandatory for a in attrs.get(key, []) if not a["path"]}
    optional = {m["key"]: frozenset(Tag(t) for a in attrs.get(m["key"], [])
                                    if not a["path"] and a["keyword"] not in in_mandatory
                                    and (t := tag_for_keyword(a["keyword"])) is not None)
                for m in modules if m["usage"] != _MANDATORY}
    return mandatory, optional


@lru_cache(maxsize=1024)
def _strictest(modules: tuple[str, ...]) -> _ByPath:
    """One requirement per (path, keyword), by path: type 1 wins over type 2 when modules disagree."""
    attrs = get_module_attribute_map()
    best: dict[tuple[tuple[str, ...], str], _Requirement] = {}
    for module in modules:
        for a in attrs.get(module, []):
            tag = tag_for_keyword(a["keyword"])
            if a["type"] not in _CHECKED_TYPES or tag is None:
                continue
            key = (tuple(a["path"]), a["keyword"])
            if key not in best or a["type"] < best[key].type:
                best[key] = _Requirement(a["keyword"], Tag(tag), a["type"], module, key[0])
    # The tables merge the value-type macros of an SR content item (or acquisition context item) into
    # one list, so at the level of a content item every value's attribute reads as type 1 (a TEXT
    # item would "lack" MeasuredValueSequence). There, only what every item has is checked.
    # Likewise the functional group sequences list every macro, most of them conditional.
    content_items = {req.path for req in best.values() if req.keyword == "ValueType"}
    grouped: dict[tuple[str, ...], list[_Requirement]] = {}
    for req in best.values():
        if req.path in _FUNCTIONAL_GROUPS or (req.path in content_items and req.keyword not in _EVERY_CONTENT_ITEM):
            continue
        grouped.setdefault(req.path, []).append(req)
    return {path: tuple(reqs) for path, reqs in grouped.items()}


@lru_cache(maxsize=4096)
def _path_tags(path: tuple[str, ...]) -> tuple[BaseTag, ...]:
    return tuple(Tag(tag_for_keyword(k) or 0) for k in path)


def _items(ds: Dataset, path_tags: tuple[BaseTag, ...]) -> Iterator[Dataset]:
    """Every item at the sequence path ``path_tags``; nothing when a sequence on the way is absent."""
    if not path_tags:
        yield ds
        return
    head, rest = path_tags[0], path_tags[1:]
    if head in ds.keys():  # int membership: no keyword lookup per requirement
        for item in ds[head].value or []:
            yield from _items(item, rest)


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    return hasattr(value, "__len__") and len(value) == 0  # type: ignore[arg-type]


# VRs whose value, when it has any bytes, is never empty once decoded (numbers, binary, tags).
_BINARY_VRS = frozenset({"AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "UN", "US",
                         "UV"})


def _element_is_empty(item: Dataset, tag: BaseTag) -> bool:
    """Whether the element's decoded value is empty, decoding it only when its bytes leave a doubt.

    An undecoded element stays undecoded (and is written back byte for byte): no bytes is empty;
    binary values and text with anything but padding are not.
    """
    elem = item.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.VR != "SQ":
        value = elem.value
        if not value:
            return True
        if elem.VR in _BINARY_VRS or value.strip(b" \x00"):
            return False
        return _is_empty(convert_raw_data_element(elem, encoding=item._character_set, ds=item).value)
    return _is_empty(item[tag].value)


def missing_attributes(ds: Dataset) -> list[MissingAttribute]:
    """Type 1 and type 2 attributes the object's SOP class requires and the object lacks.

    Empty for SOP classes the tables do not know (private or retired ones). Each requirement is
    reported once, for the first item of a sequence that lacks it.
    """
    out: list[MissingAttribute] = []
    for path, reqs in _checks(str(ds.get("SOPClassUID", "")), frozenset(ds.keys())):
        items = [(item, item.keys()) for item in _items(ds, _path_tags(path))]
        for req in reqs:
            for item, keys in items:
                if req.tag not in keys:
                    out.append(MissingAttribute(req.keyword, req.type, req.module, path, empty=False))
                    break
                if req.type == "1" and _element_is_empty(item, req.tag):
                    out.append(MissingAttribute(req.keyword, req.type, req.module, path, empty=True))
                    break
    return out


@lru_cache(maxsize=1024)
def _checks(sop_class: str, top: frozenset[BaseTag]) -> tuple[tuple[tuple[str, ...], tuple[_Requirement, ...]], ...]:
    """What to look at, by sequence path, for an object of ``sop_class`` with top-level tags ``top``:
    the requirements of its mandatory modules and of the optional ones it carries, except top-level
    type 2 ones it has (present is all they ask), and nothing under a sequence it lacks. A series
    repeats its tags: one computation per series."""
    mandatory, optional = _requirements(sop_class)
    present = [m for m, markers in optional.items() if not markers.isdisjoint(top)]
    return tuple((path, tuple(r for r in reqs if path or r.type == "1" or r.tag not in top))
                 for path, reqs in _strictest(tuple(mandatory + present)).items()
                 if not path or _path_tags(path)[0] in top)  # no items under an absent sequence


# What decoding a value showed, by what decides it: tag, VR, bytes, character set and encoding. A CT
# series repeats most values on every slice; those are decoded once per process.
_DecodeKey = tuple[int, str, bytes, object, bool, bool]


@dataclass(frozen=True)
class _Decoded:
    warnings: tuple[warnings.WarningMessage, ...]  # what pydicom warned while decoding it
    same_bytes: bool  # pydicom writes the decoded value back as the bytes it came with


_DECODED: dict[_DecodeKey, _Decoded] = {}
_MEMO_VALUE_BYTES = 256  # longer values (pixels, waveforms, long text) are decoded every time
_MEMO_ENTRIES = 200_000


def decode_all(ds: Dataset) -> set[BaseTag]:
    """Decode every element's value once, so that reading problems (invalid values) surface now as
    warnings; return the top-level tags whose bytes pydicom would change on writing them back.

    Decoding works on copies: the data set keeps its undecoded elements, so that what no later step
    changes can be written back byte for byte (``cohort.dicom.part10``). An element (with everything
    inside it) is written back as it came only when pydicom, having decoded it, would write the same
    bytes: not a value with other padding than pydicom's, of odd length, or of VR UN that the
    dictionary knows. A value seen before (same tag, VR, bytes, character set and encoding) replays
    what was found then.
    """
    charset = ds._character_set
    changed = set()
    for elem in ds.elements():
        if not _decode_element(elem, ds, charset):
            changed.add(elem.tag)
    return changed


def decode_in_place(ds: Dataset, tags: set[BaseTag] | None = None) -> None:
    """Decode the elements ``tags`` (default: all), with everything inside them, in ``ds`` itself: pydicom
    then writes them from their values, as it writes a data set built in memory."""
    for tag in sorted(ds.keys()) if tags is None else sorted(tags):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                for _elem in item.iterall():
                    pass


def _decode_element(elem: DataElement | RawDataElement, ds: Dataset, charset: str | MutableSequence[str]) -> bool:
    """Decode (a copy of) ``elem`` and what it holds, raising pydicom's warnings; True when writing it
    back decoded would give the same bytes."""
    if isinstance(elem, DataElement):
        if elem.VR != "SQ":
            return True  # decoded already (its warnings were raised then): pydicom writes it from its value
        return all([_decode_items(item) for item in elem.value or []])
    key = _decode_key(elem, charset)
    found = _DECODED.get(key) if key is not None else None
    if found is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decoded = convert_raw_data_element(elem, encoding=charset, ds=ds)
        same = _same_bytes(elem, decoded, charset)
        if decoded.VR == "SQ":  # every item is decoded, for its warnings, whatever the header says
            same = all([_decode_items(item) for item in decoded.value or []]) and same
        found = _Decoded(tuple(caught), same)
        if key is not None:
            if len(_DECODED) >= _MEMO_ENTRIES:
                _DECODED.clear()
            _DECODED[key] = found
    for w in found.warnings:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return found.same_bytes


def _decode_items(item: Dataset) -> bool:
    charset = item._character_set
    return all([_decode_element(elem, item, charset) for elem in item.elements()])


def _same_bytes(raw: RawDataElement, decoded: DataElement, charset: str | MutableSequence[str]) -> bool:
    """Whether pydicom writes ``decoded`` as it writes ``raw`` (for a sequence: its header only)."""
    if decoded.VR == "SQ":
        return raw.VR in ("SQ", None)
    encoded = []
    for elem in (raw, decoded):
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = raw.is_little_endian, raw.is_implicit_VR
        try:
            write_data_element(fp, elem, charset if isinstance(charset, str) else list(charset))
        except Exception:  # noqa: BLE001 - a value pydicom cannot write back is not the same
            return False
        encoded.append(fp.getvalue())
    return encoded[0] == encoded[1]


def _decode_key(elem: RawDataElement, charset: str | MutableSequence[str]) -> _DecodeKey | None:
    """The memo key of a short public element whose VR the file states, else None (decode it)."""
    value, vr = elem.value, elem.VR
    if vr is None or vr == "SQ" or elem.tag.is_private or not isinstance(value, bytes) \
            or len(value) > _MEMO_VALUE_BYTES:
        return None
    chars = charset if isinstance(charset, str) else tuple(charset)
    return (int(elem.tag), vr, value, chars, elem.is_implicit_VR, elem.is_little_endian)


def sop_class_name(uid: str) -> str:
    """The SOP class's name, or the UID when pydicom does not know it."""
    name = UID(str(uid)).name
    return name if name and name != str(uid) else str(uid)


@dataclass(frozen=True)
class Truncation:
    """Where a file ends too early: inside the value of an element, or inside an element header."""

    tag: int | None  # the element cut off; None when the file ends inside a header
    declared: int | None  # bytes the element's length field announces (None: undefined length)
    available: int  # bytes of the element the file still holds

    header_only: bool = False  # the file ends inside the element's header (tag known from its first bytes)

    def describe(self) -> str:
        if self.tag is None:
            return f"the file ends {self.available} byte(s) into the header of an element"
        name = f"{keyword_for_tag(self.tag) or 'element'} ({Tag(self.tag).group:04X},{Tag(self.tag).element:04X})"
        if self.header_only:
            return f"the file ends {self.available} byte(s) into the header of {name}, before its value"
        if self.declared is None:
            return f"the file ends inside {name}, {self.available} bytes after it starts, before its end marker"
        return f"{name} declares {self.declared} bytes but the file ends {self.available} bytes into it"


_ELEMENT_HEADER = 8
_UNDEFINED_LENGTH = 0xFFFFFFFF
_TRANSFER_SYNTAX_TAG = 0x00020010


def _not_meta(tag: object, vr: str | None, length: int) -> bool:
    return bool(Tag(tag).group != 0x0002)  # type: ignore[arg-type]


def find_truncation(raw: bytes) -> Truncation | None:
    """Where ``raw`` (a Part 10 file or a bare data set) ends before its top-level elements do.

    pydicom reads such a file without error and silently drops what is missing (a sequence loses its
    last items, a cut-off Pixel Data is shorter, a cut element header is ignored); the lengths the
    file declares tell. Deflated data sets are not checked (their length is the stream's).
    """
    fp = io.BytesIO(raw)
    if raw[128:132] == b"DICM":
        fp.seek(132)
    syntax: UID | None = None
    if raw[fp.tell():fp.tell() + 2] == b"\x02\x00":  # the file meta group: explicit VR little endian
        try:
            for meta in data_element_generator(fp, False, True, stop_when=_not_meta):
                if int(meta.tag) == _TRANSFER_SYNTAX_TAG and isinstance(meta.value, bytes):
                    syntax = UID(meta.value.rstrip(b"\x00 ").decode("ascii", "replace"))
        except (EOFError, OSError, ValueError, struct.error):
            return None  # an unreadable meta group is read_dicom's to report
    start = end = fp.tell()
    if syntax is not None and syntax.is_deflated:
        return None
    if syntax is not None and syntax.is_transfer_syntax:
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    else:
        vr = raw[start + 4:start + 6]
        implicit = not (len(vr) == 2 and vr.isalpha() and vr.isupper())
        little = raw[start + 1:start + 2] == b"\x00"  # groups 0002 / 0008 start a data set
    try:
        for elem in data_element_generator(fp, implicit, little):
            # Undefined-length sequences come back already parsed (DataElement, no length field).
            length = getattr(elem, "length", _UNDEFINED_LENGTH)
            value = elem.value
            if length != _UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) < length:
                return Truncation(int(elem.tag), int(length), len(value))
            end = fp.tell()
    except (EOFError, OSError, ValueError, struct.error):
        return _cut_at(raw, end, little, header_only=len(raw) - end < _ELEMENT_HEADER)
    if 0 < len(raw) - end < _ELEMENT_HEADER:
        return _cut_at(raw, end, little, header_only=True)
    return None


def _cut_at(raw: bytes, offset: int, little: bool, *, header_only: bool) -> Truncation:
    """The element that starts at ``offset`` and that the file cuts off (its tag, when 4 bytes remain)."""
    left = len(raw) - offset
    if left < 4:
        return Truncation(None, None, left)
    group, element = struct.unpack_from("<HH" if little else ">HH", raw, offset)
    return Truncation((group << 16) | element, None, left, header_only=header_only)
