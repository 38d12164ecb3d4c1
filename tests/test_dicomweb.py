"""Round trip with a real Orthanc PACS over DICOMweb: pull, ingest, push derived objects, sync again."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cohort.ingest.dicomweb import (
    DicomWebError,
    pull_from_dicomweb,
    push_to_dicomweb,
    state_path_for,
)
from cohort.ingest.run import ingest_folder
from cohort.siteconfig import FreeTextSource, IdentifierMapping, SiteConfig
from cohort.store import Store
from tests import orthanc as pacs
from tests.orthanc import OrthancProcess, free_port

pytestmark = pytest.mark.slow
orthanc, orthanc_process = pacs.orthanc, pacs.orthanc_process  # the fixtures these tests use

PACS_PATIENT = "1CT1"  # the PatientID of pydicom's CT_small.dcm


def _site(store: Path) -> SiteConfig:
    # The identifier mapping file does not exist: PACS ids resolve to (pseudonyms of) themselves.
    return SiteConfig(site_id="site-pacs", store=str(store), pseudonym_key="k" * 24,
                      identifiers=IdentifierMapping(file="ids.csv", pacs_id_column="pacs", case_id_column="case"),
                      free_text=FreeTextSource(id_kind="pacs_id", id_label="PatientID", date_label="Date",
                                               date_format="%Y-%m-%d"))


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} is missing; reinstall pydicom"
    return path


def _ct_slice(study_uid: str, series_uid: str, number: int) -> Dataset:
    """A CT slice made from pydicom's real CT_small.dcm with new UIDs."""
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.SliceLocation = float(number)
    return ds


def _pacs_objects() -> list[Dataset]:
    """CT_small, a generated 3-slice CT series of the same patient, and the real 12-lead ECG."""
    objs: list[Dataset] = [pydicom.dcmread(_testfile("CT_small.dcm"))]
    study, series = generate_uid(), generate_uid()
    objs += [_ct_slice(study, series, n) for n in (1, 2, 3)]
    objs.append(pydicom.dcmread(_testfile("waveform_ecg.dcm")))
    return objs


def _qido_sops(url: str) -> set[str]:
    return {inst["00080018"]["Value"][0] for inst in DICOMwebClient(url).search_for_instances(get_remaining=True)}


def _write_free_text(raw: Path) -> None:
    """A free-text report about the PACS patient: converted into a derived Enhanced SR."""
    (raw / "reports").mkdir(parents=True, exist_ok=True)
    (raw / "reports" / "echo.txt").write_text(
        f"PatientID: {PACS_PATIENT}\nDate: 2024-03-01\n\nLVEF 55 %, no relevant valve disease.\n", encoding="utf-8")


def test_round_trip_pull_ingest_push_and_incremental_sync(orthanc: str, tmp_path: Path) -> None:
    source = _pacs_objects()
    DICOMwebClient(orthanc).store_instances(source)  # the "PACS" holds the site's images and ECG
    raw, store_dir = tmp_path / "raw", tmp_path / "store"
    state = state_path_for(store_dir, orthanc)
    assert state.parent == store_dir / ".ingest" and state.name.startswith("dicomweb-127.0.0.1_")

    pull1 = pull_from_dicomweb(orthanc, raw, state)
    assert (pull1.pulled, pull1.failed, pull1.studies) == (5, [], 3)
    pulled_sops = {ds.SOPInstanceUID for ds in source}
    on_disk = {pydicom.dcmread(p).SOPInstanceUID: p for p in (raw / "dicomweb").rglob("*.dcm")}
    assert set(on_disk) == pulled_sops
    for ds in source:  # the Part 10 files carry the PACS's content unchanged
        got = pydicom.dcmread(on_disk[ds.SOPInstanceUID])
        assert got.PixelData == ds.PixelData if "PixelData" in ds else got.WaveformSequence[0].WaveformData \
            == ds.WaveformSequence[0].WaveformData
    _write_free_text(raw)

    report = ingest_folder(raw, store_dir, _site(store_dir), index=False)  # the registry's converters
    assert (report.inputs, report.converted, report.quarantined) == (6, 6, 0), report.quarantine
    store = Store(store_dir)
    stored = set(store.sop_paths())
    derived = stored - pulled_sops
    assert derived, "the conversion created no derived object (the free-text SR at least)"

    # Same source objects ingested from plain files give the same objects per SOP class.
    files_raw = tmp_path / "files_raw"
    for k, ds in enumerate(source):
        (files_raw / "pacs_export").mkdir(parents=True, exist_ok=True)
        ds.save_as(files_raw / "pacs_export" / f"obj{k}.dcm", enforce_file_format=True)
    _write_free_text(files_raw)
    by_files = ingest_folder(files_raw, tmp_path / "store_files", _site(tmp_path / "store_files"), index=False)
    assert by_files.objects_by_sop_class == report.objects_by_sop_class
    assert (by_files.converted, by_files.quarantined) == (report.converted, report.quarantined)

    push1 = push_to_dicomweb(orthanc, store, None, state)
    assert (push1.pushed, push1.failed, push1.candidates) == (len(derived), [], len(derived))
    in_pacs = _qido_sops(orthanc)
    assert derived <= in_pacs
    assert len(in_pacs) == len(pulled_sops) + len(derived)
    classes = set()
    for uid in derived:  # the PACS holds the very objects of the store
        mine = pydicom.dcmread(store.sop_paths()[uid])
        found = DICOMwebClient(orthanc).search_for_instances(study_instance_uid=mine.StudyInstanceUID,
                                                             search_filters={"SOPInstanceUID": uid})
        assert len(found) == 1
        theirs = DICOMwebClient(orthanc).retrieve_instance(mine.StudyInstanceUID, mine.SeriesInstanceUID, uid)
        assert theirs == mine  # every data element arrived unchanged
        classes.add(mine.SOPClassUID.name)
    assert "Enhanced SR Storage" in classes  # the free-text report's SR

    pull2 = pull_from_dicomweb(orthanc, raw, state)
    assert (pull2.pulled, pull2.own_pushed, pull2.failed) == (0, len(derived), [])  # ours are not pulled back
    push2 = push_to_dicomweb(orthanc, store, None, state)
    assert (push2.pushed, push2.already_pushed, push2.batches) == (0, len(derived), 0)
    assert _qido_sops(orthanc) == in_pacs

    extra = _ct_slice(source[1].StudyInstanceUID, source[1].SeriesInstanceUID, 4)
    DICOMwebClient(orthanc).store_instances([extra])
    pull3 = pull_from_dicomweb(orthanc, raw, state)
    assert (pull3.pulled, pull3.failed) == (1, [])
    assert (raw / "dicomweb" / extra.StudyInstanceUID / extra.SeriesInstanceUID
            / f"{extra.SOPInstanceUID}.dcm").is_file()
    assert pull3.studies_unchanged == pull3.studies - 1  # only the study with the new slice was listed
    recorded = json.loads(state.read_text(encoding="utf-8"))
    assert set(recorded["pulled"]) == pulled_sops | {extra.SOPInstanceUID}
    assert set(recorded["pushed"]) == derived


