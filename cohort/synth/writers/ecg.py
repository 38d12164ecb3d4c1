"""Synthetic resting-ECG exports: one writer module per device format, chosen by the site profile.

What all formats share lives here: which identifier the device knows the patient by, the signal, the
device's global measurements and its interpretation statements (in the device's language).
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import numpy as np

from cohort.synth.ecg_signal import synthesize_leads
from cohort.synth.model import CONDUCTION_LBBB, CONDUCTION_RBBB, EcgFacts, SyntheticPatient
from cohort.synth.profiles import SiteProfile

# Format -> (module, function). Adding a device format touches this table and one new module.
WRITERS: dict[str, tuple[str, str]] = {
    "dicom": ("cohort.synth.writers.ecg_dicom", "write_dicom_ecg"),
    "hl7-aecg": ("cohort.synth.writers.aecg", "write_aecg"),
    "ge-muse": ("cohort.synth.writers.muse", "write_muse"),
    "scp-ecg": ("cohort.synth.writers.scpecg", "write_scpecg"),
}

_STATEMENTS = {
    "en": {"sinus": "Sinus rhythm", "afib": "Atrial fibrillation", "avb1": "1st degree AV block",
           "LBBB": "Left bundle branch block", "RBBB": "Right bundle branch block",
           "normal": "Normal ECG", "abnormal": "Abnormal ECG"},
    "de": {"sinus": "Sinusrhythmus", "afib": "Vorhofflimmern", "avb1": "AV-Block I. Grades",
           "LBBB": "Linksschenkelblock", "RBBB": "Rechtsschenkelblock",
           "normal": "Normales EKG", "abnormal": "Pathologisches EKG"},
}


@dataclass(frozen=True)
class EcgExport:
    """Everything a device writes about one resting ECG, before format-specific encoding."""

    patient_id: str  # the identifier the ECG system knows (PACS id or case number)
    family_name: str
    given_name: str
    sex: str
    birth_date: date
    age_years: int
    acquired: datetime
    fs: int
    leads: dict[str, np.ndarray]  # microvolts, names of TWELVE_LEADS
    measurements: dict[str, float]  # canonical keys of cohort.ecg.record.MEASUREMENT_UNITS
    statements: list[str]
    seed: int


def export_id(patient: SyntheticPatient, profile: SiteProfile) -> str:
    """The identifier the site's ECG system writes: PACS id or hospital case number."""
    return patient.pacs_id if profile.config.ecg.id_kind == "pacs_id" else patient.case_id


def device_measurements(facts: EcgFacts) -> dict[str, float]:
    """Global measurements as the device reports them (no PR or P axis without P waves)."""
    out: dict[str, float] = {"heart_rate": facts.heart_rate, "rr_ms": facts.rr_ms, "qrs_ms": facts.qrs_ms,
                             "qt_ms": facts.qt_ms, "qtc_ms": facts.qtc_ms, "qrs_axis_deg": facts.qrs_axis_deg,
                             "t_axis_deg": facts.t_axis_deg}
    if facts.rhythm != "afib" and facts.pr_ms > 0:
        out["pr_ms"] = facts.pr_ms
        out["p_axis_deg"] = facts.p_axis_deg
    return {k: float(v) for k, v in out.items()}


def device_statements(facts: EcgFacts, language: str = "en") -> list[str]:
    """Interpretation statements in a device's style and language ("en" or "de")."""
    words = _STATEMENTS[language]
    out = [words["afib"] if facts.rhythm == "afib" else words["sinus"]]
    if facts.first_degree_av_block:
        out.append(words["avb1"])
    if facts.conduction in (CONDUCTION_LBBB, CONDUCTION_RBBB):
        out.append(words[facts.conduction])
    abnormal = facts.rhythm == "afib" or facts.first_degree_av_block or len(out) > 1
    out.append(words["abnormal"] if abnormal else words["normal"])
    return out


def prepare_export(patient: SyntheticPatient, profile: SiteProfile, *, language: str = "en",
                   fs: int = 500, seconds: float = 10.0) -> EcgExport:
    """The device-independent content of one patient's ECG export (deterministic per patient)."""
    facts = patient.ecg
    if facts is None:
        raise ValueError(f"patient {patient.pacs_id} has no ECG")
    seed = zlib.crc32(f"{patient.site_id}/{patient.index}/ecg".encode())
    acquired = datetime.combine(facts.acquired, time(facts.hour, seed % 60, (seed // 60) % 60))
    age = facts.acquired.year - patient.birth_date.year - (
        (facts.acquired.month, facts.acquired.day) < (patient.birth_date.month, patient.birth_date.day))
    return EcgExport(
        patient_id=export_id(patient, profile), family_name=patient.family_name,
        given_name=patient.given_name, sex=patient.sex, birth_date=patient.birth_date, age_years=age,
        acquired=acquired, fs=fs, leads=synthesize_leads(facts, fs=fs, seconds=seconds, seed=seed),
        measurements=device_measurements(facts), statements=device_statements(facts, language), seed=seed,
    )


def quantize(samples: np.ndarray, units_per_bit: float) -> np.ndarray:
    """Microvolts to the device's int16 counts (rounded, clipped to the int16 range)."""
    return np.clip(np.rint(samples / units_per_bit), -32768, 32767).astype("<i2")


def write_ecg(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the patient's resting ECG as the site's device exports it; [] when there is no ECG."""
    if patient.ecg is None:
        return []
    try:
        module_name, func_name = WRITERS[profile.ecg_format]
    except KeyError:
        raise ValueError(f"unknown ECG format {profile.ecg_format!r}; known: {', '.join(WRITERS)}") from None
    writer = getattr(importlib.import_module(module_name), func_name)
    return list(writer(patient, profile, Path(raw_dir)))
