"""A site's own intercept for the shared model (fl_client.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from fl_client.calibration import apply_site_intercept, fit_site_intercept, smoothed_rate
from fl_client.train import roc_auc


def _site(rate: float, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rate).astype(int)
    probs = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 1.0, n) + 1.5 * labels - 1.0)))  # informative, mis-centred
    return probs, labels


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_the_shifted_mean_equals_the_sites_smoothed_rate_and_the_ranking_is_kept(rate: float) -> None:
    probs, labels = _site(rate)
    b = fit_site_intercept(probs, labels)
    shifted = apply_site_intercept(probs, b)
    assert shifted.mean() == pytest.approx(smoothed_rate(int(labels.sum()), labels.size), abs=1e-9)
    assert np.array_equal(np.argsort(shifted, kind="stable"), np.argsort(probs, kind="stable"))
    assert roc_auc(labels, shifted) == pytest.approx(roc_auc(labels, probs))


def test_a_model_already_at_the_sites_rate_is_not_shifted() -> None:
    probs = np.full(99, 0.25)
    labels = np.array([1] * 25 + [0] * 74)  # (25 + 0.5) / (99 + 1) = 0.255
    assert fit_site_intercept(probs, labels) == pytest.approx(np.log(0.255 / 0.745) - np.log(0.25 / 0.75), abs=1e-9)


def test_sites_with_different_rates_become_comparable_across_sites() -> None:
    """One shared, mis-centred score for two sites (5% and 40%): the site intercepts restore the order."""
    low, high = _site(0.05, seed=1), _site(0.40, seed=2)
    high_probs = 1.0 / (1.0 + np.exp(-(np.log(high[0] / (1 - high[0])) - 2.0)))  # the shared model under-calls it
    labels = np.concatenate([low[1], high[1]])
    before = roc_auc(labels, np.concatenate([low[0], high_probs]))
    after = roc_auc(labels, np.concatenate([apply_site_intercept(low[0], fit_site_intercept(*low)),
                                            apply_site_intercept(high_probs, fit_site_intercept(high_probs, high[1]))]))
    assert before is not None and after is not None and after > before + 0.05


def test_a_split_without_positives_gives_a_finite_shift_and_bad_input_is_refused() -> None:
    assert np.isfinite(fit_site_intercept(np.full(10, 0.3), np.zeros(10)))
    with pytest.raises(ValueError, match="3 probabilities but 2 labels"):
        fit_site_intercept(np.full(3, 0.3), np.zeros(2))
    with pytest.raises(ValueError, match="n > 0"):
        fit_site_intercept(np.array([]), np.array([]))
