"""The one in-memory form every ECG source format is read into before it becomes DICOM."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from cohort.dicom.codes import TWELVE_LEADS

# Canonical measurement keys (units in comments); readers map their format's names onto these.
MEASUREMENT_UNITS: dict[str, str] = {
    "heart_rate": "/min",
    "pr_ms": "ms",
    "qrs_ms": "ms",
    "qt_ms": "ms",
    "qtc_ms": "ms",
    "rr_ms": "ms",
    "p_axis_deg": "deg",
    "qrs_axis_deg": "deg",
    "t_axis_deg": "deg",
}
# Canonical rhythm / conduction findings; readers map statements onto these where they can.
FINDINGS = ("sinus_rhythm", "atrial_fibrillation", "lbbb", "rbbb", "first_degree_av_block")
# Limits every ECG must meet before it becomes DICOM (docs/formats.md, "Limits"). The sampling range is
# the DICOM ECG IODs' (PS3.3 A.34); the minimum length is the project's: a shorter strip holds no beat
# a measurement could rest on. 16-bit samples of 12 channels must fit the 32-bit length of WaveformData.
MIN_SECONDS = 1.0
SAMPLING_RANGE_HZ = (200.0, 1000.0)
MAX_SAMPLES = (2**32 - 2) // (2 * len(TWELVE_LEADS))


@dataclass
class EcgRecord:
    """A resting ECG as read from any source format.

    ``leads`` maps lead names of ``TWELVE_LEADS`` to samples in microvolts (float), all the same
    length. A reader of a format that stores 8 leads derives III, aVR, aVL, aVF (``derive_limb_leads``).
    """

    source_format: str
    patient_source_id: str
    acquired: datetime
    sampling_frequency: float
    leads: dict[str, np.ndarray]
    measurements: dict[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)  # values of FINDINGS
    statements: list[str] = field(default_factory=list)  # the device's interpretation text, verbatim
    manufacturer: str = ""
    device_model: str = ""
    patient_sex: str = ""  # "M" | "F" | ""
    patient_age_years: int | None = None
    # Microvolts per count of the source (e.g. 0.183 for 183 nV): the DICOM waveform keeps it.
    amplitude_resolution_uv: float | None = None
    notes: list[str] = field(default_factory=list)  # what the reader had to assume; ingest-report warnings

    def flat_leads(self) -> list[str]:
        """Leads whose samples are all zero (an electrode not connected or a lead not recorded)."""
        return [lead for lead in TWELVE_LEADS if lead in self.leads and not np.any(self.leads[lead])]

    def check(self, path: str) -> None:
        """Raise InputError when the record cannot become a valid 12-lead ECG object."""
        from cohort.errors import InputError

        missing = [lead for lead in TWELVE_LEADS if lead not in self.leads]
        if missing:
            raise InputError(f"ECG has {len(self.leads)} leads, missing {missing}; a 12-lead ECG needs "
                             f"{', '.join(TWELVE_LEADS)} (or I, II, V1-V6 to derive the rest)",
                             path=path, field="leads")
        lengths = {len(v) for v in self.leads.values()}
        if len(lengths) != 1:
            raise InputError(f"leads have different lengths {sorted(lengths)}", path=path, field="leads")
        n = lengths.pop()
        low, high = SAMPLING_RANGE_HZ
        if not low <= self.sampling_frequency <= high:
            raise InputError(f"sampling frequency {self.sampling_frequency:g} Hz outside {low:g}-{high:g} Hz, the "
                             "range of the DICOM ECG objects; export the ECG at a rate in that range (500 Hz is "
                             "usual)", path=path, field="sampling_frequency")
        if n < MIN_SECONDS * self.sampling_frequency:
            raise InputError(f"{n} samples per lead are {n / self.sampling_frequency:.3f} s of signal, less than the "
                             f"minimum of {MIN_SECONDS:g} s; export the complete recording (a resting ECG has 10 s)",
                             path=path, field="leads")
        if n > MAX_SAMPLES:
            raise InputError(f"{n} samples per lead exceed {MAX_SAMPLES}, the most one DICOM waveform can hold "
                             "(WaveformData has a 32-bit length); export the recording in parts",
                             path=path, field="leads")
        unknown = [f for f in self.findings if f not in FINDINGS]
        if unknown:
            raise ValueError(f"reader produced unknown findings {unknown}; valid: {FINDINGS}")


def derive_limb_leads(leads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add III, aVR, aVL, aVF from I and II (Einthoven / Goldberger): III = II - I, aVR = -(I+II)/2, ..."""
    i, ii = leads["I"], leads["II"]
    out = dict(leads)
    out.setdefault("III", ii - i)
    out.setdefault("aVR", -(i + ii) / 2)
    out.setdefault("aVL", i - ii / 2)
    out.setdefault("aVF", ii - i / 2)
    return out
