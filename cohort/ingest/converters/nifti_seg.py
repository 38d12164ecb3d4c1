"""NIfTI label maps -> DICOM SEG on the patient's stored CT series.

The file name names the patient (``segmentation.link_pattern`` in site.yaml), the label values name
the structures (``segmentation.labels``). The label map must lie on the CT's voxel grid; its voxel
order may differ (any axis permutation and flips), which the affine resolves. NIfTI world space is
RAS, DICOM's is LPS.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from pydicom.dataset import Dataset

from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.seg import build_segmentation
from cohort.errors import InputError, MissingReferenceError
from cohort.ingest.base import STAGE_ANNOTATIONS, ConversionResult, Converter, IngestContext, InputHead
from cohort.siteconfig import IdKind, SegmentationSource, SiteConfig

__all__ = ["NiftiSegmentationConverter", "CtGrid", "ct_grid", "nifti_to_grid"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ROTATION_TOL = 1e-3  # NIfTI stores its affine as float32
_OFFSET_TOL = 1e-2  # voxels
_NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = (b"n+2\x00", b"ni2\x00")


def _is_nifti(data: bytes) -> bool:
    if len(data) >= 348 and data[344:348] in _NIFTI1_MAGIC:
        return struct.unpack_from("<i", data)[0] == 348 or struct.unpack_from(">i", data)[0] == 348
    if len(data) >= 12 and data[4:8] in _NIFTI2_MAGIC:
        return struct.unpack_from("<i", data)[0] == 540 or struct.unpack_from(">i", data)[0] == 540
    return False


@dataclass(frozen=True)
class CtGrid:
    """A CT series' voxel grid: slices sorted along the normal, and the (slice, row, col) -> LPS affine."""

    series_uid: str
    datasets: tuple[Dataset, ...]
    affine: np.ndarray  # 4x4, index (slice, row, column, 1) -> LPS mm

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns))

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3))


