"""The seeded generative model behind every synthetic patient (documented in docs/synthetic-data.md).

The label (permanent pacemaker within 30 days after TAVI) is drawn from a logistic model over known
risk factors, so a model trained on the converted data can learn something real. The true
probability is kept for evaluation only; it never reaches the raw exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

FIRST_NAMES_M = ("Jürgen", "Klaus", "Günter", "Hans", "Jörg", "Dieter", "Wolfgang", "Björn", "Manfred", "Uwe")
FIRST_NAMES_F = ("Anna", "Gisela", "Ursula", "Monika", "Renate", "Brigitte", "Hannelore", "Bärbel", "Käthe", "Jutta")
LAST_NAMES = ("Müller", "Schäfer", "Weiß", "Groß", "Köhler", "Krüger", "Schröder", "Hoffmann", "Bäcker", "Jäger",
              "Meier", "Schulz", "Fischer", "Wagner", "Becker", "Böhm", "Lührs", "Sänger", "Vogt", "Zöllner")

CONDUCTION_NONE = "none"
CONDUCTION_LBBB = "LBBB"
CONDUCTION_RBBB = "RBBB"
CONDUCTIONS = (CONDUCTION_NONE, CONDUCTION_LBBB, CONDUCTION_RBBB)
PROSTHESIS_BALLOON = "balloon-expandable"
PROSTHESIS_SELF = "self-expanding"
DIABETES_LEVELS = ("none", "diet", "oral", "insulin")
ACCESS_ROUTES = ("transfemoral", "transapical", "transaxillary")

# Logistic model coefficients (log-odds). Published TAVI pacemaker predictors (RBBB, long QRS,
# first-degree AV block, short membranous septum, landing-zone calcium, self-expanding valves) with
# effect sizes chosen to give 5-25% prevalence across the site intercepts below.
COEF = {
    "rbbb": 1.9,
    "lbbb": 0.6,
    "qrs_per_10ms_over_100": 0.18,
    "pr_per_10ms_over_180": 0.12,
    "ms_per_mm_under_8": 0.28,
    "calcium_per_100mm3": 0.22,
    "self_expanding": 0.9,
    "age_per_10y_over_80": 0.2,
}
LABEL_WINDOW_DAYS = 30


@dataclass(frozen=True)
class EcgFacts:
    """What the resting 12-lead ECG before TAVI shows."""

    acquired: date
    hour: int
    heart_rate: int  # beats per minute
    pr_ms: int
    qrs_ms: int
    qt_ms: int
    qrs_axis_deg: int
    p_axis_deg: int
    t_axis_deg: int
    rhythm: str  # "sinus" | "afib"
    conduction: str  # CONDUCTIONS
    first_degree_av_block: bool

    @property
    def rr_ms(self) -> int:
        return int(round(60000 / self.heart_rate))

    @property
    def qtc_ms(self) -> int:
        """QT corrected with Bazett's formula."""
        return int(round(self.qt_ms / math.sqrt(self.rr_ms / 1000.0)))


@dataclass(frozen=True)
class CtFacts:
    """The pre-TAVI cardiac CT and what its annotations show."""

    acquired: date
    membranous_septum_mm: float
    calcium_volume_mm3: float
    annulus_diameter_mm: float
    has_segmentation: bool
    has_ventricle_segments: bool  # LV/RV segments in addition to calcium + membranous septum
    has_landmarks: bool


