"""The site store: DICOM Part 10 files in a folder tree a person can browse, plus the index.

Layout::

    STORE/dicom/<PatientID>/<StudyInstanceUID>/<Modality>_<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    STORE/quarantine/<input name>        copies of inputs that could not be converted
    STORE/quarantine/<input name>.reason.txt
    STORE/.ingest/journal.jsonl          one line per input whose outcome is final
    STORE/index.duckdb                   the cohort index (cohort.index), replaced whole by each writer
    STORE/index.version                  its version number ({"version": N}; cohort.index.publish)
    STORE/.index.lock                    the index writers' lock

Writes are atomic (temporary file, then rename), so a killed ingest never leaves half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from cohort.errors import InputError

_SAFE = re.compile(r"[^A-Za-z0-9.\-_]")


def _safe(part: str) -> str:
    return _SAFE.sub("_", str(part)) or "_"


@dataclass(frozen=True)
class SeriesInStore:
    """A series already in the store (used by converters that annotate it)."""

    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    files: tuple[Path, ...]


class StoreView(ABC):
    """Read access to what the store holds, for converters that reference stored objects."""

    @abstractmethod
    def series_of(self, patient_id: str, modality: str) -> list[SeriesInStore]:
        """Stored series of a patient with that modality, oldest study first."""


class Store(StoreView):
    """A site store rooted at a folder. Knows which SOP Instance UIDs it holds."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.dicom_dir = self.root / "dicom"
        self.quarantine_dir = self.root / "quarantine"
        self.state_dir = self.root / ".ingest"
        for d in (self.dicom_dir, self.quarantine_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._sop_paths: dict[str, Path] | None = None

    # --- writing ----------------------------------------------------------------------------------
    def path_for(self, ds: Dataset) -> Path:
        """Where a dataset lives in the store (depends only on its identifiers)."""
        return (self.dicom_dir / _safe(ds.PatientID) / _safe(ds.StudyInstanceUID)
                / f"{_safe(ds.Modality)}_{_safe(ds.SeriesInstanceUID)}" / f"{_safe(ds.SOPInstanceUID)}.dcm")

    def write(self, ds: Dataset) -> Path:
        """Write ``ds`` as a Part 10 file atomically; returns its path."""
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            if not str(ds.get(keyword, "") or ""):
                raise InputError(f"converted object lacks {keyword}; this is a converter bug", field=keyword)
        target = self.path_for(ds)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".dcm")
        os.close(fd)
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if self._sop_paths is not None:  # else the first sop_paths() call finds the file
            self._sop_paths[str(ds.SOPInstanceUID)] = target
        return target

    # --- reading ----------------------------------------------------------------------------------
    def sop_paths(self) -> dict[str, Path]:
        """SOP Instance UID -> file, from the file names (built once per process)."""
        if self._sop_paths is None:
            self._sop_paths = {p.stem: p for p in self.dicom_dir.glob("*/*/*/*.dcm")}
        return self._sop_paths

    def has(self, sop_uid: str) -> bool:
        return sop_uid in self.sop_paths()

    def files(self) -> Iterator[Path]:
        """Every stored DICOM file, in a stable order."""
        yield from sorted(self.dicom_dir.glob("*/*/*/*.dcm"))

    def series_of(self, patient_id: str, modality: str) -> list[SeriesInStore]:
        out = []
        for study_dir in sorted((self.dicom_dir / _safe(patient_id)).glob("*")):
            for series_dir in sorted(study_dir.glob(f"{_safe(modality)}_*")):
                files = tuple(sorted(series_dir.glob("*.dcm")))
                if not files:
                    continue
                first = pydicom.dcmread(files[0], stop_before_pixels=True)
                out.append(SeriesInStore(patient_id, str(first.StudyInstanceUID),
                                         str(first.SeriesInstanceUID), modality, files))
        out.sort(key=lambda s: (str(pydicom.dcmread(s.files[0], stop_before_pixels=True).get("StudyDate", "")),
                                s.series_uid))
        return out

    def patients(self) -> list[str]:
        return sorted(p.name for p in self.dicom_dir.iterdir() if p.is_dir())
