"""Sync with a site PACS over DICOMweb: pull its studies into the raw folder, push derived objects back.

Pull (QIDO-RS search, WADO-RS retrieve) writes each instance as a Part 10 file under
``RAW_DIR/dicomweb/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, where the normal ingest converts it; without
a RAW_DIR the pull is a job by itself and RAW_DIR is ``STORE/pulled``.
Push (STOW-RS) uploads the *derived* objects of the store: every stored object whose SOP Instance UID
was not pulled from that PACS (SRs, SEGs and waveforms the conversion created; pulled images keep
their UIDs, so they are never sent back).

State per PACS lives in ``STORE/.ingest/dicomweb-<host>.json`` (rewritten atomically): the pulled
SOP Instance UIDs, each study's instance count when it was last pulled completely (a study whose
count is unchanged is not listed again), and the pushed UIDs. An object is recorded only after its
file is on disk or the PACS confirmed it, so a crash or a failure means it is fetched or sent again
next run, never lost; re-sending is harmless because the PACS keys objects by SOP Instance UID.
Objects this store pushed are never pulled back from the same URL.

Pushed objects carry the store's pseudonymous Patient module: the PACS files them under the
pseudonym, not under the patient whose images they annotate.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from cohort.errors import CohortError
from cohort.store import Store

__all__ = ["DicomWebError", "ObjectFailure", "PullReport", "PushReport", "pull_from_dicomweb",
           "push_to_dicomweb", "state_path_for", "summary", "write_sidecar"]

ProgressCallback = Callable[[str, int, int], None]
T = TypeVar("T")

PULL_FOLDER = "dicomweb"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_ORIGINAL_SYNTAX = (("application/dicom", "*"),)  # WADO-RS: keep the transfer syntax the PACS stored
_SAFE = re.compile(r"[^A-Za-z0-9.\-_]")
_FAILURE_REASONS = {  # PS3.18 / PS3.7 Failure Reason codes of a STOW-RS response
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
    0xA700: "out of resources", 0xA900: "data set does not match SOP class / study",
    0xC000: "cannot understand",
}


class DicomWebError(ConnectionError, CohortError):
    """The PACS could not be searched at all; the message names the URL and what to check."""


@dataclass
class ObjectFailure:
    """One object that was not pulled or pushed this run, with the URL used and the reason."""

    sop_uid: str
    url: str
    reason: str
    attempts: int
    study_uid: str = ""
    series_uid: str = ""


class _Throughput:
    """Objects per second of a report, and its JSON form."""

    seconds: float

    def _done(self) -> int:
        raise NotImplementedError

    @property
    def objects_per_s(self) -> float:
        return round(self._done() / self.seconds, 1) if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "objects_per_s": self.objects_per_s}  # type: ignore[call-overload]


@dataclass
class PullReport(_Throughput):
    """What one pull did; ``failed`` objects were not recorded and are fetched again next run."""

    url: str
    raw_folder: str
    studies: int = 0
    studies_unchanged: int = 0
    instances_found: int = 0
    pulled: int = 0
    already_pulled: int = 0
    own_pushed: int = 0  # derived objects this store pushed there; never pulled back
    failed: list[ObjectFailure] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def _done(self) -> int:
        return self.pulled


@dataclass
class PushReport(_Throughput):
    """What one push did; ``failed`` objects were not recorded and are sent again next run."""

    url: str
    candidates: int = 0
    pushed: int = 0
    already_pushed: int = 0
    warnings: list[ObjectFailure] = field(default_factory=list)  # stored, but the PACS said why to look
    failed: list[ObjectFailure] = field(default_factory=list)
    batches: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def _done(self) -> int:
        return self.pushed


def pull_dir_for(store_root: str | Path) -> Path:
    """The raw folder of a pull given without RAW_DIR: ``STORE/pulled`` (pulled files go below it)."""
    return Path(store_root) / "pulled"


def state_path_for(store_root: str | Path, url: str) -> Path:
    """``STORE/.ingest/dicomweb-<host_port_path>.json``: one state file per PACS endpoint."""
    parts = urlsplit(url)
    name = _SAFE.sub("_", f"{parts.hostname or 'local'}_{parts.port or ''}{parts.path}".rstrip("/_"))
    return Path(store_root) / ".ingest" / f"dicomweb-{name}.json"


# --- state ------------------------------------------------------------------------------------------
class _State:
    """What was pulled from and pushed to one PACS; saved atomically, at most once a second mid-run."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"url": url, "pulled": {}, "studies": {}, "pushed": {}}
        if path.exists():
            try:
                self.data.update(json.loads(path.read_text(encoding="utf-8")))
            except json.JSONDecodeError as exc:
                raise CohortError(f"{path}: DICOMweb sync state is not valid JSON ({exc}); delete it to "
                                  "pull everything again (nothing is duplicated, files are overwritten)") from None
        self.pulled: dict[str, Any] = self.data["pulled"]  # SOP UID -> study, series, file
        self.studies: dict[str, Any] = self.data["studies"]  # study UID -> instance count, complete
        self.pushed: dict[str, Any] = self.data["pushed"]  # SOP UID -> study, series
        self._saved = time.monotonic()

    def save(self, *, throttle: bool = False) -> None:
        if throttle and time.monotonic() - self._saved < 1.0:
            return
        _atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())
        self._saved = time.monotonic()


