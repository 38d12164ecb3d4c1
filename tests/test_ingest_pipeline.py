"""The ingest pipeline's promises: every input accounted for, idempotent, duplicates, quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from cohort.ingest.converters.dicom_objects import DicomObjectConverter
from cohort.ingest.pipeline import IngestRun
from cohort.siteconfig import IdentifierMapping, SiteConfig
from cohort.store import Store


def _site() -> SiteConfig:
    return SiteConfig(site_id="test-site", store="store", pseudonym_key="k" * 20,
                      identifiers=IdentifierMapping(file="ids.csv", pacs_id_column="pacs", case_id_column="case"))


def _raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    ct = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(ct, raw / "a" / "ct1.dcm")
    shutil.copy(ct, raw / "a" / "ct1-copy.dcm")  # identical bytes: a duplicate
    ds = pydicom.dcmread(ct)
    ds.SeriesDescription = "re-exported"  # different bytes, same SOP Instance UID: a duplicate too
    ds.save_as(raw / "a" / "ct1-reexport.dcm")
    (raw / "notes.bin").write_bytes(b"\x00\x01garbage that no converter recognises")
    (raw / "truncated.dcm").write_bytes(ct.read_bytes()[:300])
    (raw / ".DS_Store").write_bytes(b"hidden files are not inputs")
    (raw / "ids.csv").write_text("pacs,case\n", encoding="utf-8")
    return raw


def _run(raw: Path, store_dir: Path):
    run = IngestRun(raw, Store(store_dir), _site(), [DicomObjectConverter()])
    return run.run()


def test_every_input_is_converted_duplicate_or_quarantined(tmp_path: Path):
    report = _run(_raw(tmp_path), tmp_path / "store")
    assert report.inputs == 6  # the hidden file is not an input
    assert report.inputs == report.converted + report.duplicates + report.quarantined
    assert report.converted == 1 and report.duplicates == 2 and report.quarantined == 3
    dup_reasons = {d.input: d.reason for d in report.duplicate_inputs}
    assert "SHA-256" in dup_reasons["a/ct1.dcm"] or "SHA-256" in dup_reasons["a/ct1-copy.dcm"]
    assert "SOP Instance UID" in dup_reasons["a/ct1-reexport.dcm"]
    quarantined = {q.input: q for q in report.quarantine}
    assert "not recognised" in quarantined["notes.bin"].reason
    for q in report.quarantine:
        copy = tmp_path / "store" / q.copy
        assert copy.exists() and Path(str(copy) + ".reason.txt").read_text().strip() == q.reason
    assert report.objects_by_sop_class == {"CT Image Storage": 1}


def test_stored_object_is_pseudonymised_and_keeps_uids_and_pixels(tmp_path: Path):
    _run(_raw(tmp_path), tmp_path / "store")
    store = Store(tmp_path / "store")
    files = list(store.files())
    assert len(files) == 1
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stored = pydicom.dcmread(files[0])
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    assert stored.PixelData == original.PixelData
    assert stored.PatientID != original.PatientID and stored.PatientID.startswith("P")
    assert stored.PatientName.family_name == stored.PatientID
    assert files[0].relative_to(store.dicom_dir).parts[0] == stored.PatientID


def test_rerun_is_idempotent(tmp_path: Path):
    raw = _raw(tmp_path)
    first = _run(raw, tmp_path / "store")
    before = {p: p.read_bytes() for p in Store(tmp_path / "store").files()}
    second = _run(raw, tmp_path / "store")
    after = {p: p.read_bytes() for p in Store(tmp_path / "store").files()}
    assert before == after
    assert first.outcome_view() == second.outcome_view()
    assert second.this_run == {"processed": 0, "replayed": 6}


def test_changed_input_is_processed_again(tmp_path: Path):
    raw = _raw(tmp_path)
    _run(raw, tmp_path / "store")
    (raw / "notes.bin").write_bytes(b"still garbage, but other garbage")
    again = _run(raw, tmp_path / "store")
    assert again.this_run["processed"] == 1
    assert again.inputs == 6


def test_torn_journal_line_is_ignored(tmp_path: Path):
    raw = _raw(tmp_path)
    first = _run(raw, tmp_path / "store")
    journal = tmp_path / "store" / ".ingest" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    second = _run(raw, tmp_path / "store")
    assert second.outcome_view() == first.outcome_view()
    assert second.this_run["processed"] == 1


def test_report_json_round_trip(tmp_path: Path):
    report = _run(_raw(tmp_path), tmp_path / "store")
    report.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["inputs"] == data["converted"] + data["duplicates"] + data["quarantined"]
    assert {"inputs", "converted", "duplicates", "quarantined", "objects_by_sop_class", "patients",
            "timings"} <= set(data)


@pytest.mark.parametrize(("text", "names"), [
    ("site_id: x\nstore: s\n", "pseudonym_key"),
    ("site_id: x\nstore: s\npseudonym_key: short\n", "pseudonym_key"),
    ("site_id: x\nstore: s\npseudonym_key: 0123456789abcdef0\nstrictness: {missing_type1: raise}\n",
     "strictness.missing_type1"),
], ids=["no-key", "short-key", "unknown-strictness"])
def test_site_config_errors_name_the_field(tmp_path: Path, text: str, names: str):
    from cohort.errors import ConfigError
    from cohort.siteconfig import load_site_config

    cfg = tmp_path / "site.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=names):
        load_site_config(cfg)


def test_site_config_without_identifier_mapping_is_valid(tmp_path: Path):
    from cohort.siteconfig import load_site_config

    cfg = tmp_path / "site.yaml"
    cfg.write_text("site_id: x\nstore: s\npseudonym_key: 0123456789abcdef0\n")
    site = load_site_config(cfg)
    assert site.identifiers is None
    assert (site.strictness.missing_type1, site.strictness.missing_type2) == ("warn", "warn")
