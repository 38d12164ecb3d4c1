"""``cohort ingest``: detect every input's format by content, convert it, store it, report it.

Idempotent and crash-safe: object UIDs are derived from input content, files are written
atomically, and each input's final outcome is appended to ``STORE/.ingest/journal.jsonl`` after its
objects are on disk. A re-run replays recorded outcomes, so a run killed midway and then repeated
leaves the same store and the same report as one uninterrupted run.

Conversion runs in a process pool (one worker per core) stage by stage: workers convert inputs and
write each object to a temporary file next to its final place; the main process then takes the
results strictly in input order, decides duplicates, renames the temporary files into place and
appends the journal entry. Decisions and journal order are therefore those of a sequential run,
whatever the number of workers; a later stage starts only when the earlier one is committed (a SEG
needs its CT in the store).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, SegmentationStorage

from cohort.dicom.part10 import encode_part10
from cohort.errors import CohortError, ConfigError, InputError
from cohort.index.catalog import store_template_dirs
from cohort.index.extract import Extracted, extract_encoded
from cohort.index.templates import load_templates
from cohort.ingest.base import HEAD_BYTES, Converter, IngestContext, InputHead, first_match
from cohort.ingest.patients import MappingPatientDirectory
from cohort.ingest.report import (
    OUTCOME_CONVERTED,
    OUTCOME_DUPLICATE,
    OUTCOME_QUARANTINED,
    DuplicateInput,
    IngestReport,
    InputWarning,
    QuarantinedInput,
    RejectedPartEntry,
)
from cohort.processes import usable_cores, worker_context
from cohort.siteconfig import SiteConfig
from cohort.store import Store

if TYPE_CHECKING:
    from cohort.ingest.derive import DerivedObject

ProgressCallback = Callable[[str, int, int], None]  # (stage description, done, total)

WORKERS_ENV = "COHORT_INGEST_WORKERS"
TEMP_PREFIX = ".tmp-"  # objects being written; a crashed run's leftovers are removed by the next run
_STAGED_SUFFIX = ".partial"  # not *.dcm, so no store glob ever sees a half-committed object
_MIN_POOL_INPUTS = 32  # below this, starting worker processes costs more than it saves
_MAX_BATCH = 16


@dataclass
class _Input:
    path: Path
    rel: str
    digest: str
    converter: Converter | None
    sniff_error: str | None = None

    @property
    def linked_by_name(self) -> bool:
        return self.converter is not None and self.converter.linked_by_name

    @property
    def key(self) -> str:
        """Identity of the input: its content, plus its file name where the name links the patient."""
        if self.linked_by_name:
            return hashlib.sha256(f"{self.path.name}\x00{self.digest}".encode()).hexdigest()
        return self.digest


@dataclass
class _Staged:
    """One converted object, written to a temporary file, waiting to be renamed into place."""

    sop_uid: str
    sop_class: str
    patient_id: str
    temp: str
    target: str
    record: Extracted  # its index rows, extracted while its bytes were at hand


@dataclass
class _Converted:
    """What a worker made of one input: staged objects and rejected parts, or the reason it failed."""

    objects: list[_Staged] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (where, reason, content)
    error: str | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"sop_uid", "message"}

    def discard(self) -> None:
        for obj in self.objects:
            _unlink(Path(obj.temp))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def default_workers() -> int:
    """Conversion processes: ``$COHORT_INGEST_WORKERS`` if set, else the usable CPU cores."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV}={env!r} is not a whole number; set it to e.g. 1 or 4") from None
        return max(1, n)
    return usable_cores()


def _digest_and_head(path: Path) -> tuple[str, InputHead]:
    """SHA-256 of the file and its head for sniffing, reading the file once."""
    h = hashlib.sha256()
    head = b""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            if not head:
                head = chunk[:HEAD_BYTES]
            h.update(chunk)
    if head[:2] == b"\x1f\x8b":
        return h.hexdigest(), InputHead.read(path)  # decompresses the head
    return h.hexdigest(), InputHead(path, head, False)


