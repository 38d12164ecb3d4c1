"""Synthetic CT series and NIfTI segmentations, and their conversion to stored DICOM (CT, SEG)."""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cohort.dicom import codes
from cohort.dicom.patient import pseudonym
from cohort.dicom.uids import derived_uid
from cohort.dicom.validate import dciodvfy
from cohort.errors import InputError, MissingReferenceError
from cohort.ingest.base import IngestContext, InputHead
from cohort.ingest.converters.dicom_objects import DicomObjectConverter
from cohort.ingest.converters.nifti_seg import NiftiSegmentationConverter
from cohort.synth.anatomy import anatomy, ct_geometry
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES, SiteProfile
from cohort.synth.writers.ct import CALCIUM_MIN_HU, ct_volume, label_volume, write_ct_series
from cohort.synth.writers.segmentation import write_segmentation
from tests.helpers import make_context

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# All four sites: MANUAL / SEMIAUTOMATIC / AUTOMATIC creators, LPS- and RAS-ordered NIfTI, .nii and
# .nii.gz, and four different CT matrices.
PROFILE_IDS = [p.site_id for p in PROFILES]


def _patient(profile: SiteProfile, *, ventricles: bool = True) -> SyntheticPatient:
    patients = generate_site(7, profile.site_id, 60, profile.mix, profile.pacs_prefix, profile.case_prefix)
    return next(p for p in patients
                if p.ct and p.ct.has_segmentation and p.ct.has_ventricle_segments == ventricles)


@dataclass
class Case:
    """One site's patient with a CT and a segmentation, its raw export and its converted CT."""

    profile: SiteProfile
    patient: SyntheticPatient
    raw: Path
    store: Path
    ct_files: list[Path]
    nifti: Path

    def ctx(self, digest: str = "1" * 64) -> IngestContext:
        return make_context(self.raw, site=self.profile.config, store_folder=self.store, digest=digest)

    @property
    def patient_id(self) -> str:
        return pseudonym(self.profile.config.pseudonym_key, self.profile.site_id, self.patient.pacs_id)


