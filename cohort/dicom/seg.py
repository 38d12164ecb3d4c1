"""DICOM Segmentation (SEG) objects of TAVI planning structures, built with highdicom.

One place says what each segment key (``cohort.siteconfig.SEGMENT_KEYS``) means as a coded concept,
so every SEG the project writes describes the same structure the same way, and the index can rely
on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from cohort.dicom import codes

__all__ = ["AlgorithmType", "SegmentConcept", "SEGMENT_CONCEPTS", "SEG_SERIES_NUMBER", "build_segmentation"]

SEG_SERIES_NUMBER = 300
SEG_MANUFACTURER = "FedCohort"
SEG_MODEL = "cohort ingest nifti-seg"
SEG_SOFTWARE_VERSION = "0.1.0"
SEG_CONTENT_LABEL = "TAVI_PLANNING"


class AlgorithmType(StrEnum):
    """How a segmentation was created (SegmentAlgorithmType, the "creator type")."""

    MANUAL = "MANUAL"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    AUTOMATIC = "AUTOMATIC"


@dataclass(frozen=True)
class SegmentConcept:
    """What one segment key means: its label and its segmented property codes."""

    label: str
    category: Code
    type: Code
    anatomic_region: Code | None = None


SEGMENT_CONCEPTS: Mapping[str, SegmentConcept] = {
    # Landing-zone calcium sits on the annulus ring of the aortic valve (see synth/anatomy.py).
    "calcification": SegmentConcept("Calcification", codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
                                    codes.CALCIFIED, codes.AORTIC_VALVE),
    "membranous_septum": SegmentConcept("Membranous septum", codes.ANATOMICAL_STRUCTURE,
                                        codes.MEMBRANOUS_SEPTUM, None),
    "left_ventricle": SegmentConcept("Left ventricle", codes.ANATOMICAL_STRUCTURE, codes.LEFT_VENTRICLE),
    "right_ventricle": SegmentConcept("Right ventricle", codes.ANATOMICAL_STRUCTURE, codes.RIGHT_VENTRICLE),
}

# CID 7162 has no family for semi-automatic tools; their human-guided part is what sets them apart
# from automatic ones, so they are recorded as Manual Processing (name and version say the tool).
_ALGORITHM_FAMILY = {
    AlgorithmType.SEMIAUTOMATIC: codes.ALGORITHM_FAMILY_MANUAL,
    AlgorithmType.AUTOMATIC: codes.ALGORITHM_FAMILY_AI,
}


def _local_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=codes.LOCAL_SCHEME, name=codes.LOCAL_SCHEME_NAME, uid=codes.LOCAL_SCHEME_UID)


def build_segmentation(
    source_images: Sequence[Dataset],
    label_map: np.ndarray,
    segment_keys: Mapping[int, str],
    *,
    algorithm_type: AlgorithmType | str,
    algorithm_name: str,
    algorithm_version: str,
    uid: Callable[..., str],
    content_date: str,
    content_time: str,
) -> hd.seg.Segmentation:
    """A binary SEG with one segment per label value present in ``label_map``.

    Args:
        source_images: the CT slices, in the order of ``label_map``'s first axis.
        label_map: integer labels, shape (len(source_images), Rows, Columns); 0 is background.
        segment_keys: label value -> segment key (a key of ``SEGMENT_CONCEPTS``) for every value
            present.
        algorithm_type: the creator type; SEMIAUTOMATIC and AUTOMATIC get algorithm identification.
        algorithm_name: name of the tool that made the label map.
        algorithm_version: its version.
        uid: deterministic UID factory taking role strings (e.g. ``IngestContext.uid``).
        content_date: DA for ContentDate, SeriesDate and InstanceCreationDate (no wall clock, so
            the same input gives the same bytes).
        content_time: TM for the matching times.

    Raises:
        ValueError: a label value present in ``label_map`` has no key, or the key is unknown.
    """
    algorithm_type = AlgorithmType(algorithm_type)
    values = [int(v) for v in np.unique(label_map) if v != 0]
    if not values:
        raise ValueError("label map is empty: nothing to segment")
    unknown = [v for v in values if segment_keys.get(v) not in SEGMENT_CONCEPTS]
    if unknown:
        raise ValueError(f"label values {unknown} have no known segment key")

    # Segment numbers must run 1..N; renumber the present label values in ascending order.
    lut = np.zeros(int(label_map.max()) + 1, dtype=np.uint8)
    descriptions = []
    identification = None
    if algorithm_type is not AlgorithmType.MANUAL:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=_ALGORITHM_FAMILY[algorithm_type], version=algorithm_version)
    for number, value in enumerate(values, start=1):
        lut[value] = number
        key = segment_keys[value]
        concept = SEGMENT_CONCEPTS[key]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=concept.label,
            segmented_property_category=concept.category, segmented_property_type=concept.type,
            algorithm_type=algorithm_type.value, algorithm_identification=identification,
            tracking_id=key, tracking_uid=uid("seg-tracking", key),
            anatomic_regions=[concept.anatomic_region] if concept.anatomic_region else None,
        ))
    uses_local = any(SEGMENT_CONCEPTS[segment_keys[v]].type.scheme_designator == codes.LOCAL_SCHEME
                     for v in values)
    with warnings.catch_warnings():
        # Pseudonymous PatientNames are one component by design; highdicom warns about those.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(source_images, lut[label_map], descriptions, uid, algorithm_name,
                            algorithm_version, content_date, content_time, uses_local)
    for number, value in enumerate(values, start=1):
        seg.SegmentSequence[number - 1].SegmentDescription = f"{segment_keys[value]} (label value {value})"
    _make_deterministic(seg, uid, content_date, content_time)
    return seg


def _segmentation(source_images: Sequence[Dataset], pixels: np.ndarray,
                  descriptions: list[hd.seg.SegmentDescription], uid: Callable[..., str], algorithm_name: str,
                  algorithm_version: str, content_date: str, content_time: str,
                  uses_local: bool) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uid("seg-series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uid("seg"),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name=SEG_MODEL,
        software_versions=SEG_SOFTWARE_VERSION,
        device_serial_number="0",
        content_label=SEG_CONTENT_LABEL,
        content_description=f"{algorithm_name} {algorithm_version} label map"[:64],
        series_description=f"Segmentation {algorithm_name}"[:64],
        content_date=content_date,
        content_time=content_time,
        series_date=content_date,
        series_time=content_time,
        coding_schemes=[_local_scheme()] if uses_local else None,
    )


def _make_deterministic(seg: Dataset, uid: Callable[..., str], date: str, time: str) -> None:
    """Replace what highdicom takes from the wall clock or a random UID."""
    seg.InstanceCreationDate = date
    seg.InstanceCreationTime = time
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps its own contribution with now()
            item.ContributionDateTime = date + time
    dim_uid = uid("seg-dimension-organization")
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dim_uid
