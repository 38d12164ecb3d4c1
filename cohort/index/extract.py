"""Read one DICOM object into index rows: its identity, attributes, SR items, segments, references.

SR content is walked generically: every content item gets its concept path (concept names from the
root down to it) and its position (``1.4.2``); template configs decide which items become which
fields. Every concept path seen is also counted, so ``unindexed_items`` can show what no config names.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from cohort.dicom import codes
from cohort.dicom.sop_classes import ECG_WAVEFORM_PREFIX as ECG_SOP_CLASS_PREFIX
from cohort.dicom.sop_classes import SEG_SOP_CLASSES
from cohort.dicom.sop_classes import SR_PREFIX as SR_SOP_CLASS_PREFIX
from cohort.index.schema import IMAGE_KINDS
from cohort.index.templates import (
    SR_VALUE_TYPES,
    TemplateConfig,
    TemplateField,
    code_key,
    needs_content_concepts,
    template_for_title,
)
from cohort.spec import units

YES_CODES = frozenset({code_key(codes.YES.value, codes.YES.scheme_designator), "R-0038D SRT", "Y DCM"})
NO_CODES = frozenset({code_key(codes.NO.value, codes.NO.scheme_designator), "R-00339 SRT", "N DCM"})
YES_WORDS = frozenset({"yes", "true", "y", "ja", "j", "1"})
NO_WORDS = frozenset({"no", "false", "n", "nein", "0"})
_LEADS = {**{v: k for k, v in codes.LEAD_CODES_MDC.items()}, **{v: k for k, v in codes.LEAD_CODES_SCPECG.items()}}

AttributeRow = tuple[str, float | None, str | None]
ItemRow = tuple[str, str, str, float | None, str | None, str | None, str | None, str | None, str | None,
                str | None]
SegmentRow = tuple[int, str | None, str | None, str | None, str | None, str | None, str | None, str | None,
                   str | None, str | None, str | None, str | None, str | None]
RefRow = tuple[str, str | None, str | None, str | None, str | None]


@dataclass
class Extracted:
    """Index rows of one DICOM instance (series-level rows are merged by the index)."""

    kind: str
    template: str | None
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    entity_date: str | None  # ISO date
    entity_datetime: str | None  # ISO timestamp
    attributes: list[AttributeRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)
    segments: list[SegmentRow] = field(default_factory=list)
    refs: list[RefRow] = field(default_factory=list)
    concepts: list[tuple[str, str, int]] = field(default_factory=list)
    identity_only: bool = False  # an image's identity without its series rows (see ``extract_encoded``)

    @property
    def per_series(self) -> bool:
        """Image kinds are indexed once per series; everything else once per instance."""
        return self.kind in IMAGE_KINDS


def read_dataset(path: str | Path) -> Dataset:
    """The file's dataset without pixel data; large values (waveform samples) are read lazily."""
    return pydicom.dcmread(str(path), stop_before_pixels=True, defer_size="256 KB")


def kind_of(ds: Dataset) -> str:
    """Entity kind: CT/MR/CR/DX, ECG, SR, SEG, or the Modality for anything else."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class.startswith(SR_SOP_CLASS_PREFIX) or modality == "SR":
        return "SR"
    if sop_class in SEG_SOP_CLASSES or modality == "SEG":
        return "SEG"
    if sop_class.startswith(ECG_SOP_CLASS_PREFIX) or modality == "ECG":
        return "ECG"
    return modality or "OT"


def extract_file(path: str | Path, templates: dict[str, TemplateConfig]) -> Extracted:
    """Rows for the DICOM file at ``path``."""
    return extract_dataset(read_dataset(path), templates)


def extract_for_index(path: str | Path, templates: dict[str, TemplateConfig]) -> Extracted:
    """Rows for the DICOM file at ``path`` as the index needs them from a file it reads among many: an
    image's identity only (``identity_only``; the index reads the whole header of the first file it meets
    of a new series), everything else in full."""
    ds = read_dataset(path)
    return _identity(ds) if kind_of(ds) in IMAGE_KINDS else extract_dataset(ds, templates)


def _identity(ds: Dataset) -> Extracted:
    """An image instance's identity, without its series rows."""
    return Extracted(
        kind=kind_of(ds), template=None, patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")), series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")), sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")), entity_date=None, entity_datetime=None, identity_only=True)


