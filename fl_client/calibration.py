"""A site's own intercept for the shared model (calibration-in-the-large on the site's training split).

A federated model averages sites whose pacemaker rates differ (5-33% in the synthetic consortium): its
probabilities drift towards the consortium's mean rate, so it under-calls a high-rate site and
over-calls a low-rate one. Each site can correct that locally, without sending anything: shift the
model's logit by one number ``b`` so that its mean predicted probability over the site's training split
equals the site's observed rate there (add-one-half smoothed, so a split with no positive still gives a
finite shift). Within a site the ranking, hence the site's AUROC, is unchanged; across sites and for
the probabilities themselves (Brier score, thresholds) it matters.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7
_SEARCH = (-30.0, 30.0)  # logit shifts; sigmoid saturates far inside this range


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def smoothed_rate(positives: int, n: int) -> float:
    """The observed positive rate with half a case added to each class ((pos + 0.5) / (n + 1))."""
    if n <= 0 or not 0 <= positives <= n:
        raise ValueError(f"a site intercept needs 0 <= positives <= n and n > 0 (got {positives} of {n})")
    return (positives + 0.5) / (n + 1.0)


def fit_site_intercept(probs: np.ndarray, labels: np.ndarray) -> float:
    """The logit shift ``b`` with mean(sigmoid(logit(probs) + b)) == the smoothed rate of ``labels``.

    The mean is strictly increasing in ``b``, so bisection finds the unique root.
    """
    labels = np.asarray(labels)
    z = logit(probs)
    if z.size != labels.size:
        raise ValueError(f"{z.size} probabilities but {labels.size} labels")
    target = smoothed_rate(int(np.count_nonzero(labels)), int(labels.size))
    lo, hi = _SEARCH
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(np.mean(1.0 / (1.0 + np.exp(-(z + mid))))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def apply_site_intercept(probs: np.ndarray, intercept: float) -> np.ndarray:
    """Probabilities of the shifted model."""
    return 1.0 / (1.0 + np.exp(-(logit(probs) + intercept)))
