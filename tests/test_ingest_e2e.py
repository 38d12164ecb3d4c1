"""End to end: a synthesized 4-site consortium through ingest, the reference validators, re-runs,
a kill -9 in the middle of an ingest, and the ``cohort`` command line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    SegmentationStorage,
)

from cohort.dicom.patient import pseudonym
from cohort.ingest.report import IngestReport
from cohort.ingest.run import ingest_folder
from cohort.ingest.validation import validate_store
from cohort.siteconfig import SiteConfig, load_site_config
from cohort.synth.site import SynthSite, synthesize_consortium

pytestmark = pytest.mark.slow

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXPECTED_SOP_CLASSES = {CTImageStorage: "CT", SegmentationStorage: "SEG", TWELVE_LEAD_ECG: "12-lead ECG",
                        COMPREHENSIVE_SR: "Comprehensive SR", COMPREHENSIVE_3D_SR: "Comprehensive 3D SR"}
VALIDATORS = ("dciodvfy", "DicomSRValidator", "dsrdump")
SEED = 11
PATIENTS = 3
# CT and SEG keyed by PACS id, registry and procedures by case number, ECG by either (site.yaml).
EVERY_KIND = {"CT", "SEG", "ECG", "ECG report", "TAVI registry record", "OPS procedure history",
              "TAVI landmarks (3D Slicer markups)"}
INDEX_FILES = ("index.duckdb", "index.duckdb.wal")


def _cohort(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``cohort`` console script of this environment."""
    exe = Path(sys.executable).with_name("cohort")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def _snapshot(store: Path) -> dict[str, bytes]:
    """Every file of a store by relative path (the index, a derived cache, and the journal excluded)."""
    out = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if p.is_file() and rel not in INDEX_FILES and not rel.startswith(".ingest/"):
            out[rel] = p.read_bytes()
    return out


