"""Synthetic cardiac CT: a phantom drawn from ``anatomy.anatomy()`` and its PACS-style DICOM export.

The same structure masks give the CT intensities and the label map, so a segmentation written from
``label_volume`` lines up voxel by voxel with the image written by ``write_ct_series``.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from cohort.dicom.uids import derived_uid
from cohort.synth.anatomy import Anatomy, CtGeometry, anatomy, ct_geometry
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile

__all__ = ["ct_volume", "label_volume", "structure_masks", "write_ct_series", "ct_series_folder",
           "CT_SERIES_NUMBER"]

# Hounsfield units of the phantom's tissues (contrast-enhanced cardiac CT, arterial phase).
HU_AIR = -1000
HU_LUNG = -850
HU_SOFT_TISSUE = 40
HU_MYOCARDIUM = 90
HU_SEPTUM = 70
HU_BLOOD_POOL = 350  # aortic root and left ventricle: contrast bolus
HU_RIGHT_HEART = 250  # right ventricle is less opacified in the arterial phase
HU_CALCIUM = 900
CALCIUM_MIN_HU = 600  # every calcified voxel stays above this, whatever the noise
NOISE_SD_HU = 10.0

# Stored pixel values are unsigned 12-bit with a rescale intercept, as most scanners write them.
RESCALE_INTERCEPT = -1024
BITS_STORED = 12
CT_SERIES_NUMBER = 2  # series 1 is the topogram on real scanners; it is not exported here

MYOCARDIUM_MM = 3.0
VESSEL_WALL_MM = 1.5
SEPTUM_RADIUS_MM = 1.5


def _grids(geom: CtGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (mm) of voxel centres as broadcastable (z, y, x) arrays."""
    s, r, c = geom.shape
    z = (geom.origin[2] + np.arange(s) * geom.spacing[0]).reshape(s, 1, 1)
    y = (geom.origin[1] + np.arange(r) * geom.spacing[1]).reshape(1, r, 1)
    x = (geom.origin[0] + np.arange(c) * geom.spacing[2]).reshape(1, 1, c)
    return z, y, x


def _min_radius(geom: CtGeometry) -> float:
    # Half the voxel diagonal: a sphere this large always contains at least one voxel centre,
    # so small structures never vanish on coarse grids.
    return 0.5 * float(np.sqrt(sum(d * d for d in geom.spacing))) + 1e-6


def structure_masks(anat: Anatomy, geom: CtGeometry) -> dict[str, np.ndarray]:
    """Boolean masks (slice, row, column) of every phantom structure, keyed by name.

    Keys: body, lungs, aortic_wall, aortic_root, myocardium, left_ventricle, right_ventricle,
    membranous_septum, calcification. Structures may overlap; painters decide the order.
    """
    z, y, x = _grids(geom)
    s, r, c = geom.shape
    cx = geom.origin[0] + (c - 1) * geom.spacing[2] / 2
    cy = geom.origin[1] + (r - 1) * geom.spacing[1] / 2
    width, height = c * geom.spacing[2], r * geom.spacing[1]
    full = np.ones((s, 1, 1), dtype=bool)

    def sphere(center: tuple[float, float, float], radius: float) -> np.ndarray:
        return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius ** 2

    def ellipse(ex: float, ey: float, ax: float, ay: float) -> np.ndarray:
        return full & (((x - ex) / ax) ** 2 + ((y - ey) / ay) ** 2 <= 1.0)

    body = ellipse(cx, cy, 0.46 * width, 0.40 * height)
    lungs = ellipse(cx - 0.30 * width, cy, 0.11 * width, 0.26 * height) | ellipse(
        cx + 0.30 * width, cy, 0.11 * width, 0.26 * height)

    ac = anat.annulus_center
    radial = (x - ac[0]) ** 2 + (y - ac[1]) ** 2
    above = z >= ac[2] - 2.0  # the root starts just below the annulus and runs up as the aorta
    aortic_root = above & (radial <= anat.annulus_radius_mm ** 2)
    aortic_wall = above & (radial <= (anat.annulus_radius_mm + VESSEL_WALL_MM) ** 2) & ~aortic_root

    lv = sphere(anat.lv_center, anat.ventricle_radius_mm)
    myocardium = sphere(anat.lv_center, anat.ventricle_radius_mm + MYOCARDIUM_MM) & ~lv
    rv = sphere(anat.rv_center, anat.ventricle_radius_mm)

    st = anat.septum_start
    septum_r = max(SEPTUM_RADIUS_MM, _min_radius(geom))
    septum = ((x - st[0]) ** 2 + (y - st[1]) ** 2 <= septum_r ** 2) & (z <= st[2]) & (
        z >= st[2] - anat.septum_length_mm)
    if not septum.any():  # septum shorter than one slice: keep the slice nearest its start
        k = int(round((st[2] - geom.origin[2]) / geom.spacing[0]))
        septum = ((x - st[0]) ** 2 + (y - st[1]) ** 2 <= septum_r ** 2) & (
            np.arange(s).reshape(s, 1, 1) == k)

    calcium = np.zeros(geom.shape, dtype=bool)
    for center, radius in anat.calcium_nodules:
        calcium |= sphere(center, max(radius, _min_radius(geom)))

    shape = geom.shape
    return {name: np.broadcast_to(m, shape).copy() for name, m in (
        ("body", body), ("lungs", lungs), ("aortic_wall", aortic_wall), ("aortic_root", aortic_root),
        ("myocardium", myocardium), ("left_ventricle", lv), ("right_ventricle", rv),
        ("membranous_septum", septum), ("calcification", calcium))}


