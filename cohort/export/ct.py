"""A stored CT series as a NIfTI volume in Hounsfield units with the correct orientation and spacing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from cohort.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_ct_volume(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read a single-frame CT series: (volume in HU as (columns, rows, slices) float32, LPS affine).

    Slices are ordered along the slice normal by ImagePositionPatient, not by instance number.
    """
    if not files:
        raise InputError("empty CT series")
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    row_dir = np.array(first.ImageOrientationPatient[:3], dtype=float)
    col_dir = np.array(first.ImageOrientationPatient[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=float))))
    positions = np.array([s.ImagePositionPatient for s in slices], dtype=float)
    if len(slices) > 1:
        steps = np.diff(positions @ normal)
        if np.any(steps <= 1e-6):
            raise InputError(f"CT series {first.SeriesInstanceUID} has slices at the same position",
                             field="ImagePositionPatient")
        if not np.allclose(steps, steps[0], rtol=0.01, atol=0.01):
            raise InputError(f"CT series {first.SeriesInstanceUID} has uneven slice spacing "
                             f"({steps.min():.3f}-{steps.max():.3f} mm)", field="ImagePositionPatient")
        dz = float(steps[0])
    else:
        dz = float(first.get("SliceThickness", 1.0) or 1.0)
    rows_mm, cols_mm = (float(x) for x in first.PixelSpacing)  # row spacing, column spacing
    hu = []
    for s in slices:
        slope = float(s.get("RescaleSlope", 1) or 1)
        intercept = float(s.get("RescaleIntercept", 0) or 0)
        hu.append(s.pixel_array.astype(np.float32) * slope + intercept)
    volume = np.stack(hu, axis=-1)  # (rows, columns, slices)
    volume = np.transpose(volume, (1, 0, 2))  # (columns, rows, slices): i along row direction
    affine = np.eye(4)
    affine[:3, 0] = row_dir * cols_mm  # moving along a row = next column
    affine[:3, 1] = col_dir * rows_mm
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[0]
    return volume, affine


def write_ct_nifti(files: Sequence[Path], out: Path) -> Path:
    """Write the series as NIfTI-1 (RAS affine, as NIfTI expects)."""
    volume, affine_lps = load_ct_volume(files)
    img = nib.Nifti1Image(volume.astype(np.int16), LPS_TO_RAS @ affine_lps)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out
