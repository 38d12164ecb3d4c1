"""A stored 12-lead ECG waveform as a float32 (12, N) array in millivolts at a fixed sampling rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from cohort.dicom.codes import TWELVE_LEADS
from cohort.ecg.readers.dicom_ecg import read_dicom_ecg

EXPORT_SAMPLING_RATE = 500  # Hz
EXPORT_SECONDS = 10.0


def ecg_array(path: Path, rate: int = EXPORT_SAMPLING_RATE, seconds: float = EXPORT_SECONDS) -> np.ndarray:
    """Leads in ``TWELVE_LEADS`` order, resampled to ``rate``, cut or zero-padded to ``seconds``, in mV."""
    record = read_dicom_ecg(path)
    fs = float(record.sampling_frequency)
    n_out = int(round(rate * seconds))
    out = np.zeros((len(TWELVE_LEADS), n_out), dtype=np.float32)
    for i, lead in enumerate(TWELVE_LEADS):
        signal = np.asarray(record.leads[lead], dtype=np.float64) / 1000.0  # uV -> mV
        if abs(fs - rate) > 1e-6:
            g = np.gcd(int(round(fs)), rate)
            signal = resample_poly(signal, rate // g, int(round(fs)) // g)
        n = min(n_out, len(signal))
        out[i, :n] = signal[:n]
    return out


def write_ecg_npy(path: Path, out: Path) -> Path:
    """Write ``ecg_array(path)`` as .npy (no pickle)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, ecg_array(path), allow_pickle=False)
    return out
