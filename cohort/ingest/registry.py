"""The one table of source formats. Format detection tries them in this order.

Adding a format: write one converter module under ``cohort/ingest/converters/`` and add its class
here. Order matters only where formats overlap (ECG waveforms before generic DICOM objects).
"""

from __future__ import annotations

from cohort.ingest.base import Converter
from cohort.ingest.converters.clinical_csv import (
    IdMappingConverter,
    ProceduresConverter,
    RegistryConverter,
    UnmappedTableConverter,
)
from cohort.ingest.converters.dicom_objects import DicomObjectConverter
from cohort.ingest.converters.ecg import AecgConverter, DicomEcgConverter, MuseConverter, ScpEcgConverter
from cohort.ingest.converters.free_text import FreeTextConverter
from cohort.ingest.converters.markups import MarkupsConverter
from cohort.ingest.converters.nifti_seg import NiftiSegmentationConverter

CONVERTER_CLASSES: tuple[type[Converter], ...] = (
    DicomEcgConverter,
    DicomObjectConverter,
    AecgConverter,
    MuseConverter,
    ScpEcgConverter,
    IdMappingConverter,
    ProceduresConverter,
    RegistryConverter,
    NiftiSegmentationConverter,
    MarkupsConverter,
    FreeTextConverter,
    UnmappedTableConverter,  # last: only tables no mapped converter took
)


def default_converters() -> list[Converter]:
    """One instance of every registered converter, in detection order."""
    return [cls() for cls in CONVERTER_CLASSES]
