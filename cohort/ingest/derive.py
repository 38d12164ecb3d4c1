"""Measurements derived from stored annotations, written as TID 1500 measurement SRs.

For every stored SEG with a ``calcification`` or ``membranous_septum`` segment (``cohort/dicom/seg.py``
says which coded concepts those are), one Enhanced SR (TID 1500 Imaging Measurement Report) holds a
volumetric measurement group (TID 1411) per such segment:

* calcification: Calcium volume (122660 DCM) in mm3 = segmented voxels x voxel volume of the CT grid;
* membranous septum: Length (410668003 SCT) in mm = extent of the segment along its first principal
  axis, voxels counted to their faces (a single voxel measures its own extent along that axis).

Each group references its segment (Referenced Segment 121191 DCM, SEG SOP instance and segment
number) and the CT series it was drawn on (Source series for segmentation 121232 DCM); the CT
images and the SEG are the SR's evidence. UIDs derive from the SEG's SOP Instance UID and
``DERIVATION_VERSION``, dates from the SEG: the same SEG always gives the same SR, so deriving
again writes nothing new (``derive_measurements`` skips SEGs whose SR is already stored).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import EnhancedSRStorage

from cohort.dicom import codes
from cohort.dicom.sr_items import declare_local_scheme
from cohort.dicom.uids import derived_uid
from cohort.store import Store

__all__ = ["DERIVATION_VERSION", "DerivedObject", "DeriveResult", "derive_measurements", "derive_one", "measure_seg",
           "SegGeometry", "segment_points", "calcium_volume_mm3", "principal_length_mm", "measurement_sr_uid"]

DERIVATION_VERSION = "1"  # part of the UIDs: a changed derivation writes new SRs next to the old ones
SR_SERIES_NUMBER = 902
SR_SERIES_DESCRIPTION = "Measurements derived from segmentation"
ALGORITHM_NAME = "fedcohort derive-measurements"
MEASURED_SEGMENTS = ("calcification", "membranous_septum")  # segment keys (SEG TrackingID)


@dataclass(frozen=True)
class DerivedObject:
    """One measurement SR for one SEG: whether it was written now or already stored."""

    sop_uid: str
    sop_class: str
    patient_id: str
    seg_uid: str
    written: bool
    path: Path


@dataclass
class DeriveResult:
    objects: list[DerivedObject] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (SEG SOP UID, reason)

    @property
    def written(self) -> int:
        return sum(o.written for o in self.objects)


def measurement_sr_uid(seg_sop_uid: str) -> str:
    """SOP Instance UID of the measurement SR derived from the SEG with this SOP Instance UID."""
    return derived_uid("measurement-sr", DERIVATION_VERSION, seg_sop_uid)


@dataclass(frozen=True)
class SegGeometry:
    """Voxel geometry of a SEG's frames, from its own functional groups (no CT read needed)."""

    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float, float]  # between columns, between rows, between slices (mm)

    @property
    def edges(self) -> np.ndarray:
        """3x3: the voxel's edge vectors (mm) as columns: along a row, along a column, along the normal."""
        normal = np.cross(self.row_dir, self.col_dir)
        return np.column_stack([self.row_dir * self.spacing[0], self.col_dir * self.spacing[1],
                                normal * self.spacing[2]])

    @property
    def voxel_volume(self) -> float:
        return float(abs(np.linalg.det(self.edges)))

    @classmethod
    def of(cls, seg: Dataset) -> SegGeometry:
        shared = seg.SharedFunctionalGroupsSequence[0]
        iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        measures = shared.PixelMeasuresSequence[0]
        row_spacing, col_spacing = (float(v) for v in measures.PixelSpacing)
        gap = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")
        if not gap:
            raise ValueError("the SEG states neither SpacingBetweenSlices nor SliceThickness")
        return cls(np.array(iop[:3]), np.array(iop[3:]), (col_spacing, row_spacing, float(gap)))


def calcium_volume_mm3(points: np.ndarray, geometry: SegGeometry) -> float:
    """Volume of the voxels whose centres are ``points`` (N x 3, LPS mm), in mm3."""
    return float(len(points)) * geometry.voxel_volume