def ct_grid(series_uid: str, datasets: list[Dataset]) -> CtGrid:
    """The voxel grid of a single-frame image series; ValueError if it is not a regular grid."""
    if not datasets:
        raise ValueError("series has no images")
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    order = sorted(datasets, key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])))
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in order])
    if len(order) > 1:
        steps = np.diff(positions, axis=0)
        step = steps.mean(axis=0)
        if np.abs(steps - step).max() > 1e-3 * max(1.0, float(np.linalg.norm(step))):
            raise ValueError("slices are not evenly spaced")
    else:
        step = normal * float(order[0].get("SpacingBetweenSlices") or order[0].get("SliceThickness") or 1.0)
    row_spacing, col_spacing = (float(v) for v in order[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * row_spacing  # next row: down the column direction
    affine[:3, 2] = row_dir * col_spacing  # next column: along the row direction
    affine[:3, 3] = positions[0]
    return CtGrid(series_uid, tuple(order), affine)


def nifti_to_grid(data: np.ndarray, affine_ras: np.ndarray, grid: CtGrid) -> np.ndarray | None:
    """``data`` reoriented onto ``grid`` (slice, row, column), or None if it is not on that grid.

    Only axis permutations and flips are allowed: the label map must have the CT's matrix, spacing
    and position, as any export on the CT's grid has.
    """
    to_ct = np.linalg.inv(grid.affine) @ (_LPS_TO_RAS @ affine_ras)  # NIfTI index -> CT index
    rot, offset = to_ct[:3, :3], to_ct[:3, 3]
    signed_perm = np.rint(rot)
    if not np.allclose(rot, signed_perm, atol=_ROTATION_TOL):
        return None
    if not (np.abs(signed_perm).sum(axis=0) == 1).all() or not (np.abs(signed_perm).sum(axis=1) == 1).all():
        return None
    axes = [int(np.argmax(np.abs(signed_perm[b]))) for b in range(3)]  # NIfTI axis for each CT axis
    out = np.transpose(data, axes)
    if out.shape != grid.shape:
        return None
    for b in range(3):
        sign = signed_perm[b, axes[b]]
        expected = 0.0 if sign > 0 else grid.shape[b] - 1
        if abs(offset[b] - expected) > _OFFSET_TOL:
            return None
        if sign < 0:
            out = np.flip(out, axis=b)
    return np.ascontiguousarray(out)


class NiftiSegmentationConverter(Converter):
    """NIfTI-1/2 label maps named by ``segmentation.link_pattern`` -> one binary DICOM SEG."""

    name: ClassVar[str] = "nifti-seg"
    linked_by_name = True
    stage: ClassVar[int] = STAGE_ANNOTATIONS
    description: ClassVar[str] = "NIfTI label maps (segmentations) on a stored CT series"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        return _is_nifti(head.data)

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        cfg = ctx.site.segmentation
        if cfg is None:
            raise InputError("the site config has no segmentation settings; add a 'segmentation:' block "
                             "to site.yaml (labels, link_pattern, algorithm_type)", path=str(path),
                             field="segmentation")
        patient = self._patient(path, cfg, ctx)
        labels, affine = _load_nifti(path)
        present = [int(v) for v in np.unique(labels) if v != 0]
        if not present:
            raise InputError("label map has no labelled voxel (all values 0); export the segmentation "
                             "again with its structures", path=str(path), field="labels")
        unknown = [v for v in present if v not in cfg.labels]
        if unknown:
            known = ", ".join(f"{k}={v}" for k, v in sorted(cfg.labels.items()))
            raise InputError(
                f"label values {unknown} are not named in site.yaml (known: {known}); add them under "
                "segmentation.labels as value: segment key (calcification, membranous_septum, "
                "left_ventricle, right_ventricle)", path=str(path), field="segmentation.labels")
        grid, on_grid = self._matching_ct(path, patient, labels, affine, ctx)
        first = grid.datasets[0]
        seg = build_segmentation(
            grid.datasets, on_grid, {v: cfg.labels[v] for v in present},
            algorithm_type=cfg.algorithm_type, algorithm_name=cfg.algorithm_name,
            algorithm_version=cfg.algorithm_version, uid=ctx.uid,
            # The NIfTI carries no creation time: use the CT's, so equal inputs give equal bytes.
            content_date=str(first.get("StudyDate") or first.get("SeriesDate") or "19000101"),
            content_time=str(first.get("StudyTime") or "000000"),
        )
        apply_patient(seg, patient)
        return ConversionResult(datasets=[seg])

    @staticmethod
    def _patient(path: Path, cfg: SegmentationSource, ctx: IngestContext) -> PatientRef:
        try:
            match = re.search(cfg.link_pattern, path.name)
        except re.error as exc:
            raise InputError(f"segmentation.link_pattern '{cfg.link_pattern}' is not a valid regular "
                             f"expression ({exc}); fix it in site.yaml", path=str(path),
                             field="segmentation.link_pattern") from None
        if match is None:
            raise InputError(f"file name {path.name!r} does not match segmentation.link_pattern "
                             f"'{cfg.link_pattern}'; rename the file or adjust the pattern in site.yaml",
                             path=str(path), field="segmentation.link_pattern")
        groups = {k: v for k, v in match.groupdict().items() if v}
        kind: IdKind | None = "pacs_id" if "pacs_id" in groups else "case_id" if "case_id" in groups else None
        if kind is None:
            raise InputError(f"segmentation.link_pattern '{cfg.link_pattern}' has no named group "
                             "(?P<pacs_id>...) or (?P<case_id>...); add one in site.yaml", path=str(path),
                             field="segmentation.link_pattern")
        return ctx.patients.resolve(kind, groups[kind], path=path, field="file name")

    @staticmethod
    def _matching_ct(path: Path, patient: PatientRef, labels: np.ndarray, affine: np.ndarray,
                     ctx: IngestContext) -> tuple[CtGrid, np.ndarray]:
        candidates = ctx.store.series_of(patient.patient_id, "CT")
        if not candidates:
            raise MissingReferenceError(
                f"no CT series of patient {patient.pacs_id} (pseudonym {patient.patient_id}) in the store; "
                "ingest the patient's CT (PACS export) together with or before its segmentation",
                path=str(path), field="CT series")
        tried = []
        for series in candidates:
            # The store's own files, checked when they were ingested: read the headers only.
            datasets: list[Dataset] = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
            try:
                grid = ct_grid(series.series_uid, datasets)
            except (ValueError, AttributeError, TypeError) as exc:
                tried.append(f"{series.series_uid} (not a regular image grid: {exc})")
                continue
            on_grid = nifti_to_grid(labels, affine, grid)
            if on_grid is not None:
                return grid, on_grid
            tried.append(f"{series.series_uid} shape {grid.shape} (slice, row, column), spacing "
                         f"{_fmt(grid.spacing)} mm")
        zooms = _fmt(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        axcodes = "".join(nib.aff2axcodes(affine))
        raise InputError(
            f"label map shape {labels.shape} with voxel size {zooms} mm ({axcodes}) does not lie on the "
            f"voxel grid of any stored CT series of the patient: {'; '.join(tried)}; export the "
            "segmentation on the CT's grid (same matrix, spacing and position)", path=str(path),
            field="shape/affine")


def _fmt(values: object) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"  # type: ignore[attr-defined]


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer label array (NIfTI voxel order) and RAS affine; InputError if unreadable."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        size = struct.unpack_from("<i", raw)[0]
        size = size if size in (348, 540) else struct.unpack_from(">i", raw)[0]
        image_class = nib.Nifti2Image if size == 540 else nib.Nifti1Image
        img = image_class.from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, struct.error, ImageFileError, HeaderDataError) as exc:
        raise InputError(f"NIfTI file is truncated or corrupt ({type(exc).__name__}: {exc}); export the "
                         "segmentation again", path=str(path), field="NIfTI data") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map must be 3-D, got shape {data.shape}; export one label volume per file",
                         path=str(path), field="dim")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
            raise InputError("label map has non-integer values (a probability map?); export integer labels",
                             path=str(path), field="datatype")
    if data.min() < 0:
        raise InputError(f"label map has negative value {data.min()}; labels must be 0 (background) or "
                         "positive", path=str(path), field="labels")
    return data.astype(np.int64), img.affine
