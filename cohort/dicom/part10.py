"""What every object this project writes shares: Part 10 file meta and DICOM date/time strings.

Dates and times come from the sources (never the wall clock), so a converted object is reproducible.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

__all__ = ["file_meta_for", "format_da", "format_dt", "format_tm"]


def file_meta_for(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """Part 10 file meta for an object written in Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def format_da(dt: datetime) -> str:
    """DICOM DA of ``dt``'s clock date (any time zone is ignored: sources give local time)."""
    return dt.strftime("%Y%m%d")


def format_tm(dt: datetime) -> str:
    """DICOM TM, with microseconds only when there are any."""
    return dt.strftime("%H%M%S") + (f".{dt.microsecond:06d}" if dt.microsecond else "")


def format_dt(dt: datetime) -> str:
    """DICOM DT without offset, consistent with ``format_da`` and ``format_tm``."""
    return format_da(dt) + format_tm(dt)