def extract_encoded(ds: Dataset, encoded: bytes, templates: dict[str, TemplateConfig]) -> Extracted:
    """Rows for an object that ingest has just encoded as ``encoded`` from ``ds``, without reading its file.

    Everything but an image is extracted from ``encoded``, exactly as the index would read it from the
    file. An image adds its instance to its series, whose rows come from whichever file of the series
    the index meets first: for an image only the identity is taken, from ``ds`` (``identity_only``),
    and the index reads the file itself when the series is new to it.
    """
    if kind_of(ds) in IMAGE_KINDS:
        return _identity(ds)
    return extract_dataset(pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True), templates)


def extract_dataset(ds: Dataset, templates: dict[str, TemplateConfig]) -> Extracted:
    """Rows for one dataset; ``templates`` decide which SR items are indexed."""
    kind = kind_of(ds)
    date, when = _entity_date(ds)
    out = Extracted(
        kind=kind, template=None, patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")), series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")), sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")), entity_date=date, entity_datetime=when,
    )
    out.attributes = _common_attributes(ds)
    if kind in IMAGE_KINDS:
        out.attributes += _image_attributes(ds)
    elif kind == "ECG":
        out.attributes += _ecg_attributes(ds)
    elif kind == "SEG":
        out.segments = _segments(ds)
        out.attributes += [("segment_count", float(len(out.segments)), None)]
        out.attributes += _text_attr("segmentation_type", ds.get("SegmentationType"))
        out.refs = _seg_refs(ds)
    elif kind == "SR":
        out.attributes += _text_attr("completion_flag", ds.get("CompletionFlag"))
        out.attributes += _text_attr("verification_flag", ds.get("VerificationFlag"))
        out.template = template_of(ds, templates)
        out.refs = _evidence_refs(ds)
        template = templates.get(out.template) if out.template else None
        out.items, out.concepts, content_refs = sr_rows(ds, template)
        out.refs += content_refs
    return out


# --- SR content ------------------------------------------------------------------------------------

def template_of(ds: Dataset, templates: dict[str, TemplateConfig]) -> str | None:
    """The template key of an SR: by its document title, and by its content's concepts where configs
    with ``content_concepts`` share that title (TID 1500 landmarks vs derived measurements)."""
    title = _code(ds.get("ConceptNameCodeSequence"))
    if not title:
        return None
    concepts: set[str] = set()
    if needs_content_concepts(templates, title[0], title[1]):
        concepts = {path[-1] for path, _, _ in _walk(ds.get("ContentSequence", []), (), ())}
    return template_for_title(templates, title[0], title[1], concepts)


@dataclass(frozen=True)
class _Node:
    concept: str
    pos: str
    value_type: str


def sr_rows(ds: Dataset, template: TemplateConfig | None
            ) -> tuple[list[ItemRow], list[tuple[str, str, int]], list[RefRow]]:
    """Items for the fields ``template`` names, counts per concept path, and content references."""
    items: list[ItemRow] = []
    seen: Counter[tuple[str, str]] = Counter()
    refs: list[RefRow] = []
    for path, ancestors, item in _walk(ds.get("ContentSequence", []), (), ()):
        vtype = str(item.get("ValueType", ""))
        seen[("/".join(path), vtype)] += 1
        if vtype in ("IMAGE", "WAVEFORM", "COMPOSITE"):
            for ref in item.get("ReferencedSOPSequence", []):
                refs.append((f"content:{path[-1]}", None, None, str(ref.get("ReferencedSOPInstanceUID", "")),
                             str(ref.get("ReferencedSOPClassUID", ""))))
        if template is None:
            continue
        for tf in template.fields_for_path(path):
            row = _item_row(tf, item, vtype, ancestors)
            if row is not None:
                items.append(row)
    concepts = [(p, vt, n) for (p, vt), n in sorted(seen.items())]
    return items, concepts, refs


def _walk(seq: Any, path: tuple[str, ...], ancestors: tuple[_Node, ...]
          ) -> Iterator[tuple[tuple[str, ...], tuple[_Node, ...], Dataset]]:
    parent_pos = ancestors[-1].pos if ancestors else ""
    for i, item in enumerate(seq, 1):
        pos = f"{parent_pos}.{i}" if parent_pos else str(i)
        name = _code(item.get("ConceptNameCodeSequence"))
        concept = code_key(*name[:2]) if name else "-"  # by-reference items have no concept name
        node = _Node(concept, pos, str(item.get("ValueType", "")))
        item_path = (*path, concept)
        yield item_path, (*ancestors, node), item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence, item_path, (*ancestors, node))