def test_pull_from_url_where_nothing_listens_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError) as err:
        pull_from_dicomweb(url, tmp_path / "raw", tmp_path / "state.json", max_attempts=2, backoff_s=0.01)
    message = str(err.value)
    assert f"{url}/studies" in message and "2 attempt(s)" in message and "cannot connect" in message
    assert not (tmp_path / "raw" / "dicomweb").exists()


class _FaultyProxy:
    """A real HTTP relay in front of Orthanc that answers 503 to the first ``fail`` GETs of paths ending
    in ``suffix`` (the PACS's load balancer having a bad moment); everything else passes through."""

    def __init__(self, target: str, suffix: str, fail: int) -> None:
        parts = urlsplit(target)
        self.origin, self.suffix, self.fail, self.hits = f"{parts.scheme}://{parts.netloc}", suffix, fail, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if urlsplit(self.path).path.endswith(proxy.suffix):
                    proxy.hits += 1
                    if proxy.hits <= proxy.fail:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                upstream = requests.get(proxy.origin + self.path, headers={"Accept": self.headers["Accept"]},
                                        timeout=30)
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", upstream.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{urlsplit(target).path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("fail", "pulled", "failed"), [(1, 2, 0), (99, 1, 1)],
                         ids=["transient-503-retried", "persistent-503-reported"])
def test_retrieve_errors_are_retried_then_reported_per_object(orthanc_process: OrthancProcess, tmp_path: Path,
                                                              fail: int, pulled: int, failed: int) -> None:
    study, series = generate_uid(), generate_uid()
    good, flaky = _ct_slice(study, series, 1), _ct_slice(study, series, 2)
    DICOMwebClient(orthanc_process.dicomweb_url).store_instances([good, flaky])
    proxy = _FaultyProxy(orthanc_process.dicomweb_url, f"/instances/{flaky.SOPInstanceUID}", fail)
    state = tmp_path / "state.json"
    try:
        report = pull_from_dicomweb(proxy.url, tmp_path / "raw", state, max_attempts=3, backoff_s=0.01)
    finally:
        proxy.close()
    assert (report.pulled, len(report.failed)) == (pulled, failed)
    assert proxy.hits == min(fail + 1, 3)  # bounded: at most max_attempts requests per object
    recorded = json.loads(state.read_text(encoding="utf-8"))
    if failed:
        f = report.failed[0]
        assert (f.sop_uid, f.attempts) == (flaky.SOPInstanceUID, 3)
        assert f.url == f"{proxy.url}/studies/{study}/series/{series}/instances/{flaky.SOPInstanceUID}"
        assert "HTTP 503" in f.reason
        assert flaky.SOPInstanceUID not in recorded["pulled"]
        assert recorded["studies"][study]["complete"] is False  # so the next pull lists it again
    else:
        assert flaky.SOPInstanceUID in recorded["pulled"]