@dataclass(frozen=True)
class SyntheticPatient:
    """One synthetic TAVI patient of one site: identity, clinical facts, what was exported, the label."""

    index: int
    site_id: str
    pacs_id: str  # the identifier used by the site's PACS (DICOM objects)
    case_id: str  # the hospital case number used by CSV exports
    family_name: str
    given_name: str
    sex: str  # "M" | "F"
    birth_date: date
    tavi_date: date
    height_cm: float
    weight_kg: float
    nyha: int
    lvef_percent: int
    diabetes: str  # DIABETES_LEVELS
    access_route: str
    prosthesis_type: str
    prosthesis_size_mm: int
    valve_in_valve: bool
    prior_pacemaker: bool  # pacemaker already in situ: label not applicable
    ecg: EcgFacts | None
    ct: CtFacts | None
    has_registry: bool
    has_procedures: bool
    has_free_text: bool
    pacemaker_after_days: int | None  # days from TAVI to permanent pacemaker, if any
    true_probability: float  # P(pacemaker within 30 days | risk factors); evaluation only
    extra_codes: tuple[tuple[str, int], ...] = field(default=())  # distractor OPS codes, day offset

    @property
    def age_at_tavi(self) -> int:
        years = self.tavi_date.year - self.birth_date.year
        if (self.tavi_date.month, self.tavi_date.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years

    @property
    def label(self) -> int | None:
        """1 = pacemaker within 30 days after TAVI, 0 = none, None = not applicable or not known."""
        if self.prior_pacemaker or not self.has_procedures:
            return None
        return int(self.pacemaker_after_days is not None and self.pacemaker_after_days <= LABEL_WINDOW_DAYS)


@dataclass(frozen=True)
class SiteMix:
    """What varies between sites in the generative model (coverage and case mix, not formats)."""

    intercept: float  # site-specific baseline log-odds: sets the label prevalence
    ecg_coverage: float = 0.9
    ct_coverage: float = 0.85
    segmentation_coverage: float = 0.8
    landmark_coverage: float = 0.7
    registry_coverage: float = 0.95
    self_expanding_share: float = 0.45
    first_tavi: date = date(2019, 1, 1)


def _logit_inverse(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def risk_log_odds(
    *, conduction: str | None, qrs_ms: int | None, pr_ms: int | None, ms_mm: float | None,
    calcium_mm3: float | None, prosthesis_type: str, age: int,
) -> float:
    """The label model's linear predictor without the site intercept (documented coefficients)."""
    z = 0.0
    if conduction == CONDUCTION_RBBB:
        z += COEF["rbbb"]
    elif conduction == CONDUCTION_LBBB:
        z += COEF["lbbb"]
    if qrs_ms is not None:
        z += COEF["qrs_per_10ms_over_100"] * max(0.0, (qrs_ms - 100) / 10)
    if pr_ms is not None:
        z += COEF["pr_per_10ms_over_180"] * max(0.0, (pr_ms - 180) / 10)
    if ms_mm is not None:
        z += COEF["ms_per_mm_under_8"] * max(0.0, 8.0 - ms_mm)
    if calcium_mm3 is not None:
        z += COEF["calcium_per_100mm3"] * calcium_mm3 / 100
    if prosthesis_type == PROSTHESIS_SELF:
        z += COEF["self_expanding"]
    z += COEF["age_per_10y_over_80"] * max(0.0, (age - 80) / 10)
    return z


def generate_patient(rng: np.random.Generator, site_id: str, index: int, mix: SiteMix,
                     pacs_prefix: str, case_prefix: str) -> SyntheticPatient:
    """Draw one patient. Every random choice comes from ``rng``, so a seed fixes the whole site."""
    sex = "M" if rng.random() < 0.52 else "F"
    age = int(np.clip(rng.normal(80, 6), 60, 97))
    tavi_date = mix.first_tavi + timedelta(days=int(rng.integers(0, 5 * 365)))
    birth_date = tavi_date - timedelta(days=age * 365 + int(rng.integers(0, 365)))
    height = float(np.round(rng.normal(174 if sex == "M" else 162, 7), 0))
    bmi = float(np.clip(rng.normal(27, 4), 17, 45))
    weight = float(np.round(bmi * (height / 100) ** 2, 1))

    conduction = str(rng.choice(CONDUCTIONS, p=[0.78, 0.10, 0.12]))
    rhythm = "afib" if rng.random() < 0.25 else "sinus"
    base_qrs = {"none": rng.normal(96, 10), "LBBB": rng.normal(146, 12), "RBBB": rng.normal(138, 12)}[conduction]
    qrs = int(np.clip(base_qrs, 70, 200))
    avb1 = rhythm == "sinus" and rng.random() < 0.18
    pr = int(np.clip(rng.normal(230 if avb1 else 165, 20), 110, 380)) if rhythm == "sinus" else 0
    hr = int(np.clip(rng.normal(82 if rhythm == "afib" else 70, 12), 42, 140))
    rr = 60000 / hr
    qt = int(np.clip(400 * math.sqrt(rr / 1000) + rng.normal(0, 15) + (qrs - 96) * 0.5, 300, 560))
    ms_mm = float(np.round(np.clip(rng.normal(7.5, 2.2), 1.5, 15), 1))
    calcium = float(np.round(np.clip(rng.lognormal(4.8, 0.7), 5, 2500), 1))
    self_exp = rng.random() < mix.self_expanding_share
    prosthesis = PROSTHESIS_SELF if self_exp else PROSTHESIS_BALLOON
    sizes = (23, 26, 29, 34) if self_exp else (20, 23, 26, 29)
    annulus = float(np.round(np.clip(rng.normal(24 if sex == "M" else 22, 2), 18, 30), 1))
    size = int(min(sizes, key=lambda s: abs(s - annulus * 1.1)))

    has_ecg = rng.random() < mix.ecg_coverage
    has_ct = rng.random() < mix.ct_coverage
    ecg = None
    if has_ecg:
        ecg = EcgFacts(
            acquired=tavi_date - timedelta(days=int(rng.integers(1, 120))), hour=int(rng.integers(7, 18)),
            heart_rate=hr, pr_ms=pr, qrs_ms=qrs, qt_ms=qt,
            qrs_axis_deg=int(np.clip(rng.normal(-20 if conduction == "LBBB" else 30, 30), -90, 180)),
            p_axis_deg=int(rng.normal(50, 15)) if rhythm == "sinus" else 0,
            t_axis_deg=int(rng.normal(40, 30)), rhythm=rhythm, conduction=conduction,
            first_degree_av_block=avb1,
        )
    ct = None
    if has_ct:
        has_seg = rng.random() < mix.segmentation_coverage
        ct = CtFacts(
            acquired=tavi_date - timedelta(days=int(rng.integers(1, 75))), membranous_septum_mm=ms_mm,
            calcium_volume_mm3=calcium, annulus_diameter_mm=annulus, has_segmentation=has_seg,
            has_ventricle_segments=has_seg and rng.random() < 0.4,
            has_landmarks=rng.random() < mix.landmark_coverage,
        )
    # The label depends on the true risk factors whether or not the site exported their evidence.
    z = mix.intercept + risk_log_odds(conduction=conduction, qrs_ms=qrs, pr_ms=pr if pr else None,
                                      ms_mm=ms_mm, calcium_mm3=calcium, prosthesis_type=prosthesis, age=age)
    p = _logit_inverse(z)
    prior_pm = rng.random() < 0.04
    pm_days: int | None = None
    if not prior_pm and rng.random() < p:
        pm_days = int(rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 7, 10, 14, 21, 28]))
    elif not prior_pm and rng.random() < 0.02:
        pm_days = int(rng.integers(45, 300))  # late pacemaker: outside the label window
    extra: list[tuple[str, int]] = []
    if rng.random() < 0.05:
        extra.append(("8-642", 0))  # temporary pacing: not a permanent pacemaker
    if rng.random() < 0.02:
        extra.append(("5-377.8", int(rng.integers(1, 20))))  # loop recorder: not a pacemaker
    surname = str(rng.choice(LAST_NAMES))
    given = str(rng.choice(FIRST_NAMES_M if sex == "M" else FIRST_NAMES_F))
    return SyntheticPatient(
        index=index, site_id=site_id, pacs_id=f"{pacs_prefix}{index + 1:07d}",
        case_id=f"{case_prefix}{tavi_date.year}-{int(rng.integers(100000, 999999))}",
        family_name=surname, given_name=given, sex=sex, birth_date=birth_date, tavi_date=tavi_date,
        height_cm=height, weight_kg=weight, nyha=int(rng.choice([1, 2, 3, 4], p=[0.05, 0.3, 0.5, 0.15])),
        lvef_percent=int(np.clip(rng.normal(55, 10), 15, 75)),
        diabetes=str(rng.choice(DIABETES_LEVELS, p=[0.68, 0.05, 0.17, 0.10])),
        access_route=str(rng.choice(ACCESS_ROUTES, p=[0.9, 0.05, 0.05])),
        prosthesis_type=prosthesis, prosthesis_size_mm=size, valve_in_valve=rng.random() < 0.06,
        prior_pacemaker=prior_pm, ecg=ecg, ct=ct, has_registry=rng.random() < mix.registry_coverage,
        has_procedures=rng.random() < 0.97, has_free_text=rng.random() < 0.5,
        pacemaker_after_days=pm_days, true_probability=p, extra_codes=tuple(extra),
    )


def generate_site(seed: int, site_id: str, n_patients: int, mix: SiteMix, pacs_prefix: str,
                  case_prefix: str) -> list[SyntheticPatient]:
    """All patients of one site; the same (seed, site_id, n) always gives the same patients."""
    rng = np.random.default_rng([seed, sum(site_id.encode())])
    patients = [generate_patient(rng, site_id, i, mix, pacs_prefix, case_prefix) for i in range(n_patients)]
    # Case numbers must be unique within a site; resolve the rare collision deterministically.
    seen: set[str] = set()
    out = []
    for p in patients:
        case = p.case_id
        while case in seen:
            case = case + "0"
        seen.add(case)
        out.append(p if case == p.case_id else _replace(p, case_id=case))
    return out


def _replace(p: SyntheticPatient, **changes: object) -> SyntheticPatient:
    from dataclasses import replace

    return replace(p, **changes)  # type: ignore[arg-type]
