"""Builders of the DICOM objects the pipeline writes (waveforms, SR, SEG) and shared DICOM helpers."""