def _journal_entries(store: Path) -> list[dict]:
    entries = []
    for line in (store / ".ingest" / "journal.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by the kill; the re-run wrote that input's entry again
    return entries


@dataclass
class SiteRun:
    synth: SynthSite
    site: SiteConfig
    store: Path
    report: IngestReport


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> list[SiteRun]:
    root = tmp_path_factory.mktemp("e2e")
    sites = synthesize_consortium(root / "consortium", 4, PATIENTS, SEED)
    runs = []
    for s in sites:
        site = load_site_config(s.site_config)
        store = root / "stores" / s.site_id
        runs.append(SiteRun(s, site, store, ingest_folder(s.raw_dir, store, site, index=False)))
    return runs


def _headers(store: Path) -> list[tuple[Path, Dataset]]:
    return [(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in sorted((store / "dicom").rglob("*.dcm"))]


def _walk(items: object) -> Iterator[Dataset]:
    for item in items or []:  # type: ignore[union-attr]
        yield item
        yield from _walk(item.get("ContentSequence"))


def test_every_input_converted_and_objects_valid(consortium: list[SiteRun]) -> None:
    totals: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    for run in consortium:
        r = run.report
        r.check_invariant()
        assert r.quarantined == 0 and r.duplicates == 0, [q.reason for q in r.quarantine]
        assert r.inputs == run.synth.files
        summary = validate_store(run.store)
        for tool in VALIDATORS:
            assert summary.checked[tool] > 0, f"{run.synth.site_id}: {tool} checked nothing"
            assert summary.error_count[tool] == 0, summary.failures[:3]
        totals.update(summary.checked)
        warnings.update(summary.warning_count)
    print(f"\nvalidated {dict(totals)} files; warnings {dict(warnings)}; errors 0")


def test_every_expected_sop_class_is_present(consortium: list[SiteRun]) -> None:
    found = {str(ds.SOPClassUID) for run in consortium for _, ds in _headers(run.store)}
    missing = [name for uid, name in EXPECTED_SOP_CLASSES.items() if uid not in found]
    assert missing == []


def test_one_patient_id_per_patient_across_object_kinds(consortium: list[SiteRun]) -> None:
    complete: list[str] = []  # patients with every kind of object, all under one PatientID
    for run in consortium:
        with open(run.synth.folder / "truth.csv", encoding="utf-8") as fh:
            truth = list(csv.DictReader(fh))
        expected = {pseudonym(run.site.pseudonym_key, run.site.site_id, t["pacs_id"]): t for t in truth}
        headers = _headers(run.store)
        kinds: dict[str, set[str]] = defaultdict(set)
        by_sop = {str(ds.SOPInstanceUID): ds for _, ds in headers}
        ct_series: dict[str, tuple[str, str]] = {}  # series UID -> (PatientID, FrameOfReferenceUID)
        for _, ds in headers:
            assert ds.PatientID in expected, f"{run.synth.site_id}: unexpected PatientID {ds.PatientID}"
            assert str(ds.PatientName) == f"{ds.PatientID}^"
            kinds[ds.PatientID].add(str(ds.get("SeriesDescription", ds.Modality)) if ds.Modality == "SR"
                                    else str(ds.Modality))
            if ds.Modality == "CT":
                ct_series[str(ds.SeriesInstanceUID)] = (ds.PatientID, str(ds.FrameOfReferenceUID))
        # Sources keyed by PACS id (CT, DICOM ECG, NIfTI, markups) and by case number (registry,
        # procedures, free text, some ECG systems) meet under one PatientID.
        for pid, t in expected.items():
            assert kinds[pid] & {"TAVI registry record", "OPS procedure history"}, (run.synth.site_id, t, kinds[pid])
            if t["has_ct"] == "1":
                assert "CT" in kinds[pid]
            if t["has_ecg"] == "1":
                assert {"ECG", "ECG report"} <= kinds[pid], (run.synth.site_id, t["pacs_id"], kinds[pid])
        complete.extend(pid for pid, k in kinds.items() if k >= EVERY_KIND)
        for _, ds in headers:
            sop_class = str(ds.SOPClassUID)
            if sop_class == SegmentationStorage:
                refs = [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence]
                assert refs and all(ct_series[ref][0] == ds.PatientID for ref in refs)
            elif sop_class == COMPREHENSIVE_3D_SR:
                evidence = [str(s.SeriesInstanceUID) for study in ds.CurrentRequestedProcedureEvidenceSequence
                            for s in study.ReferencedSeriesSequence]
                assert evidence and all(ct_series[ref][0] == ds.PatientID for ref in evidence)
                frames = {str(i.ReferencedFrameOfReferenceUID) for i in _walk(ds.ContentSequence)
                          if i.get("ValueType") == "SCOORD3D"}
                assert frames and frames <= {ct_series[ref][1] for ref in evidence}
            elif ds.Modality == "SR" and ds.get("SeriesDescription") == "ECG report":
                waveforms = [str(ref.ReferencedSOPInstanceUID) for i in _walk(ds.ContentSequence)
                             if i.get("ValueType") == "WAVEFORM" for ref in i.ReferencedSOPSequence]
                assert waveforms, "ECG report without its WAVEFORM reference"
                for uid in waveforms:
                    assert str(by_sop[uid].SOPClassUID) == TWELVE_LEAD_ECG
                    assert by_sop[uid].PatientID == ds.PatientID
    assert complete, f"no patient has all of {sorted(EVERY_KIND)}"


def test_second_ingest_changes_nothing(consortium: list[SiteRun]) -> None:
    for run in consortium:
        before = _snapshot(run.store)
        journal = (run.store / ".ingest" / "journal.jsonl").read_bytes()
        again = ingest_folder(run.synth.raw_dir, run.store, run.site, index=False)
        assert again.this_run == {"processed": 0, "replayed": run.report.inputs}
        assert again.outcome_view() == run.report.outcome_view()
        assert _snapshot(run.store) == before
        assert (run.store / ".ingest" / "journal.jsonl").read_bytes() == journal


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_mid_ingest_then_rerun_equals_an_uninterrupted_run(consortium: list[SiteRun],
                                                                   tmp_path: Path) -> None:
    run = max(consortium, key=lambda r: r.report.inputs)
    raw, cfg = run.synth.raw_dir, run.synth.site_config
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    journal = crashed / ".ingest" / "journal.jsonl"
    exe = Path(sys.executable).with_name("cohort")
    proc = subprocess.Popen([str(exe), "ingest", str(raw), "--store", str(crashed), "--site-config", str(cfg),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the CLI and its conversion workers
    proc.wait(timeout=30)
    for _ in range(200):  # the workers die with their parent; none may linger writing into the store
        if not _group_alive(proc.pid):
            break
        time.sleep(0.05)
    assert not _group_alive(proc.pid)
    done_at_kill = len(_journal_entries(crashed))
    assert 20 <= done_at_kill < run.report.inputs, "the kill did not land in the middle of the run"

    resumed = _cohort("ingest", str(raw), "--store", str(crashed), "--site-config", str(cfg), "--quiet",
                      "--report", str(tmp_path / "resumed.json"))
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = _cohort("ingest", str(raw), "--store", str(clean), "--site-config", str(cfg), "--quiet",
                            "--report", str(tmp_path / "clean.json"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    a, b = _snapshot(crashed), _snapshot(clean)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert not list(crashed.rglob(".tmp-*")), "temporary files of the killed run were left behind"
    key = lambda e: (e["input"], e["sha256"])  # noqa: E731
    assert sorted(_journal_entries(crashed), key=key) == sorted(_journal_entries(clean), key=key)

    def outcome(path: Path) -> dict:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: v for k, v in data.items() if k not in ("timings", "this_run", "derived_written", "indexed_files",
                                                           "index_failures")}

    resumed_report = json.loads((tmp_path / "resumed.json").read_text(encoding="utf-8"))
    assert resumed_report["this_run"]["replayed"] == done_at_kill
    assert outcome(tmp_path / "resumed.json") | {"store": "S"} == outcome(tmp_path / "clean.json") | {"store": "S"}
    assert outcome(tmp_path / "clean.json") == run.report.outcome_view() | {"store": str(clean)}


def test_cli_synth_ingest_validate(tmp_path: Path) -> None:
    out = tmp_path / "consortium"
    synth = _cohort("synth", "--out", str(out), "--sites", "2", "--patients", "2,3", "--seed", "5", "--quiet")
    assert synth.returncode == 0, synth.stderr
    summary = json.loads((out / "consortium.json").read_text(encoding="utf-8"))
    assert [s["patients"] for s in summary["sites"]] == [2, 3]
    site_dir = out / summary["sites"][1]["site_id"]
    assert (site_dir / "site.yaml").exists() and (site_dir / "truth.csv").exists()

    store, report_path = tmp_path / "store", tmp_path / "report.json"
    ingest = _cohort("ingest", str(site_dir / "raw"), "--store", str(store), "--report", str(report_path),
                     "--quiet")
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["inputs"] == report["converted"] + report["duplicates"] + report["quarantined"]
    assert report["inputs"] == summary["sites"][1]["files"] and report["quarantined"] == 0
    assert report["patients"] == 3
    assert report["objects_written"] == sum(report["objects_by_sop_class"].values()) == \
        sum(1 for _ in (store / "dicom").rglob("*.dcm"))
    assert {"detect_s", "convert_s"} <= set(report["timings"])
    assert "CT Image Storage" in ingest.stdout + ingest.stderr  # the summary table

    validated = _cohort("validate", "--store", str(store), "--json")
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-2000:]
    result = json.loads(validated.stdout)
    assert result["checked"]["dciodvfy"] == report["objects_written"]
    assert sum(result["errors"].values()) == 0


def test_cli_ingest_without_site_config_or_store_fails_with_a_readable_error(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    result = _cohort("ingest", str(tmp_path / "raw"))  # with --store it ingests with defaults
    assert result.returncode == 2
    assert "--store STORE" in result.stderr and "--site-config" in result.stderr
    assert "Traceback" not in result.stderr
