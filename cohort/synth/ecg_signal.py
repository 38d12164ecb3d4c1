"""Synthetic resting 12-lead ECG signals whose morphology follows the patient's ECG facts.

The heart is modelled as a moving electrical dipole: every wave (P, QRS parts, T) is a Gaussian pulse
in time with a fixed 3D direction. A lead records the projection of the dipole onto its lead vector,
so the limb leads obey Einthoven's and Goldberger's laws exactly (III = II - I, aVR = -(I + II) / 2,
...) because III, aVR, aVL and aVF are computed from I and II. Conduction blocks change the order and
direction of the ventricular activation, which gives the lead-specific patterns clinicians read
(LBBB: broad notched R in I, aVL, V5-V6 and deep QS in V1; RBBB: rSR' in V1, slurred S in I and V6).

Axes: x points to the patient's left, y downwards (inferior), z forwards (anterior), in millivolts
per unit of the lead vector. Angles follow the clinical convention (frontal plane: 0 deg = lead I,
+90 deg = aVF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cohort.dicom.codes import TWELVE_LEADS
from cohort.synth.model import CONDUCTION_LBBB, CONDUCTION_RBBB, EcgFacts

# Horizontal-plane angle of each precordial electrode, degrees from the left (x) towards anterior (z);
# V1 sits right of the sternum, V6 in the left mid-axillary line.
_PRECORDIAL_ANGLE = {"V1": 115.0, "V2": 94.0, "V3": 77.0, "V4": 58.0, "V5": 30.0, "V6": 0.0}
_PRECORDIAL_GAIN = {"V1": 0.9, "V2": 1.25, "V3": 1.3, "V4": 1.25, "V5": 1.05, "V6": 0.85}
_PRECORDIAL_Y = 0.2  # the chest leads also see a little of the inferior component


@dataclass(frozen=True)
class _Wave:
    """One Gaussian pulse of the dipole: centre and width in ms (from QRS onset), direction, size."""

    centre_ms: float
    sigma_ms: float
    amplitude_uv: float
    direction: tuple[float, float, float]


def _lead_matrix() -> np.ndarray:
    """Rows: lead vectors of I, II and V1-V6 (the eight independent leads)."""
    rows = [(1.0, 0.0, 0.0), (math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0)]
    for lead in ("V1", "V2", "V3", "V4", "V5", "V6"):
        a = math.radians(_PRECORDIAL_ANGLE[lead])
        g = _PRECORDIAL_GAIN[lead]
        rows.append((g * math.cos(a), g * _PRECORDIAL_Y, g * math.sin(a)))
    return np.array(rows)


def _direction(frontal_deg: float, anterior: float) -> tuple[float, float, float]:
    """Unit-ish 3D direction from a frontal-plane axis and an anterior (z) component."""
    a = math.radians(frontal_deg)
    v = np.array([math.cos(a), math.sin(a), anterior])
    v = v / np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def _ventricular_waves(facts: EcgFacts) -> list[_Wave]:
    """QRS parts and T wave for the patient's conduction pattern; times relative to QRS onset."""
    qrs = float(facts.qrs_ms)
    axis = float(facts.qrs_axis_deg)
    waves: list[_Wave] = []
    if facts.conduction == CONDUCTION_LBBB:
        # Septum activated right-to-left, then slow spread through the LV: two broad leftward-posterior
        # lobes whose overlap leaves the notch ("M" shape) in I, aVL, V5-V6 and a broad QS in V1-V2.
        d = _direction(axis, -0.6)
        waves += [
            _Wave(0.30 * qrs, 0.12 * qrs, 1100.0, d),
            _Wave(0.68 * qrs, 0.13 * qrs, 1250.0, _direction(axis - 15, -0.8)),
        ]
        # Secondary ST-T change: T wave opposite to the QRS.
        t_dir = tuple(-c for c in d)
        t_amp = 380.0
    else:
        lv_end = 95.0 if facts.conduction == CONDUCTION_RBBB else qrs
        lv = min(lv_end, qrs)
        waves += [
            _Wave(0.12 * lv, 0.06 * lv, 220.0, _direction(axis + 150, 1.6)),  # septal q / r in V1
            _Wave(0.48 * lv, 0.12 * lv, 1250.0, _direction(axis, -0.35)),  # main LV activation
            _Wave(0.82 * lv, 0.08 * lv, 330.0, _direction(axis + 200, -0.6)),  # basal terminal forces
        ]
        if facts.conduction == CONDUCTION_RBBB:
            # Late, slow right-ventricular activation: R' in V1-V2, broad S in I and V6.
            late = qrs - lv
            waves.append(_Wave(lv + 0.45 * late, 0.28 * late + 6.0, 650.0, _direction(200.0, 1.3)))
            t_dir = _direction(axis + 10, -0.9)
        else:
            t_dir = _direction(float(facts.t_axis_deg), 0.5)
        t_amp = 300.0
    # T wave ends (about 2.5 sigma after its peak) at QRS onset + QT.
    sigma_t = min(55.0, facts.qt_ms / 7.5)
    waves.append(_Wave(facts.qt_ms - 2.5 * sigma_t, sigma_t, t_amp, t_dir))  # type: ignore[arg-type]
    return waves