def discover_inputs(raw_dir: Path) -> list[Path]:
    """Every regular, non-hidden file below ``raw_dir``, in a stable order."""
    if not raw_dir.is_dir():
        raise ConfigError(f"{raw_dir}: raw export folder not found")
    return sorted(p for p in raw_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts))


class Journal:
    """Append-only record of final input outcomes; a torn last line (crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.sop_owner: dict[str, str] = {}  # SOP Instance UID -> key of the input that produced it
        self.digest_owner: dict[str, str] = {}  # input key (see _Input.key) -> first input path with it
        self._fh: io.TextIOWrapper | None = None
        if path.exists():
            text = path.read_text(encoding="utf-8")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._remember(entry)
            if text and not text.endswith("\n"):
                # A torn last line: end it, so the next entry starts on a line of its own.
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write("\n")

    def _remember(self, entry: dict[str, Any]) -> None:
        self.entries[(entry["input"], entry["sha256"])] = entry
        if entry["outcome"] == OUTCOME_CONVERTED:
            key = entry.get("key", entry["sha256"])
            self.digest_owner.setdefault(key, entry["input"])
            for obj in entry.get("objects", []):
                self.sop_owner.setdefault(obj["sop_uid"], key)

    def get(self, rel: str, digest: str) -> dict[str, Any] | None:
        return self.entries.get((rel, digest))

    def append(self, entry: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS once flushed: a killed process loses nothing it journaled
        self._remember(entry)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


# --- conversion (in worker processes, or in-process for small runs) -------------------------------
class _ConversionWorker:
    """Converts inputs and stages their objects; one per worker process."""

    def __init__(self, raw_dir: Path, store_root: Path, site: SiteConfig, converters: Sequence[Converter]) -> None:
        self.raw_dir = raw_dir
        self.store = Store(store_root)
        self.site = site
        self.converters = list(converters)
        self.patients = MappingPatientDirectory(site, raw_dir)
        self.templates = load_templates(store_template_dirs(store_root))
        self._dirs: set[Path] = set()
        self._count = 0

    def convert(self, path: Path, digest: str, converter_index: int) -> _Converted:
        conv = self.converters[converter_index]
        ctx = IngestContext(site=self.site, raw_dir=self.raw_dir, patients=self.patients, store=self.store,
                            input_digest=digest)
        out = _Converted()
        # Warnings of the libraries (e.g. pydicom's "Invalid value for VR IS") belong to this input's
        # report entry, not to the terminal; workers are processes, so catching them here is per input.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = conv.convert(path, ctx)
                for ds in result.datasets:
                    out.objects.append(self._stage(ds))
            except InputError as exc:
                out.discard()
                out = _Converted(error=str(exc))
            except Exception as exc:  # a converter bug must not sink the run; keep the input and say so
                out.discard()
                out = _Converted(error=f"converter {conv.name} failed unexpectedly: {type(exc).__name__}: "
                                       f"{exc} (please report this as a bug)")
        if out.error is None:
            out.rejected = [(part.where, part.reason, part.content) for part in result.rejected]
            out.warnings = [{"sop_uid": w.sop_uid, "message": w.message} for w in result.warnings]
        out.warnings += library_warnings(caught)
        return out

    def derive(self, seg_path: Path) -> tuple[DerivedObject | None, str | None]:
        """The measurement SR of one stored SEG (``cohort.ingest.derive.derive_one``)."""
        from cohort.ingest.derive import derive_one

        return derive_one(self.store, seg_path)

    def _stage(self, ds: Dataset) -> _Staged:
        """Write ``ds`` as a Part 10 file next to its place in the store, under a temporary name."""
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            if not str(ds.get(keyword, "") or ""):
                raise InputError(f"converted object lacks {keyword}; this is a converter bug", field=keyword)
        target = self.store.path_for(ds)
        if target.parent not in self._dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(target.parent)
        self._count += 1
        temp = target.parent / f"{TEMP_PREFIX}{os.getpid()}-{self._count}{_STAGED_SUFFIX}"
        encoded = encode_part10(ds)
        with open(temp, "wb") as fh:
            fh.write(encoded)
        return _Staged(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.PatientID), str(temp), str(target),
                       extract_encoded(ds, encoded, self.templates))


_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


def library_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, str]]:
    """Distinct warnings raised while converting one input, each prefixed with the library it came from.

    Warnings for developers (deprecations, resources) say nothing about the input: they are issued
    again as they came, for the usual warning filters to handle.
    """
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for w in caught:
        if issubclass(w.category, _DEVELOPER_WARNINGS):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
            continue
        message = f"{warning_origin(w.filename)}: {w.message}"
        if message not in seen:
            seen.add(message)
            out.append({"sop_uid": "", "message": message})
    return out


def warning_origin(filename: str) -> str:
    """The package a warning was raised in (e.g. ``pydicom``), from the file it names."""
    parts = Path(filename).parts
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return Path(parts[parts.index("site-packages") + 1]).stem
    return "warning"


_WORKER: _ConversionWorker | None = None


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this worker when the ingest process dies (e.g. kill -9): no orphans
    left writing into the store while a re-run cleans it up."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(parent: int, raw_dir: Path, store_root: Path, site: SiteConfig,
                 converters: Sequence[Converter]) -> None:
    global _WORKER
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _WORKER = _ConversionWorker(raw_dir, store_root, site, converters)


def _convert_batch(batch: list[tuple[str, str, int]]) -> list[_Converted]:
    assert _WORKER is not None, "worker not initialised"
    return [_WORKER.convert(Path(path), digest, conv) for path, digest, conv in batch]


def _derive_batch(batch: list[str]) -> list[tuple[DerivedObject | None, str | None]]:
    assert _WORKER is not None, "worker not initialised"
    return [_WORKER.derive(Path(path)) for path in batch]


class IngestRun:
    """One ingest of a raw export folder into a store."""

    def __init__(self, raw_dir: Path, store: Store, site: SiteConfig, converters: Sequence[Converter],
                 progress: ProgressCallback | None = None, *, workers: int | None = None) -> None:
        self.raw_dir = raw_dir
        self.store = store
        self.site = site
        self.converters = list(converters)
        self.progress = progress or (lambda *_: None)
        self.workers = default_workers() if workers is None else max(1, workers)
        self.journal = Journal(store.state_dir / "journal.jsonl")
        self.report = IngestReport(site_id=site.site_id, raw_dir=str(raw_dir), store=str(store.root))
        self.written: list[Path] = []
        self.records: dict[str, Extracted] = {}  # index rows of the objects written, by path
        self._seg_inputs: dict[str, str] = {}  # SOP Instance UID of each SEG accounted -> its input

    def run(self) -> IngestReport:
        t0 = time.perf_counter()
        self._remove_leftovers()
        paths = discover_inputs(self.raw_dir)
        inputs = []
        for i, path in enumerate(paths):
            self.progress("detecting formats", i, len(paths))
            inputs.append(self._detect(path))
        self.progress("detecting formats", len(paths), len(paths))
        t_detect = time.perf_counter()
        inputs.sort(key=lambda x: (x.converter.stage if x.converter else -1, x.rel))
        todo = [x for x in inputs if self._needs_conversion(x)]
        pool = None
        if self.workers > 1 and len(todo) >= _MIN_POOL_INPUTS:
            pool = ProcessPoolExecutor(self.workers, mp_context=worker_context(), initializer=_init_worker,
                                       initargs=(os.getpid(), self.raw_dir, self.store.root, self.site,
                                                 self.converters))
            local = None
        else:
            local = _ConversionWorker(self.raw_dir, self.store.root, self.site, self.converters)
        replayed = processed = done = 0
        seen_digests: dict[str, str] = {}
        patient_ids: set[str] = set()
        try:
            for _stage, group in groupby(inputs, key=lambda x: x.converter.stage if x.converter else -1):
                items = list(group)
                results = self._conversions(items, pool, local)
                for item in items:
                    self.progress("converting", done, len(inputs))
                    done += 1
                    entry = self.journal.get(item.rel, item.digest)
                    converted = results.pop(item.rel)
                    if entry is None:
                        entry = self._commit(item, converted, seen_digests)
                        self.journal.append(entry)
                        processed += 1
                    else:
                        if converted is not None:
                            converted.discard()
                        replayed += 1
                    if entry["outcome"] == OUTCOME_CONVERTED:
                        seen_digests.setdefault(item.key, item.rel)
                    self._account(entry, patient_ids)
            t_convert = time.perf_counter()
            self._derive(pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.journal.close()
        self.progress("converting", len(inputs), len(inputs))
        t_derive = time.perf_counter()
        self.report.patients = len(patient_ids)
        self.report.this_run = {"processed": processed, "replayed": replayed}
        self.report.timings = {"detect_s": round(t_detect - t0, 3), "convert_s": round(t_convert - t_detect, 3),
                               "derive_s": round(t_derive - t_convert, 3)}
        self.report.check_invariant()
        return self.report

    # --- conversion scheduling -------------------------------------------------------------------
    def _conversions(self, items: list[_Input], pool: ProcessPoolExecutor | None,
                     local: _ConversionWorker | None) -> _LazyResults:
        """Conversions of the stage's inputs that need one, in input order, computed ahead by the pool."""
        needed = [x for x in items if self._needs_conversion(x)]
        index = {id(c): i for i, c in enumerate(self.converters)}
        jobs = [(str(x.path), x.key, index[id(x.converter)]) for x in needed]
        rels = [x.rel for x in needed]
        if pool is None:
            assert local is not None
            return _LazyResults(rels, ([local.convert(Path(p), d, c)] for p, d, c in jobs))
        size = max(1, min(_MAX_BATCH, len(jobs) // (self.workers * 8) or 1))
        batches = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        return _LazyResults(rels, _pooled(pool, batches, window=self.workers * 4))

    def _needs_conversion(self, item: _Input) -> bool:
        """Not replayed from the journal and not already known as a copy of a converted input."""
        if item.converter is None or self.journal.get(item.rel, item.digest) is not None:
            return False
        return item.linked_by_name or item.digest not in self.journal.digest_owner

    # --- one input --------------------------------------------------------------------------------
    def _detect(self, path: Path) -> _Input:
        rel = path.relative_to(self.raw_dir).as_posix()
        try:
            digest, head = _digest_and_head(path)
        except OSError as exc:
            return _Input(path, rel, "", None, sniff_error=f"cannot read the file: {exc}")
        if not head.data:
            what = "decompresses to nothing" if head.gzipped else "is empty (0 bytes)"
            return _Input(path, rel, digest, None, sniff_error=f"the file {what}: there is nothing to convert; "
                                                               "export it again or remove it from the export folder")
        try:
            conv = first_match(self.converters, head, self.site)
        except (OSError, CohortError, ValueError) as exc:
            return _Input(path, rel, digest, None, sniff_error=str(exc))
        if conv is None and head.data[:2] == b"\x1f\x8b" and not head.gzipped:
            return _Input(path, rel, digest, None, sniff_error=(
                "the file starts with the gzip signature but does not decompress: it is damaged (e.g. cut off "
                "while copying); copy or export it again"))
        return _Input(path, rel, digest, conv)

    def _commit(self, item: _Input, converted: _Converted | None,
                seen_digests: dict[str, str]) -> dict[str, Any]:
        """The input's final outcome, with its objects renamed into place when it is converted."""
        base: dict[str, Any] = {"input": item.rel, "sha256": item.digest,
                                "format": item.converter.name if item.converter else None}
        if item.converter is None:
            names = ", ".join(c.name for c in self.converters)
            reason = item.sniff_error or (
                f"format not recognised from its content (known formats: {names}); if this is an export "
                "the site uses, check its settings in site.yaml (encodings, column names, link patterns)")
            return self._quarantine(base, item, reason)
        # Equal bytes are the same input - unless the file name says which patient it belongs to.
        if not item.linked_by_name and (item.digest in seen_digests or item.digest in self.journal.digest_owner):
            first = seen_digests.get(item.digest) or self.journal.digest_owner[item.digest]
            if first != item.rel:
                if converted is not None:
                    converted.discard()
                return {**base, "outcome": OUTCOME_DUPLICATE, "duplicate_of": first,
                        "reason": "identical content (same SHA-256) already ingested"}
        assert converted is not None, f"no conversion scheduled for {item.rel}"
        warned = {"warnings": converted.warnings} if converted.warnings else {}
        if converted.error is not None:
            return self._quarantine({**base, **warned}, item, converted.error)
        # SOP Instance UIDs claimed by another input mean this input repeats objects already stored.
        for obj in converted.objects:
            owner = self.journal.sop_owner.get(obj.sop_uid)
            if owner is not None and owner != item.key:
                converted.discard()
                first = self.journal.digest_owner.get(owner, owner)
                return {**base, "outcome": OUTCOME_DUPLICATE, "duplicate_of": first,
                        "reason": f"SOP Instance UID {obj.sop_uid} is already in the store"}
        objects = []
        for obj in converted.objects:
            target = Path(obj.target)
            os.replace(obj.temp, target)
            self.store.sop_paths()[obj.sop_uid] = target
            self.written.append(target)
            self.records[str(target)] = obj.record
            objects.append({"sop_uid": obj.sop_uid, "sop_class": obj.sop_class, "patient_id": obj.patient_id})
        rejected = []
        for k, (where, why, content) in enumerate(converted.rejected):
            copy = self._quarantine_copy(item.rel, f"part{k + 1}", content, f"{where}: {why}")
            rejected.append({"where": where, "reason": why, "copy": copy})
        extra = {"key": item.key} if item.linked_by_name else {}
        return {**base, **extra, **warned, "outcome": OUTCOME_CONVERTED, "objects": objects, "rejected": rejected}

    def _derive(self, pool: ProcessPoolExecutor | None) -> None:
        """Measurement SRs of the SEGs this run's inputs stored (cohort/ingest/derive.py), by the
        conversion workers: outputs, not inputs, so they add to objects_written and
        objects_by_sop_class but never to ``inputs``."""
        from cohort.ingest.derive import derive_measurements

        paths = self.store.sop_paths()
        segs = [(uid, rel) for uid, rel in self._seg_inputs.items() if uid in paths]

        def pooled(todo: list[Path]) -> Iterator[tuple[DerivedObject | None, str | None]]:
            assert pool is not None
            size = max(1, min(_MAX_BATCH, len(todo) // (self.workers * 4) or 1))
            batches = [[str(p) for p in todo[i:i + size]] for i in range(0, len(todo), size)]
            return (outcome for batch in pool.map(_derive_batch, batches) for outcome in batch)

        self.progress("deriving measurements", 0, len(segs))
        # Without a pool (a small run) derive_measurements derives in this process.
        result = derive_measurements(self.store, [paths[uid] for uid, _ in segs], pooled if pool else None)
        self.progress("deriving measurements", len(segs), len(segs))
        by_seg = dict(segs)
        r = self.report
        for obj in result.objects:
            name = _sop_class_name(obj.sop_class)
            r.objects_by_sop_class[name] = r.objects_by_sop_class.get(name, 0) + 1
            r.objects_written += 1
            r.derived_objects += 1
            r.derived_written += int(obj.written)
        for seg_uid, reason in result.problems:
            r.warnings.append(InputWarning(by_seg.get(seg_uid, ""), seg_uid, reason))

    def _remove_leftovers(self) -> None:
        """Temporary files of a run that was killed: never committed, so never journaled."""
        for leftover in self.store.dicom_dir.rglob(f"{TEMP_PREFIX}*"):
            if leftover.is_file():
                _unlink(leftover)

    def _quarantine(self, base: dict[str, Any], item: _Input, reason: str) -> dict[str, Any]:
        name = item.rel.replace("/", "__")
        target = self.store.quarantine_dir / name
        shutil.copyfile(item.path, target)
        (self.store.quarantine_dir / f"{name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        return {**base, "outcome": OUTCOME_QUARANTINED, "reason": reason,
                "copy": str(target.relative_to(self.store.root))}

    def _quarantine_copy(self, rel: str, tag: str, content: str, reason: str) -> str:
        name = f"{rel.replace('/', '__')}.{tag}"
        target = self.store.quarantine_dir / f"{name}.txt"
        target.write_text(content + ("\n" if content and not content.endswith("\n") else ""), encoding="utf-8")
        (self.store.quarantine_dir / f"{name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        return str(target.relative_to(self.store.root))

    def _account(self, entry: dict[str, Any], patient_ids: set[str]) -> None:
        r = self.report
        r.inputs += 1
        r.warnings += [InputWarning(entry["input"], w["sop_uid"], w["message"]) for w in entry.get("warnings", [])]
        fmt = entry.get("format") or "unrecognised"
        r.inputs_by_format[fmt] = r.inputs_by_format.get(fmt, 0) + 1
        outcome = entry["outcome"]
        if outcome == OUTCOME_CONVERTED:
            r.converted += 1
            counts = Counter(_sop_class_name(o["sop_class"]) for o in entry.get("objects", []))
            for k, v in counts.items():
                r.objects_by_sop_class[k] = r.objects_by_sop_class.get(k, 0) + v
            r.objects_written += sum(counts.values())
            self._seg_inputs.update({o["sop_uid"]: entry["input"] for o in entry.get("objects", [])
                                     if o["sop_class"] == SegmentationStorage})
            patient_ids.update(o["patient_id"] for o in entry.get("objects", []))
            for part in entry.get("rejected", []):
                r.rejected_parts.append(RejectedPartEntry(entry["input"], part["where"], part["reason"],
                                                          part["copy"]))
        elif outcome == OUTCOME_DUPLICATE:
            r.duplicates += 1
            r.duplicate_inputs.append(DuplicateInput(entry["input"], entry["duplicate_of"], entry["reason"]))
        else:
            r.quarantined += 1
            r.quarantine.append(QuarantinedInput(entry["input"], entry["reason"], entry.get("format"),
                                                 entry["copy"]))


def _pooled(pool: ProcessPoolExecutor, batches: list[list[tuple[str, str, int]]],
            window: int) -> Iterator[list[_Converted]]:
    """Batch results in submission order, keeping at most ``window`` batches in flight."""
    pending: deque[Future[list[_Converted]]] = deque()
    it = iter(batches)
    try:
        for batch in it:
            pending.append(pool.submit(_convert_batch, batch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:  # interrupted: drop what was staged, it will never be committed
            if fut.cancel():
                continue
            try:
                for converted in fut.result():
                    converted.discard()
            except Exception:  # noqa: BLE001 - a broken pool already failed the run
                pass


class _LazyResults:
    """Conversion results by input path, pulled from an ordered stream as the commit loop asks."""

    def __init__(self, rels: list[str], stream: Iterator[list[_Converted]]) -> None:
        self._order = deque(rels)
        self._pending = set(rels)
        self._stream = stream
        self._ready: dict[str, _Converted] = {}

    def pop(self, rel: str) -> _Converted | None:
        """The conversion of ``rel``, or None when none was scheduled for it."""
        while rel in self._pending:
            for converted in next(self._stream):
                done = self._order.popleft()
                self._pending.discard(done)
                self._ready[done] = converted
        return self._ready.pop(rel, None)