def _group_key(tf: TemplateField, nodes: tuple[_Node, ...]) -> str:
    """Position of the item that forms the predicate group: the configured concept or the container."""
    if tf.group:
        for node in reversed(nodes):
            if node.concept == tf.group:
                return node.pos
    for node in reversed(nodes[:-1]):
        if node.value_type == "CONTAINER":
            return node.pos
    return "0"  # the document root


def _item_row(tf: TemplateField, item: Dataset, vtype: str, nodes: tuple[_Node, ...]) -> ItemRow | None:
    if vtype not in SR_VALUE_TYPES[tf.value_type]:
        return None
    num: float | None = None
    unit = cval = cscheme = cmeaning = text = date = None
    if vtype == "NUM":
        mv = item.get("MeasuredValueSequence")
        if not mv:
            return None
        num = float(mv[0].NumericValue)
        u = _code(mv[0].get("MeasurementUnitsCodeSequence"))
        unit = u[0] if u else None
    elif vtype == "CODE":
        code = _code(item.get("ConceptCodeSequence"))
        if not code:
            return None
        cval, cscheme, cmeaning = code
    elif vtype == "TEXT":
        text = str(item.get("TextValue", ""))
    elif vtype == "DATE":
        date = _iso_date(str(item.get("Date", "")))
    elif vtype == "DATETIME":
        date = _iso_date(str(item.get("DateTime", ""))[:8])
    elif vtype in ("SCOORD", "SCOORD3D"):
        text = str(item.get("GraphicType", ""))
        data = item.get("GraphicData") or []
        num = float(len(data) // (3 if vtype == "SCOORD3D" else 2))
    if tf.value_type == "boolean":
        num = _boolean(vtype, num, cval, cscheme, text)
        if num is None:
            return None
    elif tf.value_type == "numeric" and num is not None and tf.unit:
        if unit and units.compatible(unit, tf.unit):
            num = units.convert(num, unit, tf.unit)
            unit = tf.unit
        elif unit != tf.unit:
            # Kept visible but never matched by numeric predicates: its unit cannot be compared.
            text = f"{num:g} {unit or '(no unit)'}"
            num = None
    if tf.value_type == "date" and date is None:
        return None
    return (tf.name, nodes[-1].pos, _group_key(tf, nodes), num, unit, cval, cscheme, cmeaning, text, date)


def _boolean(vtype: str, num: float | None, cval: str | None, cscheme: str | None,
             text: str | None) -> float | None:
    if vtype == "CODE":
        key = code_key(cval or "", cscheme or "")
        return 1.0 if key in YES_CODES else 0.0 if key in NO_CODES else None
    if vtype == "NUM":
        return None if num is None else float(num != 0)
    word = (text or "").strip().lower()
    return 1.0 if word in YES_WORDS else 0.0 if word in NO_WORDS else None


def _code(seq: Any) -> tuple[str, str, str] | None:
    if not seq:
        return None
    c = seq[0]
    value = c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue")
    if value is None:
        return None
    return str(value), str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", ""))


def _evidence_refs(ds: Dataset) -> list[RefRow]:
    rows: list[RefRow] = []
    for keyword, rel in (("CurrentRequestedProcedureEvidenceSequence", "evidence"),
                         ("PertinentOtherEvidenceSequence", "pertinent_evidence")):
        for study in ds.get(keyword, []):
            study_uid = str(study.get("StudyInstanceUID", ""))
            for series in study.get("ReferencedSeriesSequence", []):
                series_uid = str(series.get("SeriesInstanceUID", ""))
                for sop in series.get("ReferencedSOPSequence", []):
                    rows.append((rel, study_uid, series_uid, str(sop.get("ReferencedSOPInstanceUID", "")),
                                 str(sop.get("ReferencedSOPClassUID", ""))))
    return rows


# --- SEG -------------------------------------------------------------------------------------------

def _segments(ds: Dataset) -> list[SegmentRow]:
    rows: list[SegmentRow] = []
    for seg in ds.get("SegmentSequence", []):
        cat = _code(seg.get("SegmentedPropertyCategoryCodeSequence")) or (None, None, None)
        typ = _code(seg.get("SegmentedPropertyTypeCodeSequence")) or (None, None, None)
        region = _code(seg.get("AnatomicRegionSequence")) or (None, None, None)
        rows.append((int(seg.get("SegmentNumber", 0)), _str(seg.get("SegmentLabel")), *cat, *typ,
                     _str(seg.get("SegmentAlgorithmType")), _str(seg.get("SegmentAlgorithmName")), *region))
    return rows


def _seg_refs(ds: Dataset) -> list[RefRow]:
    rows: list[RefRow] = []
    study_uid = str(ds.get("StudyInstanceUID", ""))
    for series in ds.get("ReferencedSeriesSequence", []):
        series_uid = str(series.get("SeriesInstanceUID", ""))
        rows.append(("source_series", study_uid, series_uid, None, None))
        for inst in series.get("ReferencedInstanceSequence", []):
            rows.append(("source_image", study_uid, series_uid, str(inst.get("ReferencedSOPInstanceUID", "")),
                         str(inst.get("ReferencedSOPClassUID", ""))))
    return rows


# --- attributes ------------------------------------------------------------------------------------

def _str(value: Any) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _text_attr(name: str, value: Any) -> list[AttributeRow]:
    text = _str(value)
    return [(name, None, text)] if text is not None else []


def _num_attr(name: str, value: Any) -> list[AttributeRow]:
    if value is None or value == "":
        return []
    try:
        return [(name, float(value), None)]
    except (TypeError, ValueError):
        return []


def _common_attributes(ds: Dataset) -> list[AttributeRow]:
    rows: list[AttributeRow] = []
    for name, kw in (("series_description", "SeriesDescription"), ("study_description", "StudyDescription"),
                     ("manufacturer", "Manufacturer"), ("manufacturer_model", "ManufacturerModelName")):
        rows += _text_attr(name, ds.get(kw))
    return rows


def _image_attributes(ds: Dataset) -> list[AttributeRow]:
    rows: list[AttributeRow] = []
    rows += _text_attr("body_part", ds.get("BodyPartExamined"))
    rows += _num_attr("slice_thickness", ds.get("SliceThickness"))
    rows += _num_attr("kvp", ds.get("KVP"))
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing:
        rows += _num_attr("pixel_spacing", spacing[0])
    rows += _num_attr("rows", ds.get("Rows"))
    rows += _num_attr("columns", ds.get("Columns"))
    kernel = ds.get("ConvolutionKernel")
    if kernel:
        rows += _text_attr("convolution_kernel", kernel if isinstance(kernel, str) else "\\".join(kernel))
    rows += _text_attr("contrast_agent", ds.get("ContrastBolusAgent"))
    return rows


def _ecg_attributes(ds: Dataset) -> list[AttributeRow]:
    groups = ds.get("WaveformSequence") or []
    if not groups:
        return []
    g = groups[0]
    rows: list[AttributeRow] = []
    freq = g.get("SamplingFrequency")
    rows += _num_attr("sampling_frequency", freq)
    rows += _num_attr("lead_count", g.get("NumberOfWaveformChannels"))
    samples = g.get("NumberOfWaveformSamples")
    if freq and samples:
        rows.append(("duration_s", float(samples) / float(freq), None))
    for channel in g.get("ChannelDefinitionSequence", []):
        src = _code(channel.get("ChannelSourceSequence"))
        if src:
            rows.append(("lead", None, _LEADS.get(src[0], src[2] or src[0])))
    return rows


def _iso_date(value: str) -> str | None:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def _iso_time(value: str) -> str:
    digits = value.strip().split(".")[0]
    digits = (digits + "000000")[:6] if digits.isdigit() else "000000"
    return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"


def _entity_date(ds: Dataset) -> tuple[str | None, str | None]:
    """When the entity was made: acquisition, then content, series, study date (first present)."""
    adt = str(ds.get("AcquisitionDateTime", "") or "")
    if _iso_date(adt[:8]):
        return _iso_date(adt[:8]), f"{_iso_date(adt[:8])} {_iso_time(adt[8:14])}"
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                             ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        d = _iso_date(str(ds.get(date_kw, "") or ""))
        if d:
            return d, f"{d} {_iso_time(str(ds.get(time_kw, '') or ''))}"
    return None, None