def _beat_onsets(facts: EcgFacts, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """QRS onsets in ms, from one beat before the record to its end (T waves spill over the start)."""
    rr = float(facts.rr_ms)
    cv = 0.18 if facts.rhythm == "afib" else 0.02  # atrial fibrillation: irregularly irregular
    t = -rr * (1.0 + rng.random())
    onsets = []
    end = seconds * 1000.0 + rr
    while t < end:
        onsets.append(t)
        t += max(0.45 * rr, rr * (1.0 + cv * rng.standard_normal()))
    return np.array(onsets)


def synthesize_leads(facts: EcgFacts, fs: int = 500, seconds: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Twelve leads (names of ``TWELVE_LEADS``) in microvolts, deterministic for ``seed``.

    Heart rate, PR, QRS width and shape, QT and axes come from ``facts``; atrial fibrillation gives an
    irregular RR and fibrillatory waves instead of P waves.
    """
    rng = np.random.default_rng(seed)
    n = int(round(fs * seconds))
    t_ms = np.arange(n) * (1000.0 / fs)
    waves = _ventricular_waves(facts)
    if facts.rhythm != "afib" and facts.pr_ms > 0:
        # P wave: onset at -PR, about 100 ms long.
        waves.append(_Wave(-facts.pr_ms + 50.0, 20.0, 140.0, _direction(float(facts.p_axis_deg), 0.15)))
    dipole = np.zeros((n, 3))
    for onset in _beat_onsets(facts, seconds, rng):
        jitter = 1.0 + 0.03 * rng.standard_normal()  # beat-to-beat amplitude variation (respiration)
        for w in waves:
            centre = onset + w.centre_ms
            lo = np.searchsorted(t_ms, centre - 5 * w.sigma_ms)
            hi = np.searchsorted(t_ms, centre + 5 * w.sigma_ms)
            if hi <= lo:
                continue
            pulse = w.amplitude_uv * jitter * np.exp(-0.5 * ((t_ms[lo:hi] - centre) / w.sigma_ms) ** 2)
            dipole[lo:hi] += pulse[:, None] * np.asarray(w.direction)[None, :]
    if facts.rhythm == "afib":
        # Fibrillatory waves (5-7 Hz), best seen in V1 and the inferior leads.
        f_hz = 5.0 + 2.0 * rng.random()
        phase = 2 * math.pi * f_hz * t_ms / 1000.0 + 0.8 * np.sin(2 * math.pi * 0.7 * t_ms / 1000.0)
        fw = 45.0 * np.sin(phase)
        dipole += fw[:, None] * np.array(_direction(100.0, 0.8))[None, :]
    independent = dipole @ _lead_matrix().T  # (n, 8): I, II, V1..V6
    # Measurement noise and baseline wander; added before deriving III, aVR, aVL, aVF so that those
    # stay exact Einthoven / Goldberger combinations, as in a real electrocardiograph.
    wander_hz = 0.15 + 0.2 * rng.random()
    wander = 25.0 * np.sin(2 * math.pi * wander_hz * t_ms / 1000.0 + rng.uniform(0, 2 * math.pi))
    independent += rng.normal(0.0, 6.0, size=independent.shape) + wander[:, None] * rng.uniform(0.3, 1.0, 8)
    i, ii = independent[:, 0], independent[:, 1]
    leads = {
        "I": i, "II": ii, "III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2,
    }
    for k, name in enumerate(("V1", "V2", "V3", "V4", "V5", "V6")):
        leads[name] = independent[:, 2 + k]
    return {name: np.ascontiguousarray(leads[name]) for name in TWELVE_LEADS}
