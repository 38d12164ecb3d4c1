"""Geometry of a synthetic cardiac CT and where the TAVI-relevant anatomy lies in it.

CT volume, NIfTI label maps and landmark point sets are all drawn from this one description, so
segmentations line up with the image and landmarks fall inside the volume. Coordinates are DICOM
patient coordinates (LPS, millimetres); volumes are axial with identity orientation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import CtProfile

Point = tuple[float, float, float]


@dataclass(frozen=True)
class CtGeometry:
    """Voxel grid of one CT series: array index order (slice, row, column) = (z, y, x)."""

    shape: tuple[int, int, int]  # slices, rows, columns
    spacing: tuple[float, float, float]  # slice spacing, row spacing, column spacing (mm)
    origin: Point  # LPS position of voxel (0, 0, 0): ImagePositionPatient of the first slice

    def slice_position(self, k: int) -> Point:
        return (self.origin[0], self.origin[1], self.origin[2] + k * self.spacing[0])

    def voxel_to_lps(self, zyx: tuple[float, float, float]) -> Point:
        z, y, x = zyx
        return (self.origin[0] + x * self.spacing[2], self.origin[1] + y * self.spacing[1],
                self.origin[2] + z * self.spacing[0])

    def lps_to_voxel(self, p: Point) -> tuple[float, float, float]:
        return ((p[2] - self.origin[2]) / self.spacing[0], (p[1] - self.origin[1]) / self.spacing[1],
                (p[0] - self.origin[0]) / self.spacing[2])

    def contains(self, p: Point) -> bool:
        v = self.lps_to_voxel(p)
        return all(-0.5 <= c <= n - 0.5 for c, n in zip(v, self.shape, strict=True))


@dataclass(frozen=True)
class Anatomy:
    """TAVI-relevant structures of one patient, in LPS millimetres."""

    annulus_center: Point
    annulus_radius_mm: float
    hinge_points: tuple[Point, Point, Point]  # nadirs of the three cusps, on the annulus ring
    left_ostium: Point
    right_ostium: Point
    septum_start: Point  # membranous septum runs from here downwards (inferior) ...
    septum_length_mm: float  # ... for this length
    lv_center: Point
    rv_center: Point
    ventricle_radius_mm: float
    calcium_nodules: tuple[tuple[Point, float], ...]  # (center, radius mm), on the annulus ring


def ct_geometry(ct: CtProfile, patient: SyntheticPatient) -> CtGeometry:
    """The site's voxel grid, centred on the annulus; table height varies a little per patient."""
    rows, cols, slices = ct.matrix
    spacing = (ct.slice_thickness_mm, ct.pixel_spacing_mm, ct.pixel_spacing_mm)
    table_z = -150.0 + (patient.index % 7) * 3.0
    origin = (-cols * spacing[2] / 2, -rows * spacing[1] / 2, table_z - slices * spacing[0] / 2)
    return CtGeometry((slices, rows, cols), spacing, origin)


def anatomy(patient: SyntheticPatient, geom: CtGeometry) -> Anatomy:
    """Place the structures so that all of them lie inside ``geom`` (checked by the writers' tests)."""
    assert patient.ct is not None, "anatomy() needs a patient with a CT"
    cz = geom.origin[2] + geom.shape[0] * geom.spacing[0] / 2
    cx = geom.origin[0] + geom.shape[2] * geom.spacing[2] / 2
    cy = geom.origin[1] + geom.shape[1] * geom.spacing[1] / 2
    extent_z = geom.shape[0] * geom.spacing[0]
    half_xy = min(geom.shape[1] * geom.spacing[1], geom.shape[2] * geom.spacing[2]) / 2
    radius = min(patient.ct.annulus_diameter_mm / 2, half_xy * 0.45)
    rng = np.random.default_rng(patient.index)
    jitter = rng.uniform(-1.5, 1.5, size=3)  # patients differ in where the annulus sits in the scan
    center = (cx + float(jitter[0]), cy + float(jitter[1]), cz + extent_z * 0.05 + float(jitter[2]) * 0.5)
    hinges = tuple(
        (center[0] + radius * math.cos(a), center[1] + radius * math.sin(a), center[2])
        for a in (math.radians(90), math.radians(210), math.radians(330))
    )
    up = min(12.0, extent_z * 0.3)
    left_ostium = (center[0] + radius * 0.9, center[1] - radius * 0.3, center[2] + up)
    right_ostium = (center[0] - radius * 0.6, center[1] - radius * 0.7, center[2] + up * 0.9)
    septum_len = min(patient.ct.membranous_septum_mm, extent_z * 0.35)
    septum_start = (center[0] - radius * 0.2, center[1] + radius * 1.05, center[2] - 1.0)
    v_radius = min(9.0, half_xy * 0.35, extent_z * 0.2)
    lv = (center[0] + half_xy * 0.45, center[1] + half_xy * 0.25, center[2] - extent_z * 0.28)
    rv = (center[0] - half_xy * 0.45, center[1] - half_xy * 0.15, center[2] - extent_z * 0.28)
    n_nodules = int(np.clip(patient.ct.calcium_volume_mm3 / 60, 1, 12))
    nodule_r = float(np.clip((patient.ct.calcium_volume_mm3 / n_nodules * 3 / (4 * math.pi)) ** (1 / 3), 1.0, 4.0))
    nodules = []
    for _ in range(n_nodules):
        a = float(rng.uniform(0, 2 * math.pi))
        dz = float(rng.uniform(-2.0, 2.0))
        nodules.append(((center[0] + radius * math.cos(a), center[1] + radius * math.sin(a), center[2] + dz),
                        nodule_r))
    return Anatomy(center, radius, hinges, left_ostium, right_ostium, septum_start,  # type: ignore[arg-type]
                   septum_len, lv, rv, v_radius, tuple(nodules))
