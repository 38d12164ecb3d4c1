"""`cohort export`: datalist, arrays with correct geometry and units, tabular features, cohort hash."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cohort.dicom.patient import pseudonym
from cohort.ecg.readers.dicom_ecg import read_dicom_ecg
from cohort.export import export_cohort
from cohort.export.tabular import TABULAR_FEATURES
from cohort.index.catalog import store_catalog
from cohort.spec.load import load_spec
from cohort.spec.text import parse_text
from fl_client.data import load_datalist

MISSION = Path(__file__).resolve().parent.parent / "configs" / "cohort" / "pacemaker_tavi.yaml"


def _truth(site) -> dict[str, dict[str, str]]:
    with open(site.folder / "truth.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {pseudonym(site.site.pseudonym_key, site.site.site_id, r["pacs_id"]): r for r in rows}


@pytest.fixture(scope="module")
def exported(ingested_sites, tmp_path_factory):
    site = ingested_sites[0]
    out = tmp_path_factory.mktemp("export")
    spec = load_spec(MISSION, catalog=store_catalog(site.store))
    result = export_cohort(site.store, spec, out)
    return site, spec, out, result


def test_datalist_loads_and_holds_every_labelled_cohort_patient(exported):
    site, spec, out, result = exported
    datalist = load_datalist(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.patients == len(manifest["patients"]) > 0
    labelled = [p for p in manifest["patients"] if p["label"] is not None]
    assert len(datalist.entries) == len(labelled)
    assert datalist.cohort_hash == manifest["cohort_hash"] == result.cohort_hash
    assert [f.name for f in datalist.tabular_features] == [f.name for f in TABULAR_FEATURES]


def test_labels_equal_the_generative_model(exported):
    site, _, out, _ = exported
    truth = _truth(site)
    for entry in json.loads((out / "datalist.json").read_text())["training"]:
        assert str(entry["label"]) == truth[entry["patient"]]["label"]


def test_ct_nifti_has_the_dicom_geometry(exported):
    site, _, out, _ = exported
    entry = next(e for e in json.loads((out / "datalist.json").read_text())["training"] if e["ct"])
    img = nib.load(str(out / entry["ct"]))
    series = sorted((site.store / "dicom" / entry["patient"]).glob("*/CT_*/*.dcm"))
    slices = sorted((pydicom.dcmread(f) for f in series), key=lambda d: float(d.ImagePositionPatient[2]))
    first = slices[0]
    assert img.shape == (first.Columns, first.Rows, len(slices))
    # NIfTI world coordinates are RAS: the first voxel sits at (-x, -y, z) of the DICOM LPS position.
    x, y, z = (float(v) for v in first.ImagePositionPatient)
    np.testing.assert_allclose(img.affine[:3, 3], [-x, -y, z], atol=1e-4)
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(spacing[:2], [float(v) for v in first.PixelSpacing][::-1], atol=1e-4)
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, 0], hu.T)


def test_ecg_array_is_millivolts_at_500_hz(exported):
    site, _, out, _ = exported
    entry = next(e for e in json.loads((out / "datalist.json").read_text())["training"] if e["ecg"])
    arr = np.load(out / entry["ecg"])
    assert arr.shape == (12, 5000) and arr.dtype == np.float32
    waveform = next((site.store / "dicom" / entry["patient"]).glob("*/ECG_*/*.dcm"))
    record = read_dicom_ecg(waveform)
    assert record.sampling_frequency == 500
    np.testing.assert_allclose(arr[1], np.asarray(record.leads["II"][:5000]) / 1000.0, atol=1e-4)


def test_tabular_features_come_from_the_registry_and_ecg_report(exported):
    site, _, out, _ = exported
    truth = _truth(site)
    names = [f.name for f in TABULAR_FEATURES]
    checked = 0
    for entry in json.loads((out / "datalist.json").read_text())["training"]:
        values = dict(zip(names, entry["tabular"], strict=True))
        t = truth[entry["patient"]]
        if values["qrs_duration"] is not None and t["qrs_ms"]:
            assert values["qrs_duration"] == pytest.approx(float(t["qrs_ms"]))
            assert values["lbbb"] == float(t["conduction"] == "LBBB")
            assert values["rbbb"] == float(t["conduction"] == "RBBB")
            checked += 1
        if values["self_expanding"] is not None:
            assert values["self_expanding"] == float(t["prosthesis_type"] == "self-expanding")
    assert checked > 0


def test_same_inputs_give_the_same_hash_and_other_specs_another(exported, tmp_path):
    site, spec, out, result = exported
    again = export_cohort(site.store, spec, tmp_path / "again")
    assert again.cohort_hash == result.cohort_hash
    other = parse_text("ct := CT; cohort ct", catalog=store_catalog(site.store))
    assert export_cohort(site.store, other, tmp_path / "other").cohort_hash != result.cohort_hash


def test_unknown_subset_is_a_clear_error(exported, tmp_path):
    from cohort.errors import SpecError

    site, spec, _, _ = exported
    with pytest.raises(SpecError, match="subset"):
        export_cohort(site.store, spec, tmp_path / "x", subset="no-such-subset")
