"""Feature normalisation statistics: per site as moments, combined across the consortium.

Before the first round, every agreed site sends the count, sum and sum of squares of each *numeric*
tabular feature and of each ECG lead over its own training split (:func:`site_moments`); the
coordinator adds them up (:func:`combine`) and sends back means and standard deviations
(:func:`stats_from_moments`), so all sites standardize with the same, consortium-wide numbers instead
of their own. Indicator features (unit ``"1"``) are never summed: their sums would be patient counts.

A site withholds every feature that fewer than its minimum cell of patients contribute to
(:func:`release_moments`); the coordinator then uses the other sites' moments for that feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cohort.errors import ConfigError
from fl_client.transforms import ECG_KEY, ECG_LEADS, ECG_PRESENT_KEY, EcgStats, TabularStats

__all__ = [
    "INDICATOR_UNIT", "Moments", "NormStats", "SiteMoments", "combine", "norm_stats", "numeric_mask",
    "release_moments", "site_moments", "stats_from_moments",
]

INDICATOR_UNIT = "1"  # UCUM "1": a 0/1 indicator, not a measurement


def numeric_mask(units: Sequence[str]) -> tuple[bool, ...]:
    """True for measured features (e.g. ``ms``, ``kg``), False for indicators (unit ``"1"``)."""
    return tuple(u != INDICATOR_UNIT for u in units)


@dataclass(frozen=True)
class Moments:
    """Per feature: number of values, their sum and their sum of squares; None where withheld."""

    counts: tuple[int | None, ...]
    sums: tuple[float | None, ...]
    sumsq: tuple[float | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sums": list(self.sums), "sumsq": list(self.sumsq)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Moments:
        return cls(tuple(doc["counts"]), tuple(doc["sums"]), tuple(doc["sumsq"]))


@dataclass(frozen=True)
class SiteMoments:
    """What one site sends: tabular and ECG moments and the patients behind each feature."""

    tabular: Moments
    tabular_patients: tuple[int, ...]
    ecg: Moments
    ecg_patients: int

    def to_json(self) -> str:
        return json.dumps({"tabular": self.tabular.to_json(), "tabular_patients": list(self.tabular_patients),
                           "ecg": self.ecg.to_json(), "ecg_patients": self.ecg_patients}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SiteMoments:
        doc = json.loads(text)
        return cls(Moments.from_json(doc["tabular"]), tuple(doc["tabular_patients"]),
                   Moments.from_json(doc["ecg"]), int(doc["ecg_patients"]))


@dataclass(frozen=True)
class NormStats:
    """The statistics a site standardizes with: tabular means/stds and (optionally) per-lead ECG."""

    tabular: TabularStats
    ecg: EcgStats | None = None

    def to_json(self) -> str:
        ecg = None if self.ecg is None else {"means": list(self.ecg.means), "stds": list(self.ecg.stds)}
        return json.dumps({"tabular": {"means": list(self.tabular.means), "stds": list(self.tabular.stds)},
                           "ecg": ecg}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        doc = json.loads(text)
        ecg = doc.get("ecg")
        return cls(TabularStats(tuple(doc["tabular"]["means"]), tuple(doc["tabular"]["stds"])),
                   None if ecg is None else EcgStats(tuple(ecg["means"]), tuple(ecg["stds"])))


def _moments(table: np.ndarray) -> Moments:
    present = ~np.isnan(table)
    values = np.where(present, table, 0.0)
    return Moments(tuple(int(c) for c in present.sum(axis=0)), tuple(float(v) for v in values.sum(axis=0)),
                   tuple(float(v) for v in (values * values).sum(axis=0)))


def site_moments(rows: Sequence[Sequence[float | None]], units: Sequence[str],
                 samples: Iterable[dict[str, Any]]) -> SiteMoments:
    """Moments of one site's training split.

    Args:
        rows: The tabular values of the training patients (None = missing).
        units: Unit of each tabular feature; indicator features get count 0 (never summed).
        samples: The training patients' preprocessed samples (``cached_transforms`` output): ECGs in mV.
    """
    numeric = np.array(numeric_mask(units))
    table = np.full((len(rows), len(units)), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        table[i] = [np.nan if v is None else float(v) for v in row]
    table[:, ~numeric] = np.nan
    tab = _moments(table)
    counts = np.zeros(ECG_LEADS, dtype=np.int64)
    sums = np.zeros(ECG_LEADS, dtype=np.float64)
    sumsq = np.zeros(ECG_LEADS, dtype=np.float64)
    patients = 0
    for sample in samples:
        if float(sample[ECG_PRESENT_KEY]) <= 0:
            continue
        ecg = np.asarray(sample[ECG_KEY], dtype=np.float64)
        counts += ecg.shape[-1]
        sums += ecg.sum(axis=-1)
        sumsq += (ecg * ecg).sum(axis=-1)
        patients += 1
    ecg_m = Moments(tuple(int(c) for c in counts), tuple(float(v) for v in sums), tuple(float(v) for v in sumsq))
    return SiteMoments(tab, tuple(int(c) for c in tab.counts if c is not None), ecg_m, patients)


def release_moments(m: SiteMoments, min_cell: int) -> tuple[SiteMoments, list[int], bool]:
    """Withhold every feature that fewer than ``min_cell`` patients contribute to.

    Returns:
        The releasable moments (withheld entries None), the indices of the withheld tabular features,
        and whether the ECG moments were withheld.
    """
    if min_cell < 1:
        raise ConfigError(f"min_cell={min_cell} must be >= 1")
    withheld = [j for j, n in enumerate(m.tabular_patients) if 0 < n < min_cell]
    def keep(col: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(None if j in withheld else v for j, v in enumerate(col))

    tab = Moments(keep(m.tabular.counts), keep(m.tabular.sums), keep(m.tabular.sumsq))
    ecg_withheld = 0 < m.ecg_patients < min_cell
    none = (None,) * ECG_LEADS
    ecg = Moments(none, none, none) if ecg_withheld else m.ecg
    patients = tuple(0 if j in withheld else n for j, n in enumerate(m.tabular_patients))
    return SiteMoments(tab, patients, ecg, 0 if ecg_withheld else m.ecg_patients), withheld, ecg_withheld


def combine(parts: Sequence[Moments]) -> Moments:
    """Add moments feature by feature, skipping withheld (None) entries."""
    if not parts:
        raise ConfigError("no moments to combine")
    n = len(parts[0].counts)
    if any(len(p.counts) != n for p in parts):
        raise ConfigError("sites sent moments of different lengths; they must use the same feature list")

    def total(col: str, j: int) -> float:
        return sum(float(getattr(p, col)[j]) for p in parts if p.counts[j] is not None)

    return Moments(tuple(int(total("counts", j)) for j in range(n)), tuple(total("sums", j) for j in range(n)),
                   tuple(total("sumsq", j) for j in range(n)))


def stats_from_moments(m: Moments) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Means and (population) standard deviations; a feature with no values gets 0 and 1, a constant 1."""
    means, stds = [], []
    for n, s, q in zip(m.counts, m.sums, m.sumsq, strict=True):
        if not n:
            means.append(0.0)
            stds.append(1.0)
            continue
        assert s is not None and q is not None
        mean = float(s) / n
        var = max(float(q) / n - mean * mean, 0.0)
        std = float(np.sqrt(var))
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def norm_stats(tabular: Moments, ecg: Moments | None) -> NormStats:
    """The NormStats for combined moments (indicator features, with count 0, keep mean 0 and std 1)."""
    means, stds = stats_from_moments(tabular)
    ecg_stats = None
    if ecg is not None:
        e_means, e_stds = stats_from_moments(ecg)
        ecg_stats = EcgStats(e_means, e_stds)
    return NormStats(TabularStats(means, stds), ecg_stats)
