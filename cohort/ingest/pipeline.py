"""``cohort ingest``: detect every input's format by content, convert it, store it, report it.

Idempotent and crash-safe: object UIDs are derived from input content, files are written
atomically, and each input's final outcome is appended to ``STORE/.ingest/journal.jsonl`` after its
objects are on disk. A re-run replays recorded outcomes, so a run killed midway and then repeated
leaves the same store and the same report as one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from cohort.errors import CohortError, ConfigError, InputError
from cohort.ingest.base import Converter, IngestContext, InputHead, first_match
from cohort.ingest.patients import MappingPatientDirectory
from cohort.ingest.report import (
    OUTCOME_CONVERTED,
    OUTCOME_DUPLICATE,
    OUTCOME_QUARANTINED,
    DuplicateInput,
    IngestReport,
    QuarantinedInput,
    RejectedPartEntry,
)
from cohort.siteconfig import SiteConfig
from cohort.store import Store

ProgressCallback = Callable[[str, int, int], None]  # (stage description, done, total)


@dataclass
class _Input:
    path: Path
    rel: str
    digest: str
    converter: Converter | None
    sniff_error: str | None = None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        self.sop_owner: dict[str, str] = {}  # SOP Instance UID -> input digest that produced it
        self.digest_owner: dict[str, str] = {}  # input digest -> first input path with it
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._remember(entry)

    def _remember(self, entry: dict[str, Any]) -> None:
        self.entries[(entry["input"], entry["sha256"])] = entry
        if entry["outcome"] == OUTCOME_CONVERTED:
            self.digest_owner.setdefault(entry["sha256"], entry["input"])
            for obj in entry.get("objects", []):
                self.sop_owner.setdefault(obj["sop_uid"], entry["sha256"])

    def get(self, rel: str, digest: str) -> dict[str, Any] | None:
        return self.entries.get((rel, digest))

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            fh.flush()
        self._remember(entry)


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


class IngestRun:
    """One ingest of a raw export folder into a store."""

    def __init__(self, raw_dir: Path, store: Store, site: SiteConfig, converters: Sequence[Converter],
                 progress: ProgressCallback | None = None) -> None:
        self.raw_dir = raw_dir
        self.store = store
        self.site = site
        self.converters = converters
        self.progress = progress or (lambda *_: None)
        self.journal = Journal(store.state_dir / "journal.jsonl")
        self.report = IngestReport(site_id=site.site_id, raw_dir=str(raw_dir), store=str(store.root))
        self.written: list[Path] = []

    def run(self) -> IngestReport:
        t0 = time.perf_counter()
        patients = MappingPatientDirectory(self.site, self.raw_dir)
        paths = discover_inputs(self.raw_dir)
        inputs = []
        for i, path in enumerate(paths):
            self.progress("detecting formats", i, len(paths))
            inputs.append(self._detect(path))
        self.progress("detecting formats", len(paths), len(paths))
        t_detect = time.perf_counter()
        inputs.sort(key=lambda x: (x.converter.stage if x.converter else -1, x.rel))
        replayed = processed = 0
        seen_digests: dict[str, str] = {}
        patient_ids: set[str] = set()
        for i, item in enumerate(inputs):
            self.progress("converting", i, len(inputs))
            entry = self.journal.get(item.rel, item.digest)
            if entry is None:
                entry = self._process(item, patients, seen_digests)
                self.journal.append(entry)
                processed += 1
            else:
                replayed += 1
            if entry["outcome"] == OUTCOME_CONVERTED:
                seen_digests.setdefault(item.digest, item.rel)
            self._account(entry, patient_ids)
        self.progress("converting", len(inputs), len(inputs))
        t_convert = time.perf_counter()
        self.report.patients = len(patient_ids)
        self.report.this_run = {"processed": processed, "replayed": replayed}
        self.report.timings = {"detect_s": round(t_detect - t0, 3), "convert_s": round(t_convert - t_detect, 3)}
        self.report.check_invariant()
        return self.report

    # --- one input --------------------------------------------------------------------------------
    def _detect(self, path: Path) -> _Input:
        rel = path.relative_to(self.raw_dir).as_posix()
        digest = _digest(path)
        try:
            head = InputHead.read(path)
            conv = first_match(self.converters, head, self.site)
            return _Input(path, rel, digest, conv)
        except (OSError, CohortError, ValueError) as exc:
            return _Input(path, rel, digest, None, sniff_error=str(exc))

    def _process(self, item: _Input, patients: MappingPatientDirectory,
                 seen_digests: dict[str, str]) -> dict[str, Any]:
        base: dict[str, Any] = {"input": item.rel, "sha256": item.digest,
                                "format": item.converter.name if item.converter else None}
        if item.converter is None:
            names = ", ".join(c.name for c in self.converters)
            reason = item.sniff_error or (
                f"format not recognised from its content (known formats: {names}); if this is an export "
                "the site uses, check its settings in site.yaml (encodings, column names, link patterns)")
            return self._quarantine(base, item, reason)
        if item.digest in seen_digests or item.digest in self.journal.digest_owner:
            first = seen_digests.get(item.digest) or self.journal.digest_owner[item.digest]
            if first != item.rel:
                return {**base, "outcome": OUTCOME_DUPLICATE, "duplicate_of": first,
                        "reason": "identical content (same SHA-256) already ingested"}
        ctx = IngestContext(site=self.site, raw_dir=self.raw_dir, patients=patients, store=self.store,
                            input_digest=item.digest)
        try:
            result = item.converter.convert(item.path, ctx)
        except InputError as exc:
            return self._quarantine(base, item, str(exc))
        except Exception as exc:  # a converter bug must not sink the run; keep the input and say so
            return self._quarantine(base, item, f"converter {item.converter.name} failed unexpectedly: "
                                                f"{type(exc).__name__}: {exc} (please report this as a bug)")
        # SOP Instance UIDs claimed by another input mean this input repeats objects already stored.
        for ds in result.datasets:
            owner = self.journal.sop_owner.get(str(ds.SOPInstanceUID))
            if owner is not None and owner != item.digest:
                first = self.journal.digest_owner.get(owner, owner)
                return {**base, "outcome": OUTCOME_DUPLICATE, "duplicate_of": first,
                        "reason": f"SOP Instance UID {ds.SOPInstanceUID} is already in the store"}
        objects = []
        for ds in result.datasets:
            path = self.store.write(ds)
            self.written.append(path)
            objects.append({"sop_uid": str(ds.SOPInstanceUID), "sop_class": str(ds.SOPClassUID),
                            "patient_id": str(ds.PatientID)})
        rejected = []
        for k, part in enumerate(result.rejected):
            copy = self._quarantine_copy(item.rel, f"part{k + 1}", part.content,
                                         f"{part.where}: {part.reason}")
            rejected.append({"where": part.where, "reason": part.reason, "copy": copy})
        return {**base, "outcome": OUTCOME_CONVERTED, "objects": objects, "rejected": rejected}

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
        fmt = entry.get("format") or "unrecognised"
        r.inputs_by_format[fmt] = r.inputs_by_format.get(fmt, 0) + 1
        outcome = entry["outcome"]
        if outcome == OUTCOME_CONVERTED:
            r.converted += 1
            counts = Counter(_sop_class_name(o["sop_class"]) for o in entry.get("objects", []))
            for k, v in counts.items():
                r.objects_by_sop_class[k] = r.objects_by_sop_class.get(k, 0) + v
            r.objects_written += sum(counts.values())
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
