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
        if n < self.sampling_frequency or n > 16384:
            raise InputError(f"{n} samples per lead; expected between 1 s of signal and 16384",
                             path=path, field="leads")
        if not 200 <= self.sampling_frequency <= 1000:
            raise InputError(f"sampling frequency {self.sampling_frequency} Hz outside 200-1000 Hz",
                             path=path, field="sampling_frequency")
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
