"""Incomplete DICOM at ingest: truncated files, attributes the SOP class requires, pydicom's warnings."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from cohort.dicom.conformance import find_truncation, missing_attributes
from cohort.ingest.pipeline import IngestRun
from cohort.ingest.registry import default_converters
from cohort.ingest.report import IngestReport
from cohort.ingest.run import ingest_folder
from cohort.siteconfig import SiteConfig, Strictness, StrictnessLevel

VALID_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "JPEG2000.dcm",
               "SC_rgb_rle.dcm", "MR_small_bigendian.dcm", "ExplVR_BigEndNoMeta.dcm", "image_dfl.dcm",
               "rtdose.dcm", "rtstruct.dcm"]


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} is missing; reinstall pydicom"
    return Path(path)


def _site(t1: StrictnessLevel = "warn", t2: StrictnessLevel = "warn") -> SiteConfig:
    return SiteConfig(site_id="conformance", store="store", pseudonym_key="k" * 20,
                      strictness=Strictness(missing_type1=t1, missing_type2=t2))


def _ingest(raw: Path, store: Path, site: SiteConfig | None = None) -> IngestReport:
    from cohort.store import Store

    return IngestRun(raw, Store(store), site or _site(), default_converters(), workers=1).run()


def _plan_without_label_and_date(path: Path) -> pydicom.Dataset:
    """pydicom's complete RT Plan without RT Plan Label (type 1) and RT Plan Date (type 2)."""
    ds = pydicom.dcmread(_testfile("rtplan.dcm"))
    del ds.RTPlanLabel, ds.RTPlanDate
    ds.save_as(path)
    return ds


@pytest.mark.parametrize("name", VALID_FILES)
def test_complete_files_are_not_called_truncated(name: str) -> None:
    assert find_truncation(_testfile(name).read_bytes()) is None


@pytest.mark.parametrize(("name", "words"), [
    ("rtplan_truncated.dcm", ("BeamSequence (300A,00B0)", "declares 976 bytes", "711")),
    ("MR_truncated.dcm", ("PixelData (7FE0,0010)", "declares 8192 bytes")),
])
def test_pydicoms_truncated_files_are_found(name: str, words: tuple[str, ...]) -> None:
    cut = find_truncation(_testfile(name).read_bytes())
    assert cut is not None
    for word in words:
        assert word in cut.describe()


def test_cut_inside_an_element_header_names_the_element() -> None:
    raw = _testfile("CT_small.dcm").read_bytes()
    start = raw.find(b"\xe0\x7f\x10\x00")  # the Pixel Data tag (explicit VR little endian)
    cut = find_truncation(raw[:start + 6])
    assert cut is not None and "header of PixelData (7FE0,0010)" in cut.describe()
    assert find_truncation(raw[:start]) is None  # a clean cut between elements: the SOP class tells


def test_missing_attributes_lists_type1_and_type2(tmp_path: Path) -> None:
    ds = _plan_without_label_and_date(tmp_path / "plan.dcm")
    found = {(m.keyword, m.type, m.module) for m in missing_attributes(ds)}
    assert found == {("RTPlanLabel", "1", "rt-general-plan"), ("RTPlanDate", "2", "rt-general-plan")}
    ds.RTPlanLabel = ""  # present but empty: still missing for type 1
    assert [(m.keyword, m.empty) for m in missing_attributes(ds) if m.type == "1"] == [("RTPlanLabel", True)]
    assert missing_attributes(pydicom.dcmread(_testfile("rtplan.dcm"))) == []