def principal_length_mm(points: np.ndarray, geometry: SegGeometry) -> float:
    """Extent of the voxels at ``points`` along their first principal axis, each voxel counted as its box (mm)."""
    if len(points) == 0:
        return 0.0
    edges = geometry.edges
    centred = points - points.mean(axis=0)
    if len(points) > 1 and np.abs(centred).max() > 0:
        _, vecs = np.linalg.eigh(centred.T @ centred)
        axis = vecs[:, -1]
    else:
        axis = edges[:, 2] / np.linalg.norm(edges[:, 2])  # one voxel: along the slice direction
    proj = points @ axis
    return float(proj.max() - proj.min() + np.abs(axis @ edges).sum())


def _segment_keys(seg: Dataset) -> dict[int, str]:
    """Segment number -> segment key (the TrackingID cohort's SEGs carry) for the measured segments."""
    out = {}
    for item in seg.get("SegmentSequence", []):
        key = str(item.get("TrackingID", "") or "")
        if key in MEASURED_SEGMENTS:
            out[int(item.SegmentNumber)] = key
    return out


def segment_points(seg: Dataset, numbers: Iterable[int]) -> dict[int, np.ndarray]:
    """LPS centres (N x 3, mm) of the voxels of each given segment of a binary SEG."""
    wanted = set(numbers)
    geometry = SegGeometry.of(seg)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    parts: dict[int, list[np.ndarray]] = {n: [] for n in wanted}
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number not in wanted:
            continue
        rc = np.argwhere(pixels[i])  # (row, column)
        if not len(rc):
            continue
        origin = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        parts[number].append(origin + rc[:, 1:2] * geometry.edges[:, 0] + rc[:, 0:1] * geometry.edges[:, 1])
    # Voxels on the same spot in two frames of one segment count once.
    return {n: np.unique(np.round(np.concatenate(p), 3), axis=0) if p else np.zeros((0, 3))
            for n, p in parts.items()}


def measure_seg(seg: Dataset) -> dict[int, tuple[str, float]]:
    """Segment number -> (segment key, value): calcium volume in mm3, membranous septum length in mm."""
    keys = _segment_keys(seg)
    geometry = SegGeometry.of(seg)
    out = {}
    for number, points in sorted(segment_points(seg, keys).items()):
        key = keys[number]
        value = calcium_volume_mm3(points, geometry) if key == "calcification" \
            else principal_length_mm(points, geometry)
        out[number] = (key, round(value, 2))
    return out


def _source_images(seg: Dataset) -> tuple[str, list[Dataset]]:
    """The CT series UID the SEG was drawn on and its images as evidence items (from the SEG's references)."""
    series = seg.ReferencedSeriesSequence[0]
    out = []
    for ref in series.ReferencedInstanceSequence:
        ds = Dataset()
        ds.SOPClassUID = ref.ReferencedSOPClassUID
        ds.SOPInstanceUID = ref.ReferencedSOPInstanceUID
        ds.StudyInstanceUID = seg.StudyInstanceUID
        ds.SeriesInstanceUID = series.SeriesInstanceUID
        out.append(ds)
    return str(series.SeriesInstanceUID), out


