"""Validate a whole store with the reference validators: the pipeline's output-quality gate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from rich.table import Table

from cohort.dicom import validate as v
from cohort.store import Store

SR_MODALITY = "SR"


@dataclass
class StoreValidation:
    """Per validator: files checked, errors and warnings, and the first messages per file."""

    checked: Counter[str] = field(default_factory=Counter)
    error_count: Counter[str] = field(default_factory=Counter)
    warning_count: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(self.error_count.values())

    def add(self, tool: str, results: list[v.ValidationResult]) -> None:
        for r in results:
            self.checked[tool] += 1
            self.error_count[tool] += len(r.errors)
            self.warning_count[tool] += len(r.warnings)
            if r.errors:
                self.failures.append({"tool": tool, "path": str(r.path), "errors": r.errors[:5]})

    def to_json(self) -> dict[str, Any]:
        return {"checked": dict(self.checked), "errors": dict(self.error_count),
                "warnings": dict(self.warning_count), "failures": self.failures}

    def table(self) -> Table:
        t = Table(title="store validation")
        for col in ("validator", "files", "errors", "warnings"):
            t.add_column(col)
        for tool in self.checked:
            t.add_row(tool, str(self.checked[tool]), str(self.error_count[tool]), str(self.warning_count[tool]))
        return t


PROGRESS_BATCH = 20  # files per dciodvfy / dsrdump task: the bar moves every few seconds
SR_BATCH = 200  # SRs per DicomSRValidator run (each run starts a JVM)


def validate_store(root: Path, *, workers: int = 2,
                   progress: Callable[[str, int, int], None] | None = None) -> StoreValidation:
    """dciodvfy on every object; DicomSRValidator and dsrdump on every SR (``progress(tool, done, total)``)."""
    store = Store(root)
    files = list(store.files())
    srs = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
           .get("Modality") == SR_MODALITY]
    out = StoreValidation()
    steps: list[tuple[str, Callable[[list[Path]], list[v.ValidationResult]], list[Path], int]] = [
        ("dciodvfy", v.dciodvfy, files, PROGRESS_BATCH)]
    if srs:
        steps += [("DicomSRValidator", v.sr_validator, srs, SR_BATCH), ("dsrdump", v.dsrdump, srs, PROGRESS_BATCH)]
    with ThreadPoolExecutor(workers) as pool:
        for tool, run, paths, size in steps:
            done = 0
            if progress:
                progress(tool, 0, len(paths))
            for results in pool.map(run, [paths[i:i + size] for i in range(0, len(paths), size)]):
                out.add(tool, results)
                done += len(results)
                if progress:
                    progress(tool, done, len(paths))
    return out