@pytest.mark.parametrize(("name", "missing"), [
    ("test-SR.dcm", []),  # SR content items: the tables merge every value type's macro there
    ("liver_1frame.dcm", ["NumberOfFrames"]),  # SEG: functional groups list every macro, most conditional
    ("waveform_ecg.dcm", []),
    ("rtdose.dcm", ["OperatorsName"]),  # type 2 of the RT Series module, really absent in this file
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose.dcm's UIDs are too long
def test_conditional_macros_raise_no_false_alarms(name: str, missing: list[str]) -> None:
    assert [m.keyword for m in missing_attributes(pydicom.dcmread(_testfile(name)))] == missing


def test_each_missing_attribute_is_a_warning_on_its_object(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    plan = _plan_without_label_and_date(raw / "plan.dcm")
    report = _ingest(raw, tmp_path / "store")
    assert (report.converted, report.quarantined) == (1, 0)
    on_plan = [w for w in report.warnings if w.input == "plan.dcm"]
    assert {w.sop_uid for w in on_plan} == {plan.SOPInstanceUID}
    label, date = sorted((w.message for w in on_plan), key=lambda m: "RTPlanDate" in m)
    assert len(on_plan) == 2
    assert "type 1 attribute RTPlanLabel (300A,0002)" in label and "RT Plan Storage requires it" in label
    assert "type 2 attribute RTPlanDate (300A,0006)" in date
    again = _ingest(raw, tmp_path / "store")  # replayed from the journal: the same warnings
    assert again.this_run["replayed"] == 1 and again.warnings == report.warnings


@pytest.mark.parametrize(("t1", "t2", "outcome", "n_warnings"), [
    ("quarantine", "warn", "quarantined", 0),
    ("warn", "quarantine", "quarantined", 0),
    ("warn", "ignore", "converted", 1),
    ("ignore", "ignore", "converted", 0),
])
def test_strictness_setting_decides(tmp_path: Path, t1: StrictnessLevel, t2: StrictnessLevel, outcome: str,
                                    n_warnings: int) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _plan_without_label_and_date(raw / "plan.dcm")
    report = _ingest(raw, tmp_path / "store", _site(t1, t2))
    assert (report.converted, report.quarantined) == ((1, 0) if outcome == "converted" else (0, 1))
    assert len(report.warnings) == n_warnings
    if outcome == "quarantined":
        assert "strictness" in report.quarantine[0].reason and "RTPlan" in report.quarantine[0].reason


def test_attribute_the_export_needs_quarantines_even_when_ignored(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    del ds.PixelSpacing
    ds.save_as(raw / "ct.dcm")
    report = _ingest(raw, tmp_path / "store", _site("ignore", "ignore"))
    assert report.quarantined == 1
    reason = report.quarantine[0].reason
    assert "PixelSpacing (0028,0030)" in reason and "the index or the export needs PixelSpacing" in reason


def test_truncated_rt_plan_is_quarantined(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(_testfile("rtplan_truncated.dcm"), raw / "plan.dcm")
    report = _ingest(raw, tmp_path / "store")
    assert report.quarantined == 1 and report.converted == 0
    assert "truncated" in report.quarantine[0].reason and "export it again" in report.quarantine[0].reason


def test_pydicom_warnings_go_into_the_report_with_the_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"1A", 0, False, True)  # Series Number
    ds.save_as(raw / "bad_series_number.dcm")
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        report = ingest_folder(raw, tmp_path / "store", _site())  # converts and indexes
    assert report.converted == 1 and report.indexed_files == 1
    assert [(w.input, w.message.split(".")[0]) for w in report.warnings] == \
        [("bad_series_number.dcm", "pydicom: Invalid value for VR IS: '1A'")]
    assert not [w for w in escaped if "Invalid value" in str(w.message)]  # none printed bare


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the process pool needs fork")
def test_pydicom_warnings_are_caught_in_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cohort.ingest import pipeline

    monkeypatch.setattr(pipeline, "_MIN_POOL_INPUTS", 1)
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(_testfile("CT_small.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["conformance", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 3, f"{k}A ".encode(), 0, False, True)
        ds.save_as(raw / f"ct{k}.dcm")
    from cohort.store import Store

    report = IngestRun(raw, Store(tmp_path / "store"), _site(), default_converters(), workers=2).run()
    assert sorted(w.input for w in report.warnings) == ["ct0.dcm", "ct1.dcm", "ct2.dcm"]
    assert all(f"'{w.input[2]}A" in w.message for w in report.warnings)