def build_measurement_sr(seg: Dataset, values: dict[int, tuple[str, float]]) -> Dataset:
    """The TID 1500 Enhanced SR with one volumetric measurement group per measured segment."""
    seg_uid = str(seg.SOPInstanceUID)
    ct_series_uid, slices = _source_images(seg)
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=DERIVATION_VERSION)
    groups = []
    for number, (key, value) in sorted(values.items()):
        if key == "calcification":
            name, unit, finding, sites = codes.CALCIUM_VOLUME, codes.CUBIC_MILLIMETER, codes.CALCIFIED, \
                [hd.sr.FindingSite(codes.AORTIC_VALVE)]
            label = "Calcification"
        else:
            name, unit, finding, sites = codes.LENGTH, codes.MILLIMETER, codes.MEMBRANOUS_SEPTUM, []
            label = "Membranous septum"
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid("measurement-tracking", DERIVATION_VERSION, seg_uid, str(number)),
                identifier=f"{label} (segment {number})"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=seg_uid, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(ct_series_uid)),
            finding_type=finding, finding_sites=sites or None,
            measurements=[hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("measurement-observer"), name=ALGORITHM_NAME))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=[codes.CT_UNSPECIFIED_BODY_REGION], imaging_measurements=groups)
    date = str(seg.get("ContentDate") or seg.get("SeriesDate") or "19000101")
    time = str(seg.get("ContentTime") or "000000").split(".")[0]
    # highdicom copies patient and study from the first evidence item and walks every item: a header
    # without the SEG's frames and pixels says the same at a fraction of the cost.
    light = Dataset()
    for elem in seg:
        if elem.tag.group not in (0x0028, 0x0062, 0x5200, 0x7FE0) and elem.VR != "SQ":
            light.add(elem)
    evidence = [light, *sorted(slices, key=lambda s: str(s.SOPInstanceUID))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = hd.sr.EnhancedSR(
            evidence=evidence, content=report[0],
            series_instance_uid=derived_uid("measurement-sr-series", DERIVATION_VERSION, seg_uid),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=measurement_sr_uid(seg_uid), instance_number=1,
            manufacturer="FedCohort", is_complete=True, content_date=date, content_time=time,
            series_date=date, series_time=time, series_description=SR_SERIES_DESCRIPTION)
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):  # the wall clock: same SEG, same bytes
        if keyword in sr:
            delattr(sr, keyword)
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    declare_local_scheme(sr, sr)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge"):
        if keyword in seg:
            setattr(sr, keyword, seg.data_element(keyword).value)  # type: ignore[union-attr]
    return sr


def derive_one(store: Store, path: Path) -> tuple[DerivedObject | None, str | None]:
    """Write the measurement SR of the SEG at ``path``: (the SR written, None), (None, None) for a SEG
    without a measured segment, or (None, reason) for a SEG that cannot be measured (its frames off
    its own grid, geometry missing)."""
    seg_uid = Path(path).stem
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if not _segment_keys(header):
        return None, None
    try:
        seg = pydicom.dcmread(path)
        sr = build_measurement_sr(seg, measure_seg(seg))
    except (LookupError, ValueError, AttributeError, IndexError) as exc:
        return None, f"no measurements derived from SEG {seg_uid}: {exc}"
    target = store.write(sr)
    return DerivedObject(str(sr.SOPInstanceUID), str(sr.SOPClassUID), str(sr.PatientID), seg_uid, True,
                         target), None


def derive_measurements(store: Store, seg_paths: Iterable[Path] | None = None,
                        mapper: Callable[[list[Path]], Iterable[tuple[DerivedObject | None, str | None]]]
                        | None = None) -> DeriveResult:
    """Write the measurement SR of every SEG in ``seg_paths`` (default: every stored SEG) that lacks one.

    A SEG without a measured segment gets no SR; a SEG that cannot be measured is listed in
    ``problems`` and skipped. ``mapper`` runs ``derive_one`` over the SEGs still to derive (the ingest
    pipeline passes its worker pool); by default they are derived here, one after the other.
    """
    if seg_paths is None:
        seg_paths = sorted(store.dicom_dir.glob("*/*/SEG_*/*.dcm"))
    result = DeriveResult()
    todo = []
    for path in seg_paths:
        seg_uid = Path(path).stem
        sr_uid = measurement_sr_uid(seg_uid)
        if store.has(sr_uid):
            patient = Path(path).parents[2].name
            result.objects.append(DerivedObject(sr_uid, EnhancedSRStorage, patient, seg_uid, False,
                                                store.sop_paths()[sr_uid]))
        else:
            todo.append(Path(path))
    outcomes = mapper(todo) if mapper is not None else (derive_one(store, p) for p in todo)
    for path, (obj, problem) in zip(todo, outcomes, strict=True):
        if obj is not None:
            store.sop_paths()[obj.sop_uid] = obj.path  # written by a worker: this process's map learns it
            result.objects.append(obj)
        elif problem is not None:
            result.problems.append((path.stem, problem))
    return result
