"""The SOP classes this project writes or treats specially, in one table (values from pydicom's UID list).

Which classes are ECG is decided here only: ``ECG_WAVEFORM_PREFIX`` covers every ECG waveform class of
the standard (the index files them as kind ``ECG``); ``RESTING_ECG_SOP_CLASSES`` are the ones read as a
resting 12-lead ECG (the ``dicom-ecg`` converter; other DICOM objects go through ``dicom``).
"""

from __future__ import annotations

from pydicom import uid

__all__ = [
    "COMPREHENSIVE_SR_STORAGE", "ECG_WAVEFORM_PREFIX", "GENERAL_ECG_STORAGE", "LABEL_MAP_SEGMENTATION_STORAGE",
    "RESTING_ECG_SOP_CLASSES", "SEG_SOP_CLASSES", "SEGMENTATION_STORAGE", "SR_PREFIX", "TWELVE_LEAD_ECG_STORAGE",
]

TWELVE_LEAD_ECG_STORAGE = str(uid.TwelveLeadECGWaveformStorage)  # 1.2.840.10008.5.1.4.1.1.9.1.1
GENERAL_ECG_STORAGE = str(uid.GeneralECGWaveformStorage)  # 1.2.840.10008.5.1.4.1.1.9.1.2
RESTING_ECG_SOP_CLASSES = frozenset({TWELVE_LEAD_ECG_STORAGE, GENERAL_ECG_STORAGE})
ECG_WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9.1."  # 12-lead, general, ambulatory, general 32-bit ECG

COMPREHENSIVE_SR_STORAGE = str(uid.ComprehensiveSRStorage)  # 1.2.840.10008.5.1.4.1.1.88.33
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every structured report class

SEGMENTATION_STORAGE = str(uid.SegmentationStorage)  # 1.2.840.10008.5.1.4.1.1.66.4
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"  # not in pydicom 3.0's UID list
SEG_SOP_CLASSES = frozenset({SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE})
