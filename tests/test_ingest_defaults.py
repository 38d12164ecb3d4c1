"""`cohort ingest DIR --store S` without a site.yaml: defaults, a pseudonym key kept in the store."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.dicom.patient import pseudonym
from cohort.errors import ConfigError
from cohort.ingest.site_defaults import generated_config_path, site_id_from_folder
from cohort.siteconfig import load_site_config
from cohort.store import Store

runner = CliRunner()
_register()
PACS_IDS = {"CT_small.dcm": "1CT1", "waveform_ecg.dcm": "642341"}


def _dicom_folder(root: Path) -> Path:
    """``ROOT/klinikum-west/raw`` with two plain DICOM files from pydicom's test data."""
    raw = root / "klinikum-west" / "raw"
    raw.mkdir(parents=True)
    for name in PACS_IDS:
        path = get_testdata_file(name)
        assert isinstance(path, str), f"pydicom test file {name} is missing"
        shutil.copyfile(path, raw / name)
    return raw


def _ingest(*args: str) -> tuple[int, str, object]:
    res = runner.invoke(app, ["ingest", *args, "--quiet"])
    return res.exit_code, res.output, res.exception


def test_dicom_folder_ingests_with_defaults_and_pseudonyms(tmp_path: Path) -> None:
    raw, store = _dicom_folder(tmp_path), tmp_path / "store"
    code, output, exc = _ingest(str(raw), "--store", str(store), "--report", str(tmp_path / "r.json"))
    assert code == 0, f"{output}\n{exc!r}"
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert (report["inputs"], report["converted"], report["quarantined"]) == (2, 2, 0)
    assert report["site_id"] == "klinikum-west"  # from SITE/raw
    assert "no site.yaml" in output and "klinikum-west" in output
    generated = generated_config_path(store)
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600  # the key is readable by its owner only
    site = load_site_config(generated)
    stored = {str(pydicom.dcmread(p).SOPInstanceUID): str(pydicom.dcmread(p).PatientID)
              for p in Store(store).files()}
    for name, pacs in PACS_IDS.items():
        uid = str(pydicom.dcmread(raw / name).SOPInstanceUID)
        assert stored[uid] == pseudonym(site.pseudonym_key, "klinikum-west", pacs)  # never the raw id
    assert not any(pacs in p.read_bytes().decode("latin-1") for p in Store(store).files() for pacs in PACS_IDS)

    (raw / "more").mkdir()
    ds = pydicom.dcmread(raw / "CT_small.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["defaults", "second slice"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(raw / "more" / "ct2.dcm")
    code, output, exc = _ingest(str(raw), "--store", str(store))  # the second run reuses the key
    assert code == 0, f"{output}\n{exc!r}"
    second = pydicom.dcmread(next(p for p in Store(store).files() if p.stem == ds.SOPInstanceUID))
    assert second.PatientID == stored[str(pydicom.dcmread(raw / "CT_small.dcm").SOPInstanceUID)]


def test_csv_without_site_yaml_is_quarantined_naming_the_keys(tmp_path: Path) -> None:
    raw, store = _dicom_folder(tmp_path), tmp_path / "store"
    (raw / "registry.csv").write_text("FALLNR;GROESSE\nF1;170\n", encoding="utf-8")
    code, output, exc = _ingest(str(raw), "--store", str(store), "--report", str(tmp_path / "r.json"))
    assert code == 0, f"{output}\n{exc!r}"
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["converted"] == 2 and [q["input"] for q in report["quarantine"]] == ["registry.csv"]
    reason = report["quarantine"][0]["reason"]
    for words in ("no site.yaml", "--site-config", "registry.columns", "procedures.columns", "identifiers",
                  "';'"):
        assert words in reason, reason


def test_site_id_option_and_a_contradicting_one(tmp_path: Path) -> None:
    raw, store = _dicom_folder(tmp_path), tmp_path / "store"
    assert _ingest(str(raw), "--store", str(store), "--site-id", "uk-west")[0] == 0
    assert load_site_config(generated_config_path(store)).site_id == "uk-west"
    code, _output, exc = _ingest(str(raw), "--store", str(store), "--site-id", "uk-east")
    assert code != 0 and isinstance(exc, ConfigError)
    assert "ingested as site 'uk-west'" in str(exc) and "--site-id uk-west" in str(exc)


def test_keys_are_never_mixed_in_one_store(tmp_path: Path) -> None:
    raw, store = _dicom_folder(tmp_path), tmp_path / "store"
    other = tmp_path / "site.yaml"
    other.write_text(f"site_id: klinikum-west\nstore: {store}\npseudonym_key: {'s' * 24}\n", encoding="utf-8")
    assert _ingest(str(raw), "--store", str(store))[0] == 0  # defaults: a generated key
    code, _output, exc = _ingest(str(raw), "--site-config", str(other))
    assert code != 0 and isinstance(exc, ConfigError) and "pseudonym_key" in str(exc)

    filled = tmp_path / "filled-with-site-yaml"
    assert _ingest(str(raw), "--site-config", str(other), "--store", str(filled))[0] == 0
    code, _output, exc = _ingest(str(raw), "--store", str(filled))  # now without the site.yaml
    assert code != 0 and isinstance(exc, ConfigError) and "--site-config" in str(exc)


@pytest.mark.parametrize(("args", "words"), [
    (["{raw}"], ("no site config at", "--store STORE", "--site-config")),
    ([], ("RAW_DIR", "--from-dicomweb")),
], ids=["no-store", "no-raw-dir"])
def test_what_is_missing_is_named(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    raw = _dicom_folder(tmp_path)
    code, _output, exc = _ingest(*[a.format(raw=raw) for a in args])
    assert code != 0 and isinstance(exc, ConfigError)
    for word in words:
        assert word in str(exc)


@pytest.mark.parametrize(("folder", "expected"), [
    ("Klinikum Süd", "klinikum-s-d"), ("uk-nord/raw", "uk-nord"), ("exports_2024", "exports_2024"),
])
def test_site_id_from_folder(tmp_path: Path, folder: str, expected: str) -> None:
    assert site_id_from_folder(tmp_path / folder) == expected