def test_study_the_pacs_cannot_list_is_reported_and_listed_next_time(orthanc: str, tmp_path: Path) -> None:
    good, other = _ct_slice(generate_uid(), generate_uid(), 1), _ct_slice(generate_uid(), generate_uid(), 1)
    DICOMwebClient(orthanc).store_instances([good, other])
    proxy = _FaultyProxy(orthanc, f"/studies/{other.StudyInstanceUID}/instances", fail=99)
    state = tmp_path / "state.json"
    try:
        first = pull_from_dicomweb(proxy.url, tmp_path / "raw", state, max_attempts=2, backoff_s=0.01)
    finally:
        proxy.close()
    assert first.pulled == 1 and len(first.failed) == 1 and proxy.hits == 2
    failure = first.failed[0]
    assert (failure.study_uid, failure.sop_uid) == (other.StudyInstanceUID, "")
    assert failure.url == f"{proxy.url}/studies/{other.StudyInstanceUID}/instances"
    assert failure.reason == "QIDO-RS instance search of the study failed: HTTP 503 Service Unavailable"
    recorded = json.loads(state.read_text(encoding="utf-8"))
    assert set(recorded["pulled"]) == {good.SOPInstanceUID}
    assert other.StudyInstanceUID not in recorded["studies"]

    second = pull_from_dicomweb(orthanc, tmp_path / "raw", state)  # the PACS answers again
    assert (second.pulled, second.studies_unchanged, second.failed) == (1, 1, [])


def test_object_the_pacs_refuses_is_reported_and_not_recorded(orthanc: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    good = _ct_slice(generate_uid(), generate_uid(), 1)
    bad = copy.deepcopy(_ct_slice(generate_uid(), generate_uid(), 1))
    del bad.SOPClassUID  # a converter bug: Orthanc refuses an object without SOP Class UID
    del bad.file_meta.MediaStorageSOPClassUID
    files = [tmp_path / "good.dcm", tmp_path / "bad.dcm"]
    good.save_as(files[0], enforce_file_format=True)
    pydicom.dcmwrite(files[1], bad)
    state = tmp_path / "state.json"

    first = push_to_dicomweb(orthanc, store, files, state, batch_size=8)
    assert first.pushed == 1 and [f.sop_uid for f in first.failed] == [bad.SOPInstanceUID]
    failure = first.failed[0]
    assert failure.url.startswith(f"{orthanc}/studies") and "HTTP 400" in failure.reason
    assert "SOP Class" in failure.reason  # the fix a person can act on
    recorded = json.loads(state.read_text(encoding="utf-8"))["pushed"]
    assert set(recorded) == {good.SOPInstanceUID}
    assert _qido_sops(orthanc) == {good.SOPInstanceUID}

    again = push_to_dicomweb(orthanc, store, files, state)  # the refused object is tried again
    assert (again.pushed, again.already_pushed, [f.sop_uid for f in again.failed]) == \
        (0, 1, [bad.SOPInstanceUID])


def test_cli_ingest_pulls_first_and_pushes_after(orthanc: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cohort.cli import _register, app

    _register()
    DICOMwebClient(orthanc).store_instances(_pacs_objects())
    raw = tmp_path / "raw"
    _write_free_text(raw)
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(_site(tmp_path / "store").to_yaml(), encoding="utf-8")
    args = ["ingest", str(raw), "--site-config", str(site_yaml), "--report", str(tmp_path / "ingest.json"),
            "--quiet", "--from-dicomweb", orthanc, "--push-dicomweb", orthanc]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "ingest.dicomweb.json").read_text(encoding="utf-8"))
    assert sidecar["pull"]["pulled"] == 5 and sidecar["pull"]["failed"] == []
    assert sidecar["push"]["pushed"] >= 1 and sidecar["push"]["failed"] == []
    assert f"pulled 5 new object(s) from {orthanc}" in result.output

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    sidecar = json.loads((tmp_path / "ingest.dicomweb.json").read_text(encoding="utf-8"))
    assert (sidecar["pull"]["pulled"], sidecar["push"]["pushed"]) == (0, 0)


def test_cli_pull_without_raw_dir_is_a_complete_job(orthanc: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cohort.cli import _register, app
    from cohort.ingest.site_defaults import generated_config_path

    _register()
    objs = _pacs_objects()
    DICOMwebClient(orthanc).store_instances(objs)
    store = tmp_path / "pacs-site" / "store"
    args = ["ingest", "--from-dicomweb", orthanc, "--store", str(store), "--report", str(tmp_path / "r.json"),
            "--quiet"]
    result = CliRunner().invoke(app, args)  # no RAW_DIR and no site.yaml
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["site_id"] == "pacs-site" and report["raw_dir"] == str(store / "pulled")
    assert (report["inputs"], report["converted"], report["quarantined"]) == (5, 5, 0)
    stored = {p.stem for p in Store(store).files()}
    assert {str(o.SOPInstanceUID) for o in objs} <= stored
    assert generated_config_path(store).exists()  # the pseudonym key lives with the store

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    sidecar = json.loads((tmp_path / "r.dicomweb.json").read_text(encoding="utf-8"))
    assert sidecar["pull"]["pulled"] == 0
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["this_run"]["processed"] == 0
