"""Test-set statistics for comparing training approaches: bootstrap intervals, Brier score, reliability.

Flower-free and torch-free; ``scripts/results.py`` uses them on held-out test predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fl_client.train import roc_auc

__all__ = ["Interval", "Predictions", "bootstrap_mean", "brier_score", "reliability_curve"]


@dataclass(frozen=True)
class Predictions:
    """Labels (0/1) and predicted probabilities of one model on one test split."""

    labels: np.ndarray
    probs: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.shape != self.probs.shape:
            raise ValueError(f"labels {self.labels.shape} and probabilities {self.probs.shape} differ in shape")

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        return cls(np.concatenate([p.labels for p in parts]), np.concatenate([p.probs for p in parts]))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile interval (None where undefined)."""

    estimate: float | None
    low: float | None
    high: float | None

    def fmt(self) -> str:
        if self.estimate is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.estimate:.3f}"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def brier_score(p: Predictions) -> float | None:
    """Mean squared difference between probability and outcome (lower is better); None when empty."""
    if p.labels.size == 0:
        return None
    return float(np.mean((p.probs - p.labels) ** 2))


def reliability_curve(p: Predictions, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin: mean predicted probability, observed rate, count (empty bins dropped)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p.probs, edges[1:-1]), 0, bins - 1)
    mean_p, rate, count = [], [], []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            mean_p.append(float(p.probs[sel].mean()))
            rate.append(float(p.labels[sel].mean()))
            count.append(int(sel.sum()))
    return np.array(mean_p), np.array(rate), np.array(count)


def _auroc(p: Predictions) -> float | None:
    return roc_auc(p.labels, p.probs)


def bootstrap_mean(groups: Sequence[Sequence[Predictions]], statistic: Callable[[Predictions], float | None] = _auroc,
                   n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``statistic`` over repeated runs, with a bootstrap interval that resamples test patients.

    ``groups``: one entry per test set (e.g. per data seed), each holding the predictions of several
    training runs on that same test set, in the same patient order. Each replicate draws the patients of
    every test set with replacement (the same draw for every run on that set), computes the statistic
    per run and averages; undefined values (one class drawn) are skipped.
    """
    point_vals = [statistic(p) for g in groups for p in g]
    defined = [v for v in point_vals if v is not None]
    if not defined:
        return Interval(None, None, None)
    estimate = float(np.mean(defined))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        vals = []
        for g in groups:
            n = g[0].labels.size
            draw = rng.integers(0, n, size=n)
            vals += [statistic(Predictions(p.labels[draw], p.probs[draw])) for p in g]
        vals_d = [v for v in vals if v is not None]
        if vals_d:
            reps.append(float(np.mean(vals_d)))
    if len(reps) < n_boot // 2:
        return Interval(estimate, None, None)
    alpha = (1.0 - level) / 2.0
    return Interval(estimate, float(np.quantile(reps, alpha)), float(np.quantile(reps, 1.0 - alpha)))
