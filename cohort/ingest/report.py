"""The ingest report: what became of every input. Invariant: inputs == converted + duplicates + quarantined."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOME_CONVERTED = "converted"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_QUARANTINED = "quarantined"


@dataclass
class QuarantinedInput:
    """An input that could not be converted, where its copy lies, and what to do about it."""

    input: str
    reason: str
    format: str | None
    copy: str


@dataclass
class DuplicateInput:
    """An input whose content or objects were already in the store."""

    input: str
    duplicate_of: str
    reason: str


@dataclass
class RejectedPartEntry:
    """A part of a converted input (e.g. one CSV row) that was rejected, with its copy."""

    input: str
    where: str
    reason: str
    copy: str


@dataclass
class InputWarning:
    """A warning about one input (e.g. a reading problem pydicom reported, a missing type 2 attribute)."""

    input: str
    sop_uid: str  # the stored object it concerns; empty for the input as a whole
    message: str


@dataclass
class IngestReport:
    """Everything ``cohort ingest`` did, written as JSON with ``--report``."""

    site_id: str
    raw_dir: str
    store: str
    inputs: int = 0
    converted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    objects_written: int = 0
    objects_by_sop_class: dict[str, int] = field(default_factory=dict)
    derived_objects: int = 0  # of objects_written: measurement SRs derived from stored SEGs (outputs, not inputs)
    inputs_by_format: dict[str, int] = field(default_factory=dict)
    patients: int = 0
    quarantine: list[QuarantinedInput] = field(default_factory=list)
    duplicate_inputs: list[DuplicateInput] = field(default_factory=list)
    rejected_parts: list[RejectedPartEntry] = field(default_factory=list)
    warnings: list[InputWarning] = field(default_factory=list)
    indexed_files: int = 0
    index_failures: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    this_run: dict[str, int] = field(default_factory=dict)  # processed now vs replayed from the journal
    derived_written: int = 0  # derived objects written by this run (the others were already stored)

    def check_invariant(self) -> None:
        total = self.converted + self.duplicates + self.quarantined
        if self.inputs != total:
            raise AssertionError(f"ingest report invariant broken: inputs {self.inputs} != converted "
                                 f"{self.converted} + duplicates {self.duplicates} + quarantined {self.quarantined}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def outcome_view(self) -> dict[str, Any]:
        """The report without timings and run statistics: equal for equal inputs and store."""
        data = self.to_json()
        data.pop("timings")
        data.pop("this_run")
        data.pop("derived_written")
        data.pop("indexed_files")
        data.pop("index_failures")
        return data
