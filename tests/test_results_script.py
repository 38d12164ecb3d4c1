"""scripts/results.py end to end on its smoke preset: every approach, the site intercept, the report.

Two tiny sites, one data seed, one training seed, 2 rounds: synthesis, ingest, the held-out test split,
the strategy selection on validation, FedAvg and the selected strategy through the real simulation
engine, local-only and pooled training, and the rendered report (into the work folder, not docs/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_client.train import roc_auc

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_preset_reports_every_approach_with_and_without_the_site_intercept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))  # the script sets it; restored after the test
    monkeypatch.setattr(sys, "path", list(sys.path))
    threads = torch.get_num_threads()  # the script uses every core; later tests get back what they had
    sys.path.insert(0, str(ROOT / "scripts"))
    import results

    from tests.federation_sites import flwr_log_level

    try:
        with flwr_log_level(30):
            results.main(["--preset", "smoke", "--work", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "smoke-json" / "smoke.json").read_text())
    data = doc["data"]["0/0"]
    preds = data["runs"]["0"]["predictions"]
    assert set(preds) == set(results.APPROACHES)
    for site, info in data["sites"].items():
        labels = data["truth"][site][0]
        assert info["test"] == len(labels) and info["test_pos"] == sum(labels)
        for key in results.APPROACHES:
            assert preds[key][site][0] == labels  # every approach scored the same held-out patients
        for key in ("local", "fedavg", "other", "pooled"):
            base, shifted = np.asarray(preds[key][site][1]), np.asarray(preds[f"{key}+b"][site][1])
            assert not np.allclose(base, shifted)  # the site's own intercept moved the probabilities ...
            assert roc_auc(np.asarray(labels), shifted) == pytest.approx(roc_auc(np.asarray(labels), base))  # ... not the ranking
        rate = preds["prevalence"][site][1]
        assert len(set(rate)) == 1 and 0.0 < rate[0] < 1.0  # one score for the site: its training rate
    assert doc["features"][-2:] == ["calcium_volume", "membranous_septum_length"]
    text = (tmp_path / "smoke.md").read_text()
    for row in ("| local-only |", "| FedAvg |", "| pooled |", "| FedAvg + site intercept |",
                "| pooled + site intercept |", "| local-only + site intercept |", "| linear, FedAvg |",
                "| logistic regression (scikit-learn), pooled |", "| prevalence only (site's training rate) |",
                "| ceiling (true probability) |", "| FedAvg - local-only | mean of sites |"):
        assert row in text
    assert doc["other_strategy"]["name"] in results.CANDIDATES
    assert set(doc["other_strategy"]["validation_auroc"]) == set(results.CANDIDATES)
