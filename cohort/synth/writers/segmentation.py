"""Synthetic segmentation exports: the label map as NIfTI-1, named the way the site's tool names it.

NIfTI's world space is RAS, DICOM's is LPS: x and y change sign. Sites differ in voxel order, as
their tools do: most keep the scanner's order (column, row, slice, as dcm2niix writes it), the
fully automatic pipeline stores canonical RAS (axes flipped so the affine's diagonal is positive).
The converter must handle both through the affine.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from cohort.synth.anatomy import CtGeometry, ct_geometry
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile
from cohort.synth.writers.ct import label_volume

__all__ = ["write_segmentation", "segmentation_file_name", "nifti_affine", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEGMENTATION_DIR = "segmentations"


def nifti_affine(geom: CtGeometry) -> np.ndarray:
    """RAS affine of an array in (column, row, slice) order on ``geom`` (identity orientation)."""
    lps = np.eye(4)
    lps[0, 0], lps[1, 1], lps[2, 2] = geom.spacing[2], geom.spacing[1], geom.spacing[0]
    lps[:3, 3] = geom.origin
    return LPS_TO_RAS @ lps


def segmentation_file_name(link_pattern: str, pacs_id: str) -> str:
    """A file name that ``link_pattern`` matches with group ``pacs_id`` equal to ``pacs_id``.

    Understands the simple patterns site configs use: anchors, one named group, escaped literals
    and optional literal groups such as ``(\\.gz)?`` (taken, so the file is gzipped).
    """
    name = link_pattern.removeprefix("^").removesuffix("$")
    name = re.sub(r"\(\?P<pacs_id>[^)]*\)", lambda _: pacs_id.replace("\\", "\\\\"), name)
    name = re.sub(r"\((?!\?)([^()]*)\)\?", r"\1", name)  # optional literal group: include it
    name = re.sub(r"\\(.)", r"\1", name)
    match = re.search(link_pattern, name)
    if match is None or match.groupdict().get("pacs_id") != pacs_id:
        raise ValueError(f"cannot derive a file name from link_pattern {link_pattern!r}; "
                         "use a pattern of literals with one named group (?P<pacs_id>...)")
    return name


def write_segmentation(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the patient's label map under ``raw_dir/segmentations/``; [] if the site exported none."""
    seg_cfg = profile.config.segmentation
    if patient.ct is None or not patient.ct.has_segmentation or seg_cfg is None:
        return []
    geom = ct_geometry(profile.ct, patient)
    labels_cxs = label_volume(patient, profile).transpose(2, 1, 0)  # (slice,row,col) -> (col,row,slice)
    affine = nifti_affine(geom)
    if seg_cfg.algorithm_type == "AUTOMATIC":
        # Canonical RAS: flip the axes whose direction is negative in RAS (x and y here).
        labels_cxs = labels_cxs[::-1, ::-1, :]
        flip = np.eye(4)
        flip[0, 0], flip[1, 1] = -1, -1
        flip[0, 3], flip[1, 3] = geom.shape[2] - 1, geom.shape[1] - 1
        affine = affine @ flip
    img = nib.Nifti1Image(np.ascontiguousarray(labels_cxs), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    name = segmentation_file_name(seg_cfg.link_pattern, patient.pacs_id)
    folder = Path(raw_dir) / SEGMENTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    data = img.to_bytes()
    # Compress ourselves with a zero mtime: the same patient always gives the same bytes.
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return [path]