def _patient_anatomy(patient: SyntheticPatient, profile: SiteProfile) -> tuple[Anatomy, CtGeometry]:
    if patient.ct is None:
        raise ValueError(f"patient {patient.pacs_id} has no CT; check patient.ct before writing one")
    geom = ct_geometry(profile.ct, patient)
    return anatomy(patient, geom), geom


def _seed(patient: SyntheticPatient, purpose: str) -> int:
    digest = hashlib.sha256(f"{patient.site_id}\x00{patient.pacs_id}\x00{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def ct_volume(patient: SyntheticPatient, profile: SiteProfile) -> tuple[np.ndarray, CtGeometry]:
    """The patient's CT in Hounsfield units, int16, shape (slices, rows, columns), and its grid."""
    anat, geom = _patient_anatomy(patient, profile)
    m = structure_masks(anat, geom)
    hu = np.full(geom.shape, HU_AIR, dtype=np.float32)
    # Painter's order: later structures cover earlier ones.
    for name, value in (("body", HU_SOFT_TISSUE), ("lungs", HU_LUNG), ("aortic_wall", HU_MYOCARDIUM),
                        ("myocardium", HU_MYOCARDIUM), ("aortic_root", HU_BLOOD_POOL),
                        ("left_ventricle", HU_BLOOD_POOL), ("right_ventricle", HU_RIGHT_HEART),
                        ("membranous_septum", HU_SEPTUM), ("calcification", HU_CALCIUM)):
        hu[m[name]] = value
    rng = np.random.default_rng(_seed(patient, "ct-noise"))
    hu += rng.normal(0.0, NOISE_SD_HU, size=geom.shape).astype(np.float32)
    hu[m["calcification"]] = np.maximum(hu[m["calcification"]], CALCIUM_MIN_HU)
    lo, hi = RESCALE_INTERCEPT, RESCALE_INTERCEPT + 2 ** BITS_STORED - 1
    return np.clip(np.rint(hu), lo, hi).astype(np.int16), geom


def label_volume(patient: SyntheticPatient, profile: SiteProfile) -> np.ndarray:
    """The site's label map (uint8, CT voxel order) with the label values of its site config.

    Ventricles are labelled only when ``patient.ct.has_ventricle_segments``; where structures overlap,
    the smaller one wins (calcium over septum over ventricles).
    """
    seg_cfg = profile.config.segmentation
    if seg_cfg is None:
        raise ValueError(f"site {profile.site_id} has no segmentation settings (site.yaml: segmentation)")
    anat, geom = _patient_anatomy(patient, profile)
    assert patient.ct is not None
    m = structure_masks(anat, geom)
    value_of = {key: value for value, key in seg_cfg.labels.items()}
    keys = ["left_ventricle", "right_ventricle"] if patient.ct.has_ventricle_segments else []
    keys += ["membranous_septum", "calcification"]
    labels = np.zeros(geom.shape, dtype=np.uint8)
    for key in keys:
        if key in value_of:
            labels[m[key]] = value_of[key]
    return labels


def _ds(value: float) -> str:
    """A decimal string without float noise (e.g. -25.6, not -25.600000000000001)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _age(born: date, on: date) -> str:
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{years:03d}Y"


def _accession(patient: SyntheticPatient) -> str:
    assert patient.ct is not None
    return f"{patient.ct.acquired:%y%m%d}{patient.index + 1:06d}"


def ct_series_folder(patient: SyntheticPatient, raw_dir: Path) -> Path:
    """Where the series lands: ``raw_dir/pacs/<pacs_id>/<study>/<series>`` as a PACS export writes it."""
    assert patient.ct is not None
    study = f"ST{patient.ct.acquired:%Y%m%d}_{_accession(patient)}"
    return Path(raw_dir) / "pacs" / patient.pacs_id / study / f"SE{CT_SERIES_NUMBER:04d}"


def _series_template(patient: SyntheticPatient, profile: SiteProfile, geom: CtGeometry) -> Dataset:
    """Attributes shared by every slice (patient, study, series, equipment, frame of reference)."""
    assert patient.ct is not None
    ct = profile.ct
    uid = lambda role: derived_uid(profile.site_id, patient.pacs_id, role)  # noqa: E731
    study_time = f"{8 + patient.index % 9:02d}{(patient.index * 7) % 60:02d}00"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"  # Latin-1: umlauts in names, as German PACS export them
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = f"{patient.ct.acquired:%Y%m%d}"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = _accession(patient)
    ds.Modality = "CT"
    ds.Manufacturer = ct.manufacturer
    ds.InstitutionName = profile.display_name
    ds.ReferringPhysicianName = "Kardiologie^Station"
    ds.StudyDescription = "CT Herz TAVI-Planung"
    ds.SeriesDescription = ct.series_description
    ds.ManufacturerModelName = ct.model
    ds.PatientName = f"{patient.family_name}^{patient.given_name}"
    ds.PatientID = patient.pacs_id
    ds.PatientBirthDate = f"{patient.birth_date:%Y%m%d}"
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, patient.ct.acquired)
    ds.BodyPartExamined = "HEART"
    ds.SliceThickness = f"{ct.slice_thickness_mm:g}"
    ds.KVP = str(ct.kvp)
    ds.ConvolutionKernel = ct.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid("ct-study")
    ds.SeriesInstanceUID = uid("ct-series")
    ds.StudyID = "1"
    ds.SeriesNumber = CT_SERIES_NUMBER
    ds.AcquisitionNumber = 1
    # Axial slices with identity orientation: rows run along +x (left), columns along +y (posterior).
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uid("ct-frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = geom.shape[1], geom.shape[2]
    ds.PixelSpacing = [f"{geom.spacing[1]:g}", f"{geom.spacing[2]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = "300"
    ds.WindowWidth = "1200"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_ct_series(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the patient's CT as one CT Image Storage file per slice; [] if the patient has no CT."""
    if patient.ct is None:
        return []
    volume, geom = ct_volume(patient, profile)
    stored = (volume.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    folder = ct_series_folder(patient, raw_dir)
    folder.mkdir(parents=True, exist_ok=True)
    template = _series_template(patient, profile, geom)
    paths = []
    for k in range(geom.shape[0]):
        ds = Dataset()
        ds.update(template)
        sop_uid = derived_uid(profile.site_id, patient.pacs_id, "ct-image", str(k))
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        pos = geom.slice_position(k)
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(pos[2])
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = folder / f"IM{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