@pytest.fixture(scope="module", params=range(len(PROFILES)), ids=PROFILE_IDS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    profile = PROFILES[request.param]
    patient = _patient(profile)
    root = tmp_path_factory.mktemp(profile.site_id)
    raw, store = root / "raw", root / "store"
    store.mkdir()
    ct_files = write_ct_series(patient, profile, raw)
    (nifti,) = write_segmentation(patient, profile, raw)
    ctx = make_context(raw, site=profile.config, store_folder=store)
    conv = DicomObjectConverter()
    for f in ct_files:
        (ds,) = conv.convert(f, ctx).datasets
        ds.save_as(store / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return Case(profile, patient, raw, store, ct_files, nifti)


def _seg_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _convert_seg(case: Case, path: Path | None = None, digest: str = "1" * 64) -> pydicom.Dataset:
    (seg,) = NiftiSegmentationConverter().convert(path or case.nifti, case.ctx(digest)).datasets
    return seg


def _write_nifti(img: nib.Nifti1Image, path: Path) -> Path:
    data = img.to_bytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


# --- CT writer -------------------------------------------------------------------------------------
def test_ct_series_is_valid_with_site_attributes(case: Case) -> None:
    ct, p = case.profile.ct, case.patient
    rows, cols, slices = ct.matrix
    assert len(case.ct_files) == slices
    assert case.ct_files[0].relative_to(case.raw).parts[:2] == ("pacs", p.pacs_id)
    picks = [case.ct_files[0], case.ct_files[slices // 2], case.ct_files[-1]]
    for res in dciodvfy(picks):
        assert res.errors == [], res.errors
    datasets = [pydicom.dcmread(f) for f in case.ct_files]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.PatientID == p.pacs_id
    assert str(first.PatientName) == f"{p.family_name}^{p.given_name}"
    assert first.PatientBirthDate == p.birth_date.strftime("%Y%m%d")
    born, seen = p.birth_date, p.ct.acquired
    age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    assert (first.PatientSex, first.PatientAge) == (p.sex, f"{age:03d}Y")
    assert first.StudyDate == p.ct.acquired.strftime("%Y%m%d")
    assert first.SeriesDescription == ct.series_description
    assert (first.Manufacturer, first.ManufacturerModelName) == (ct.manufacturer, ct.model)
    assert int(first.KVP) == ct.kvp and first.ConvolutionKernel == ct.kernel
    assert float(first.SliceThickness) == ct.slice_thickness_mm
    assert [float(v) for v in first.PixelSpacing] == [ct.pixel_spacing_mm] * 2
    assert (first.Rows, first.Columns) == (rows, cols)
    assert first.AccessionNumber
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(d[key].value) for d in datasets}) == 1
    assert first.SeriesInstanceUID == derived_uid(case.profile.site_id, p.pacs_id, "ct-series")
    assert len({d.SOPInstanceUID for d in datasets}) == slices
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    assert np.allclose(np.diff(z), ct.slice_thickness_mm)
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    volume, geom = ct_volume(p, case.profile)
    assert np.array_equal(hu, volume)
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(geom.origin, abs=1e-4)


def test_phantom_intensities_follow_the_labels(case: Case) -> None:
    volume, _ = ct_volume(case.patient, case.profile)
    labels = label_volume(case.patient, case.profile)
    value_of = {k: v for v, k in case.profile.config.segmentation.labels.items()}
    assert volume[labels == value_of["calcification"]].min() >= CALCIUM_MIN_HU
    assert 300 < volume[labels == value_of["left_ventricle"]].mean() < 400  # contrast blood pool
    assert 20 < volume[labels == value_of["membranous_septum"]].mean() < 120  # soft tissue
    assert volume.min() <= -900  # air and lungs


def test_anatomy_inside_volume_and_labels_per_patient() -> None:
    profile = PROFILES[0]
    for ventricles in (True, False):
        p = _patient(profile, ventricles=ventricles)
        geom = ct_geometry(profile.ct, p)
        a = anatomy(p, geom)
        points = [a.annulus_center, *a.hinge_points, a.left_ostium, a.right_ostium, a.septum_start,
                  a.lv_center, a.rv_center, *(c for c, _ in a.calcium_nodules)]
        assert all(geom.contains(pt) for pt in points)
        present = set(np.unique(label_volume(p, profile))) - {0}
        expected = {1, 2, 3, 4} if ventricles else {1, 2}  # calcium, septum (+ LV, RV)
        assert present == expected


def test_ct_writer_is_deterministic(tmp_path: Path) -> None:
    profile = PROFILES[2]
    p = _patient(profile)
    a = write_ct_series(p, profile, tmp_path / "a")
    b = write_ct_series(p, profile, tmp_path / "b")
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    assert write_segmentation(p, profile, tmp_path / "a")[0].read_bytes() == \
        write_segmentation(p, profile, tmp_path / "b")[0].read_bytes()


# --- NIfTI writer ----------------------------------------------------------------------------------
def test_nifti_is_named_by_the_pattern_and_maps_to_ras(case: Case) -> None:
    cfg = case.profile.config.segmentation
    match = re.search(cfg.link_pattern, case.nifti.name)
    assert match and match.group("pacs_id") == case.patient.pacs_id
    assert case.nifti.parent == case.raw / "segmentations"
    assert (case.nifti.read_bytes()[:2] == b"\x1f\x8b") == case.nifti.name.endswith(".gz")
    img = nib.load(case.nifti)
    geom = ct_geometry(case.profile.ct, case.patient)
    lv = anatomy(case.patient, geom).lv_center
    ras = np.array([-lv[0], -lv[1], lv[2], 1.0])  # LPS -> RAS
    ijk = np.rint(np.linalg.inv(img.affine) @ ras)[:3].astype(int)
    lv_value = {k: v for v, k in cfg.labels.items()}["left_ventricle"]
    assert np.asanyarray(img.dataobj)[tuple(ijk)] == lv_value
    assert sorted(img.shape) == sorted(geom.shape)


# --- NIfTI -> SEG ----------------------------------------------------------------------------------
def _seg_label_map(seg: pydicom.Dataset, case: Case) -> np.ndarray:
    """Rebuild the site's label map in CT order from the SEG's frames, without highdicom."""
    slices = {derived_uid(case.profile.site_id, case.patient.pacs_id, "ct-image", str(k)): k
              for k in range(len(case.ct_files))}
    value_of = {k: v for v, k in case.profile.config.segmentation.labels.items()}
    segment_value = {int(s.SegmentNumber): value_of[s.TrackingID] for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out = np.zeros((len(slices), seg.Rows, seg.Columns), dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[slices[src]][frame.astype(bool)] = segment_value[number]
    return out


def test_seg_is_valid_and_voxel_exact(case: Case, tmp_path: Path) -> None:
    seg = _convert_seg(case)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    (res,) = dciodvfy([path])
    assert res.errors == [], res.errors
    assert np.array_equal(_seg_label_map(pydicom.dcmread(path), case), label_volume(case.patient, case.profile))


def test_seg_describes_segments_and_references_the_ct(case: Case) -> None:
    seg = _convert_seg(case)
    cfg = case.profile.config.segmentation
    ct = pydicom.dcmread(case.ct_files[0], stop_before_pixels=True)
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.Modality == "SEG"
    ctx = case.ctx()
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == (ctx.uid("seg-series"), ctx.uid("seg"))
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.PatientID == case.patient_id != case.patient.pacs_id
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == ct.SeriesInstanceUID
    assert len(ref.ReferencedInstanceSequence) == len(case.ct_files)
    expected = {
        "calcification": ("Calcification", codes.MORPHOLOGICALLY_ALTERED_STRUCTURE, codes.CALCIFIED),
        "membranous_septum": ("Membranous septum", codes.ANATOMICAL_STRUCTURE, codes.MEMBRANOUS_SEPTUM),
        "left_ventricle": ("Left ventricle", codes.ANATOMICAL_STRUCTURE, codes.LEFT_VENTRICLE),
        "right_ventricle": ("Right ventricle", codes.ANATOMICAL_STRUCTURE, codes.RIGHT_VENTRICLE),
    }
    assert [s.TrackingID for s in seg.SegmentSequence] == [cfg.labels[v] for v in sorted(cfg.labels)]
    for s in seg.SegmentSequence:
        label, category, type_ = expected[s.TrackingID]
        assert s.SegmentLabel == label
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category.value
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == type_.value
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == type_.scheme_designator
        assert s.SegmentAlgorithmType == cfg.algorithm_type
        if cfg.algorithm_type == "MANUAL":
            assert "SegmentationAlgorithmIdentificationSequence" not in s
        else:
            alg = s.SegmentationAlgorithmIdentificationSequence[0]
            assert (alg.AlgorithmName, alg.AlgorithmVersion) == (cfg.algorithm_name, cfg.algorithm_version)
    calc = next(s for s in seg.SegmentSequence if s.TrackingID == "calcification")
    assert calc.AnatomicRegionSequence[0].CodeValue == codes.AORTIC_VALVE.value
    schemes = {i.CodingSchemeDesignator for i in seg.CodingSchemeIdentificationSequence}
    assert codes.LOCAL_SCHEME in schemes
    assert "SEG" in hd.seg.Segmentation.from_dataset(seg).Modality


def test_seg_conversion_is_deterministic(case: Case) -> None:
    assert _seg_bytes(_convert_seg(case)) == _seg_bytes(_convert_seg(case))
    assert _convert_seg(case, digest="2" * 64).SOPInstanceUID != _convert_seg(case).SOPInstanceUID


def test_reoriented_nifti_gives_the_same_seg(case: Case, tmp_path: Path) -> None:
    img = nib.load(case.nifti)
    # Another voxel order (axes permuted, two flipped); nibabel updates the affine.
    other = img.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))
    moved = _write_nifti(nib.Nifti1Image(np.asanyarray(other.dataobj), other.affine),
                         tmp_path / case.nifti.name)
    assert nib.aff2axcodes(nib.load(moved).affine) != nib.aff2axcodes(img.affine)
    assert _convert_seg(case, moved).PixelData == _convert_seg(case).PixelData


# --- bad inputs ------------------------------------------------------------------------------------
def _labels_img(case: Case) -> nib.Nifti1Image:
    img = nib.load(case.nifti)
    return nib.Nifti1Image(np.asanyarray(img.dataobj).copy(), img.affine)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_shape_mismatch_names_both_shapes(case: Case, tmp_path: Path) -> None:
    img = _labels_img(case)
    cropped = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 1:], img.affine)
    path = _write_nifti(cropped, tmp_path / case.nifti.name)
    with pytest.raises(InputError) as err:
        _convert_seg(case, path)
    rows, cols, slices = case.profile.ct.matrix
    assert str(cropped.shape) in str(err.value) and str((slices, rows, cols)) in str(err.value)
    assert case.nifti.name in str(err.value)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_file_name_not_matching_the_pattern(case: Case, tmp_path: Path) -> None:
    path = _write_nifti(_labels_img(case), tmp_path / "unknown_patient.nii.gz")
    with pytest.raises(InputError, match="does not match segmentation.link_pattern") as err:
        _convert_seg(case, path)
    assert case.profile.config.segmentation.link_pattern in str(err.value)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_unknown_label_value(case: Case, tmp_path: Path) -> None:
    img = _labels_img(case)
    data = np.asanyarray(img.dataobj)
    data[0, 0, 0] = 9
    path = _write_nifti(nib.Nifti1Image(data, img.affine), tmp_path / case.nifti.name)
    with pytest.raises(InputError, match=r"label values \[9\].*segmentation\.labels"):
        _convert_seg(case, path)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_empty_label_map(case: Case, tmp_path: Path) -> None:
    img = _labels_img(case)
    path = _write_nifti(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), tmp_path / case.nifti.name)
    with pytest.raises(InputError, match="no labelled voxel"):
        _convert_seg(case, path)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_truncated_nifti(case: Case, tmp_path: Path, gz: bool) -> None:
    data = _labels_img(case).to_bytes()
    name = case.nifti.name if gz else case.nifti.name.removesuffix(".gz")
    blob = gzip.compress(data, mtime=0) if gz else data
    path = tmp_path / name
    path.write_bytes(blob[: len(blob) // 2])
    assert NiftiSegmentationConverter().sniff(InputHead.read(path), case.profile.config)
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        _convert_seg(case, path)
    assert name in str(err.value)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_no_ct_in_store(case: Case, tmp_path: Path) -> None:
    ctx = make_context(case.raw, site=case.profile.config, store_folder=tmp_path)
    with pytest.raises(MissingReferenceError, match="no CT series"):
        NiftiSegmentationConverter().convert(case.nifti, ctx)


@pytest.mark.parametrize("case", [0], indirect=True, ids=[PROFILE_IDS[0]])
def test_dicom_missing_sop_instance_uid(case: Case, tmp_path: Path) -> None:
    ds = pydicom.dcmread(case.ct_files[0])
    del ds.SOPInstanceUID
    path = tmp_path / "no_uid.dcm"
    ds.save_as(path)
    with pytest.raises(InputError) as err:
        DicomObjectConverter().convert(path, make_context(tmp_path))
    assert err.value.field == "SOPInstanceUID" and "no_uid.dcm" in str(err.value)


def test_garbage_is_not_sniffed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    samples = {"random.bin": rng.bytes(4096), "text.dcm": "PatientID;Name\n1;Müller\n".encode() * 50,
               "zeros.nii": bytes(1024), "short.dcm": b"\x08\x00"}
    site = PROFILES[0].config
    for name, blob in samples.items():
        path = tmp_path / name
        path.write_bytes(blob)
        head = InputHead.read(path)
        assert not DicomObjectConverter().sniff(head, site), name
        assert not NiftiSegmentationConverter().sniff(head, site), name


# --- real DICOM files from pydicom ----------------------------------------------------------------
def _convert_file(path: Path, tmp_path: Path) -> pydicom.Dataset:
    (ds,) = DicomObjectConverter().convert(path, make_context(tmp_path)).datasets
    out = tmp_path / "converted.dcm"
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(out)


def test_pydicom_ct_small_keeps_uids_and_pixels(tmp_path: Path) -> None:
    src_path = Path(get_testdata_file("CT_small.dcm"))
    src = pydicom.dcmread(src_path)
    assert DicomObjectConverter().sniff(InputHead.read(src_path), PROFILES[0].config)
    out = _convert_file(src_path, tmp_path)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                "FrameOfReferenceUID"):
        assert out[key].value == src[key].value
    assert out.PixelData == src.PixelData
    assert out.PatientID == pseudonym(PROFILES[0].config.pseudonym_key, PROFILES[0].site_id, src.PatientID)
    assert out.PatientName.family_name == out.PatientID and out.PatientBirthDate == ""
    assert out.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
    assert src.preamble[:2] == b"II" and out.preamble == bytes(128)  # TIFF-like preamble dropped
    (res,) = dciodvfy([tmp_path / "converted.dcm"])
    assert res.errors == []


def test_pydicom_seg_and_sr_convert(tmp_path: Path) -> None:
    seg_src = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"))
    seg = _convert_file(Path(get_testdata_file("liver_1frame.dcm")), tmp_path)
    assert (seg.SOPInstanceUID, seg.PixelData) == (seg_src.SOPInstanceUID, seg_src.PixelData)
    assert seg.ReferencedSeriesSequence == seg_src.ReferencedSeriesSequence

    sr_path = Path(get_testdata_file("test-SR.dcm"))
    with pytest.raises(InputError) as err:  # pydicom's SR has an empty PatientID
        DicomObjectConverter().convert(sr_path, make_context(tmp_path))
    assert err.value.field == "PatientID"
    sr_src = pydicom.dcmread(sr_path)
    sr_src.PatientID = "SR0001"  # as the PACS would have exported it
    fixed = tmp_path / "sr.dcm"
    sr_src.save_as(fixed)
    sr = _convert_file(fixed, tmp_path)
    assert sr.SOPInstanceUID == sr_src.SOPInstanceUID and sr.ContentSequence == sr_src.ContentSequence
    assert sr.PatientID.startswith("P") and sr.PatientID != "SR0001"


def test_ecg_waveforms_are_left_to_the_ecg_converter() -> None:
    path = Path(get_testdata_file("waveform_ecg.dcm"))
    assert not DicomObjectConverter().sniff(InputHead.read(path), PROFILES[0].config)


def test_bare_data_set_without_preamble_converts(tmp_path: Path) -> None:
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    bare = tmp_path / "bare.dcm"
    src.file_meta = pydicom.dataset.FileMetaDataset()  # no meta group, as some exporters write it
    src.preamble = None
    src.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[:2] == b"\x08\x00"  # starts with group 0008, no preamble
    assert DicomObjectConverter().sniff(InputHead.read(bare), PROFILES[0].config)
    out = _convert_file(bare, tmp_path)
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert out.SOPInstanceUID == src.SOPInstanceUID and out.PixelData == src.PixelData