def _atomic_write(target: Path, payload: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- HTTP with bounded retries ----------------------------------------------------------------------
class _GaveUp(Exception):
    """A request failed for good: not retryable, or retried ``attempts`` times."""

    def __init__(self, reason: str, attempts: int, response: requests.Response | None) -> None:
        super().__init__(reason)
        self.reason, self.attempts, self.response = reason, attempts, response


def _client(url: str, timeout_s: float) -> DICOMwebClient:
    client = DICOMwebClient(url, timeout=timeout_s)
    client.set_http_retry_params(retry=False)  # retries are ours: bounded, with backoff, also on timeouts
    return client


def _describe(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g} s (PACS overloaded or the timeout too short)"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (nothing listens there, or a firewall/proxy blocks it)"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Retry:
    """Request timeout and the bounded retries with exponential backoff."""

    timeout_s: float
    max_attempts: int
    backoff_s: float


def _call(fn: Callable[[], T], retry: _Retry) -> tuple[T, int]:
    """``fn()`` retried on timeouts, lost connections and HTTP 408/429/5xx with exponential backoff."""
    max_attempts, timeout_s = max(1, retry.max_attempts), retry.timeout_s
    for attempt in range(1, max_attempts + 1):
        try:
            return fn(), attempt
        except (requests.RequestException, ValueError) as exc:
            response = exc.response if isinstance(exc, requests.HTTPError) else None
            retryable = (isinstance(exc, (requests.ConnectionError, requests.Timeout))
                         or (response is not None and response.status_code in RETRYABLE_STATUS))
            if not retryable or attempt == max_attempts:
                raise _GaveUp(_describe(exc, timeout_s), attempt, response) from exc
            time.sleep(retry.backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


# --- pull -------------------------------------------------------------------------------------------
def pull_from_dicomweb(url: str, raw_dir: str | Path, state_path: str | Path, *,
                       progress: ProgressCallback | None = None, timeout_s: float = 30.0,
                       max_attempts: int = 3, backoff_s: float = 0.5) -> PullReport:
    """Fetch every instance of the PACS at ``url`` not pulled before into ``RAW_DIR/dicomweb/``.

    Raises DicomWebError when the study search itself fails; a failure to list one study or to
    retrieve one instance is reported in ``PullReport.failed`` and retried on the next pull.
    """
    t0 = time.perf_counter()
    url = url.rstrip("/")
    progress = progress or (lambda *_: None)
    folder = Path(raw_dir) / PULL_FOLDER
    report = PullReport(url=url, raw_folder=str(folder))
    state = _State(Path(state_path), url)
    client = _client(url, timeout_s)
    retry = _Retry(timeout_s, max_attempts, backoff_s)
    try:
        studies, _ = _call(lambda: client.search_for_studies(fields=["NumberOfStudyRelatedInstances"],
                                                             get_remaining=True), retry)
    except _GaveUp as exc:
        raise DicomWebError(
            f"QIDO-RS study search at {url}/studies failed after {exc.attempts} attempt(s): {exc.reason}; "
            "check that the PACS is running, that the URL is its DICOMweb root (e.g. "
            "http://host:8042/dicom-web for Orthanc) and that its DICOMweb plugin is enabled") from None
    counts = _instance_counts(studies)
    report.studies = len(counts)
    try:
        for i, (study_uid, count) in enumerate(counts.items()):
            progress("pulling from DICOMweb", i, len(counts))
            _pull_study(client, study_uid, count, folder, state, report, retry)
            state.save(throttle=True)
        progress("pulling from DICOMweb", len(counts), len(counts))
    finally:
        state.save()
        report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _instance_counts(studies: list[dict[str, Any]]) -> dict[str, int | None]:
    """Study UID -> NumberOfStudyRelatedInstances, the study's change marker (None: not reported).

    A PACS may list one Study Instance UID under two patients (e.g. our pseudonymous derived objects
    next to the original images); instance searches by study UID return both, so counts are summed.
    """
    out: dict[str, int | None] = {}
    for study in studies:
        uid, count = str(_first(study, "0020000D") or ""), _first(study, "00201208")
        if uid:
            before = out.get(uid, 0)
            out[uid] = None if count is None or before is None else before + int(count)
    return out


def _pull_study(client: DICOMwebClient, study_uid: str, count: int | None, folder: Path, state: _State,
                report: PullReport, retry: _Retry) -> None:
    known = state.studies.get(study_uid)
    if count is not None and known == {"instances": count, "complete": True}:
        report.studies_unchanged += 1
        report.instances_found += count
        return
    study_url = f"{report.url}/studies/{study_uid}"
    try:
        instances, _ = _call(lambda: client.search_for_instances(study_instance_uid=study_uid,
                                                                 get_remaining=True), retry)
    except _GaveUp as exc:
        report.failed.append(ObjectFailure("", f"{study_url}/instances", f"QIDO-RS instance search of "
                                           f"the study failed: {exc.reason}", exc.attempts, study_uid))
        return
    report.instances_found += len(instances)
    complete = True
    for inst in instances:
        sop_uid, series_uid = str(_first(inst, "00080018") or ""), str(_first(inst, "0020000E") or "")
        if sop_uid in state.pulled:
            report.already_pulled += 1
            continue
        if sop_uid in state.pushed:  # our own derived object: pulling it back would loop
            report.own_pushed += 1
            continue
        obj_url = f"{study_url}/series/{series_uid}/instances/{sop_uid}"
        if not sop_uid or not series_uid:
            complete = False
            report.failed.append(ObjectFailure(sop_uid, obj_url, "the QIDO-RS result lacks the SOP Instance "
                                               "or Series Instance UID; the PACS's index may be damaged",
                                               1, study_uid, series_uid))
            continue
        try:
            ds, _ = _call(partial(client.retrieve_instance, study_uid, series_uid, sop_uid,
                                  media_types=_ORIGINAL_SYNTAX), retry)
        except _GaveUp as exc:
            complete = False
            report.failed.append(ObjectFailure(sop_uid, obj_url, f"WADO-RS retrieve failed: {exc.reason}",
                                               exc.attempts, study_uid, series_uid))
            continue
        rel = Path(_safe(study_uid)) / _safe(series_uid) / f"{_safe(sop_uid)}.dcm"
        size = _write_part10(ds, folder / rel)
        state.pulled[sop_uid] = {"study": study_uid, "series": series_uid, "file": rel.as_posix()}
        report.pulled += 1
        report.bytes += size
    state.studies[study_uid] = {"instances": count if count is not None else len(instances),
                                "complete": complete}


def _safe(part: str) -> str:
    return _SAFE.sub("_", part) or "_"


def _write_part10(ds: Dataset, target: Path) -> int:
    """Write ``ds`` as a Part 10 file atomically (hidden temp name, so ingest never sees half a file)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    payload = buf.getvalue()
    _atomic_write(target, payload)
    return len(payload)


# --- push -------------------------------------------------------------------------------------------
def push_to_dicomweb(url: str, store: Store, files: Sequence[str | Path] | None, state_path: str | Path, *,
                     progress: ProgressCallback | None = None, timeout_s: float = 60.0, max_attempts: int = 3,
                     backoff_s: float = 0.5, batch_size: int = 16) -> PushReport:
    """STOW-RS the derived objects of ``store`` (or exactly ``files``) to the PACS at ``url``.

    ``files=None`` selects every stored object whose SOP Instance UID was not pulled from this PACS
    (the state at ``state_path``). Objects pushed before are skipped; a batch refused as a whole is
    re-sent object by object so each gets its own outcome; refused objects are reported with the
    PACS's reason and sent again on the next run.
    """
    t0 = time.perf_counter()
    url = url.rstrip("/")
    progress = progress or (lambda *_: None)
    report = PushReport(url=url)
    state = _State(Path(state_path), url)
    if files is None:
        paths = [p for p in store.files() if p.stem not in state.pulled]
    else:
        paths = [Path(f) for f in files]
    todo = []
    for p in paths:
        if p.stem in state.pushed:  # store files are named by their SOP Instance UID
            report.already_pushed += 1
        else:
            todo.append(p)
    report.candidates = len(paths)
    client = _client(url, timeout_s)
    retry = _Retry(timeout_s, max_attempts, backoff_s)
    try:
        for start in range(0, len(todo), batch_size):
            progress("pushing to DICOMweb", start, len(todo))
            _push_batch(client, todo[start:start + batch_size], state, report, retry)
            state.save(throttle=True)
        progress("pushing to DICOMweb", len(todo), len(todo))
    finally:
        state.save()
        report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _push_batch(client: DICOMwebClient, paths: list[Path], state: _State, report: PushReport,
                retry: _Retry) -> None:
    stow_url = f"{report.url}/studies"
    datasets: dict[str, Dataset] = {}
    for p in paths:
        try:
            ds: Dataset = pydicom.dcmread(p)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
            report.failed.append(ObjectFailure(p.stem, str(p), f"cannot read the stored file: {exc}", 0))
            continue
        uid = str(ds.get("SOPInstanceUID", "") or p.stem)
        if uid in state.pushed:  # a file named otherwise than its UID (explicit ``files``)
            report.already_pushed += 1
            continue
        datasets[uid] = ds
        report.bytes += p.stat().st_size
    if not datasets:
        return
    outcome, attempts, http = _stow(client, list(datasets.values()), retry)
    report.batches += 1
    unknown = [uid for uid in datasets if uid not in outcome]
    if unknown and len(datasets) > 1:
        # Refused as a whole, or no status for some objects: send those alone to learn which one.
        for uid in unknown:
            single, attempts, http = _stow(client, [datasets[uid]], retry)
            report.batches += 1
            outcome[uid] = single.get(uid) or (False, _no_status(http))
    for uid, ds in datasets.items():
        ok, reason = outcome.get(uid) or (False, _no_status(http))
        where = f"{stow_url} ({ds.get('SOPClassUID', 'no SOP Class UID')})"
        entry = ObjectFailure(uid, where, reason, attempts, str(ds.get("StudyInstanceUID", "")),
                              str(ds.get("SeriesInstanceUID", "")))
        if ok:
            state.pushed[uid] = {"study": entry.study_uid, "series": entry.series_uid}
            report.pushed += 1
            if reason:
                report.warnings.append(entry)
        else:
            report.failed.append(entry)


def _no_status(http: str) -> str:
    return (f"the PACS refused the upload ({http}) without a status for this object; see the PACS log "
            "for the cause (commonly a missing SOP Class/Instance UID or an unsupported object)")


def _stow(client: DICOMwebClient, datasets: list[Dataset],
          retry: _Retry) -> tuple[dict[str, tuple[bool, str]], int, str]:
    """One STOW-RS request: (SOP UID -> (stored, reason or warning)), attempts, HTTP summary."""
    try:
        result, attempts = _call(lambda: client.store_instances(datasets), retry)
        return _parse_stow(result), attempts, "HTTP 200/202"
    except _GaveUp as exc:
        outcome: dict[str, tuple[bool, str]] = {}
        if exc.response is not None and exc.response.content:
            try:  # a 409 still lists which objects were stored and which failed (Orthanc omits the type)
                outcome = _parse_stow(Dataset.from_json(exc.response.json()))
            except (ValueError, TypeError, KeyError):
                outcome = {}
        if exc.response is None:  # no answer at all: every object of the request failed the same way
            reason = f"STOW-RS request failed after {exc.attempts} attempt(s): {exc.reason}"
            return {str(ds.get("SOPInstanceUID", "")): (False, reason) for ds in datasets}, exc.attempts, exc.reason
        return outcome, exc.attempts, exc.reason


def _parse_stow(result: Dataset) -> dict[str, tuple[bool, str]]:
    out: dict[str, tuple[bool, str]] = {}
    for item in result.get("ReferencedSOPSequence", []):
        warning = item.get("WarningReason")
        out[str(item.ReferencedSOPInstanceUID)] = (True, f"stored with warning 0x{int(warning):04X}"
                                                   if warning is not None else "")
    for item in result.get("FailedSOPSequence", []):
        code = item.get("FailureReason")
        text = (f"refused by the PACS: FailureReason 0x{int(code):04X} "
                f"({_FAILURE_REASONS.get(int(code), 'see PS3.7 Annex C')})" if code is not None
                else "refused by the PACS without a FailureReason")
        out[str(item.ReferencedSOPInstanceUID)] = (False, text)
    return out


# --- reporting --------------------------------------------------------------------------------------
def summary(report: PullReport | PushReport, *, max_failures: int = 10) -> list[str]:
    """A few lines for the CLI: counts, throughput, and the first failures with their reasons."""
    if isinstance(report, PullReport):
        head = (f"pulled {report.pulled} new object(s) from {report.url} into {report.raw_folder} "
                f"({report.already_pulled} already pulled, {report.own_pushed} pushed from here, "
                f"{report.studies} studies, "
                f"{report.studies_unchanged} unchanged; {report.objects_per_s} objects/s)")
    else:
        head = (f"pushed {report.pushed} of {report.candidates} derived object(s) to {report.url} "
                f"({report.already_pushed} pushed before, {report.batches} STOW-RS request(s); "
                f"{report.objects_per_s} objects/s)")
    lines = [head]
    for f in report.failed[:max_failures]:
        lines.append(f"failed {f.sop_uid or f.study_uid} at {f.url}: {f.reason} - retried on the next run")
    if len(report.failed) > max_failures:
        lines.append(f"... and {len(report.failed) - max_failures} more failures (see the report)")
    return lines


def write_sidecar(report_path: str | Path, pull: PullReport | None, push: PushReport | None) -> Path:
    """Write ``<report>.dicomweb.json`` next to the ingest report: {"pull": ..., "push": ...}."""
    target = Path(report_path).with_suffix(".dicomweb.json")
    data = {"pull": pull.to_json() if pull else None, "push": push.to_json() if push else None}
    _atomic_write(target, (json.dumps(data, indent=2) + "\n").encode())
    return target
