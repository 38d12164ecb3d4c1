"""What every source-format converter implements, and what the pipeline gives it.

A converter is one class per source format. It recognises its format by content (``sniff``) and
turns one input file into DICOM datasets (``convert``). Registration is one line in
``cohort/ingest/registry.py``, which format detection reads.
"""

from __future__ import annotations

import gzip
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydicom.dataset import Dataset

from cohort.dicom.patient import PatientRef
from cohort.dicom.uids import derived_uid
from cohort.siteconfig import IdKind, SiteConfig
from cohort.store import StoreView

HEAD_BYTES = 8192

# Conversion stages: objects of a later stage may reference objects of an earlier one
# (a SEG needs its CT in the store; an ECG report needs its waveform).
STAGE_IMAGES = 0
STAGE_WAVEFORMS = 1
STAGE_TABLES = 2
STAGE_ANNOTATIONS = 3


@dataclass(frozen=True)
class InputHead:
    """The start of an input file, decompressed when the file is gzip, for content sniffing."""

    path: Path
    data: bytes
    gzipped: bool

    @classmethod
    def read(cls, path: Path) -> InputHead:
        with open(path, "rb") as fh:
            raw = fh.read(HEAD_BYTES)
        if raw[:2] == b"\x1f\x8b":
            try:
                with gzip.open(path, "rb") as gz:
                    return cls(path, gz.read(HEAD_BYTES), True)
            except (OSError, EOFError, zlib.error):  # damaged gzip: sniff the raw bytes
                return cls(path, raw, False)
        return cls(path, raw, False)


@dataclass(frozen=True)
class RejectedPart:
    """A part of an input that could not be converted (e.g. one CSV row), kept with its reason."""

    where: str  # e.g. "row 17"
    reason: str
    content: str = ""


@dataclass(frozen=True)
class ConversionWarning:
    """Something about a converted input that a person should know but that did not stop it."""

    message: str
    sop_uid: str = ""  # the stored object it concerns; empty for the input as a whole


@dataclass
class ConversionResult:
    """What one input became: datasets to store, parts rejected with reasons, and warnings."""

    datasets: list[Dataset] = field(default_factory=list)
    rejected: list[RejectedPart] = field(default_factory=list)
    warnings: list[ConversionWarning] = field(default_factory=list)


class PatientDirectory(ABC):
    """Resolves source identifiers (PACS id, case number) to the site's pseudonymous patients."""

    @abstractmethod
    def resolve(self, id_kind: IdKind, value: str, *, path: Path, field: str) -> PatientRef:
        """The patient for ``value``; raises UnknownPatientError naming the file and the field."""


@dataclass(frozen=True)
class IngestContext:
    """Everything a converter may use besides its input file."""

    site: SiteConfig
    raw_dir: Path
    patients: PatientDirectory
    store: StoreView
    input_digest: str  # sha256 of the input file's bytes

    def uid(self, *role: str) -> str:
        """Deterministic UID for a derived object of this input (same input, same UID)."""
        return derived_uid(self.site.site_id, self.input_digest, *role)

    def patient_uid(self, patient_id: str, *role: str) -> str:
        """Deterministic UID shared by all inputs of one patient (e.g. the registry study)."""
        return derived_uid(self.site.site_id, patient_id, *role)


class Converter(ABC):
    """One source format: recognise it by content, convert one input file to DICOM datasets."""

    name: ClassVar[str]  # format id shown in reports, e.g. "hl7-aecg"
    stage: ClassVar[int]
    description: ClassVar[str]
    # True when the file *name* says which patient the content belongs to (NIfTI, markups): then two
    # files with equal bytes but different names are different inputs, not duplicates.
    linked_by_name: ClassVar[bool] = False

    @abstractmethod
    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        """True when the file is in this converter's format (content, not file name)."""

    @abstractmethod
    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        """Convert the file; raise InputError (naming file, field and fix) when it cannot be."""


ConverterFactory = Callable[[], Converter]


def first_match(converters: Sequence[Converter], head: InputHead, site: SiteConfig) -> Converter | None:
    """The first converter that recognises the input, in registry order."""
    for conv in converters:
        if conv.sniff(head, site):
            return conv
    return None
