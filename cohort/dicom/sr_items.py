"""Build DICOM SR content items as plain pydicom Datasets.

highdicom 0.28.2 cannot build or read back a tree that holds a WAVEFORM item (its value-type
dispatch has no WAVEFORM entry), so SR trees that reference waveforms are built here instead. Every
function returns one content item (a ``Dataset`` ready to go into a ``ContentSequence``); nest
them with ``container(..., children)`` and put the root's attributes into the SR dataset with
``apply_root``. Value encodings follow PS3.3 C.17.3 (SR Document Content Module).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.valuerep import DT, format_number_as_ds

from cohort.dicom.codes import LOCAL_SCHEME, LOCAL_SCHEME_NAME, LOCAL_SCHEME_UID
from cohort.dicom.vr_text import fit_vr

__all__ = [
    "RelationshipType", "coded_entry", "container", "code", "num", "text", "datetime_item", "date_item",
    "uidref", "waveform_ref", "image_ref", "composite_ref", "apply_root", "evidence_sequence",
    "coding_schemes_in", "declare_local_scheme", "walk",
]

_CODE_VALUE_MAX = 16  # SH; longer values go to LongCodeValue, URNs to URNCodeValue


class RelationshipType(StrEnum):
    """Relationship of a content item to its parent (PS3.3 C.17.3.2.4)."""

    CONTAINS = "CONTAINS"
    HAS_PROPERTIES = "HAS PROPERTIES"
    HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
    HAS_ACQ_CONTEXT = "HAS ACQ CONTEXT"
    HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
    INFERRED_FROM = "INFERRED FROM"
    SELECTED_FROM = "SELECTED FROM"


Rel = RelationshipType | str


def coded_entry(concept: Code) -> Dataset:
    """A Code Sequence Macro item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    value = str(concept.value)
    if value.startswith("urn:") or "://" in value:
        item.URNCodeValue = value
    elif len(value) > _CODE_VALUE_MAX:
        item.LongCodeValue = value
    else:
        item.CodeValue = value
    item.CodingSchemeDesignator = concept.scheme_designator
    if concept.scheme_version:
        item.CodingSchemeVersion = concept.scheme_version
    item.CodeMeaning = concept.meaning[:64]  # LO; a longer meaning would make the item invalid
    return item


def _item(rel: Rel | None, value_type: str, name: Code | None) -> Dataset:
    item = Dataset()
    if rel is not None:
        item.RelationshipType = RelationshipType(rel).value
    item.ValueType = value_type
    if name is not None:
        item.ConceptNameCodeSequence = [coded_entry(name)]
    return item


def container(name: Code, children: Iterable[Dataset] = (), *, rel: Rel | None = RelationshipType.CONTAINS,
              template_id: str | None = None, continuity: str = "SEPARATE") -> Dataset:
    """A CONTAINER item; ``rel=None`` for the document root, ``template_id`` e.g. "3700" (DCMR)."""
    item = _item(rel, "CONTAINER", name)
    item.ContinuityOfContent = continuity
    if template_id is not None:
        tpl = Dataset()
        tpl.MappingResource = "DCMR"
        tpl.TemplateIdentifier = template_id
        item.ContentTemplateSequence = [tpl]
    kids = list(children)
    if kids:
        item.ContentSequence = kids
    return item


def code(name: Code, value: Code, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A CODE item: ``name`` = ``value``."""
    item = _item(rel, "CODE", name)
    item.ConceptCodeSequence = [coded_entry(value)]
    return item


def _ds_string(value: float) -> str:
    # Integers stay integers ("124", not "124.0"); others get the shortest DS that fits 16 chars.
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format_number_as_ds(float(value))


def num(name: Code, value: float, unit: Code, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A NUM item with one measured value in ``unit`` (a UCUM code)."""
    item = _item(rel, "NUM", name)
    measured = Dataset()
    measured.MeasurementUnitsCodeSequence = [coded_entry(unit)]
    measured.NumericValue = _ds_string(value)
    # The DS string may round; FloatingPointValue keeps the exact binary value for readers.
    if float(measured.NumericValue) != float(value):
        measured.FloatingPointValue = float(value)
    item.MeasuredValueSequence = [measured]
    return item


def text(name: Code, value: str, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A TEXT item (UT: any length; control characters other than CR, LF, FF become spaces)."""
    item = _item(rel, "TEXT", name)
    item.TextValue = fit_vr(value, "UT")
    return item


def datetime_item(name: Code, value: datetime, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A DATETIME item; the value is written as given (no time-zone conversion)."""
    item = _item(rel, "DATETIME", name)
    item.DateTime = str(DT(value))
    return item


def date_item(name: Code, value: date, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A DATE item (for a day without time of day, e.g. a coded procedure's date)."""
    item = _item(rel, "DATE", name)
    item.Date = value.strftime("%Y%m%d")
    return item


def uidref(name: Code, value: str, *, rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A UIDREF item."""
    item = _item(rel, "UIDREF", name)
    item.UID = value
    return item


def _referenced_sop(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class_uid
    ref.ReferencedSOPInstanceUID = sop_instance_uid
    return ref


def waveform_ref(name: Code, sop_class_uid: str, sop_instance_uid: str, *,
                 channels: Sequence[tuple[int, int]] = (), rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A WAVEFORM item referencing a waveform object.

    ``channels`` are (multiplex group, channel) pairs, both 1-based, channel 0 meaning all channels
    of the group (PS3.3 C.18.5.1.1); leave empty when the reference is to the whole object.
    """
    item = _item(rel, "WAVEFORM", name)
    ref = _referenced_sop(sop_class_uid, sop_instance_uid)
    if channels:
        ref.ReferencedWaveformChannels = [v for pair in channels for v in pair]
    item.ReferencedSOPSequence = [ref]
    return item


def image_ref(name: Code, sop_class_uid: str, sop_instance_uid: str, *, frames: Sequence[int] = (),
              segments: Sequence[int] = (), rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """An IMAGE item, optionally restricted to frames or (for a SEG) segment numbers."""
    item = _item(rel, "IMAGE", name)
    ref = _referenced_sop(sop_class_uid, sop_instance_uid)
    if frames:
        ref.ReferencedFrameNumber = list(frames)
    if segments:
        ref.ReferencedSegmentNumber = list(segments)
    item.ReferencedSOPSequence = [ref]
    return item


def composite_ref(name: Code, sop_class_uid: str, sop_instance_uid: str, *,
                  rel: Rel = RelationshipType.CONTAINS) -> Dataset:
    """A COMPOSITE item referencing any stored object (e.g. another SR)."""
    item = _item(rel, "COMPOSITE", name)
    item.ReferencedSOPSequence = [_referenced_sop(sop_class_uid, sop_instance_uid)]
    return item


def apply_root(ds: Dataset, root: Dataset) -> Dataset:
    """Copy a root CONTAINER (built with ``rel=None``) into the SR dataset's document content."""
    if root.get("ValueType") != "CONTAINER" or "RelationshipType" in root:
        raise ValueError("the SR root must be a CONTAINER built with rel=None")
    for elem in root:
        ds.add(elem)
    return ds


def evidence_sequence(objects: Iterable[Dataset]) -> DicomSequence:
    """Hierarchical SOP Instance Reference items (study > series > instance) for ``objects``.

    Sorted by UID so that the same objects in any order give the same sequence.
    """
    tree: dict[str, dict[str, dict[str, str]]] = {}
    for obj in objects:
        instances = tree.setdefault(str(obj.StudyInstanceUID), {}).setdefault(str(obj.SeriesInstanceUID), {})
        instances[str(obj.SOPInstanceUID)] = str(obj.SOPClassUID)
    studies = []
    for study_uid in sorted(tree):
        study = Dataset()
        study.StudyInstanceUID = study_uid
        series_items = []
        for series_uid in sorted(tree[study_uid]):
            series = Dataset()
            series.SeriesInstanceUID = series_uid
            series.ReferencedSOPSequence = [
                _referenced_sop(cls, inst) for inst, cls in sorted(tree[study_uid][series_uid].items())
            ]
            series_items.append(series)
        study.ReferencedSeriesSequence = series_items
        studies.append(study)
    return DicomSequence(studies)


def walk(item: Dataset) -> Iterable[Dataset]:
    """``item`` and all content items below it, depth first in document order."""
    yield item
    for child in item.get("ContentSequence", []):
        yield from walk(child)


def coding_schemes_in(item: Dataset) -> set[str]:
    """Coding scheme designators used by concept names, coded values and units in the tree."""
    schemes: set[str] = set()
    for node in walk(item):
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            schemes.update(c.CodingSchemeDesignator for c in node.get(seq, []))
        for measured in node.get("MeasuredValueSequence", []):
            schemes.update(c.CodingSchemeDesignator for c in measured.get("MeasurementUnitsCodeSequence", []))
    return schemes


def declare_local_scheme(ds: Dataset, root: Dataset) -> None:
    """Declare the project-local coding scheme in CodingSchemeIdentificationSequence if ``root`` uses it.

    Readers elsewhere cannot resolve ``99FEDCOH`` codes without this declaration (PS3.3 C.12.1.1.2).
    """
    if LOCAL_SCHEME not in coding_schemes_in(root):
        return
    ident = Dataset()
    ident.CodingSchemeDesignator = LOCAL_SCHEME
    ident.CodingSchemeUID = LOCAL_SCHEME_UID
    ident.CodingSchemeName = LOCAL_SCHEME_NAME
    ident.CodingSchemeResponsibleOrganization = "FedCohort project"
    existing = [i for i in ds.get("CodingSchemeIdentificationSequence", [])
                if i.CodingSchemeDesignator != LOCAL_SCHEME]
    ds.CodingSchemeIdentificationSequence = [*existing, ident]
