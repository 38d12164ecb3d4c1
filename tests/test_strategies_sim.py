"""Every selectable strategy runs two rounds on Flower's simulation engine, after the moments round.

One simulation runs the project's ServerApp four times (fedavg, fedprox, fedadam, fedyogi) against the
project's ClientApp on three tiny synthetic sites, with consortium-wide normalisation statistics; after
each run every site stores the kept model (with its own intercept, except in the fedyogi run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cohort.protocol import (
    ANSWER_RECORD,
    FINAL_MODEL_ACTION,
    KEY_MODEL_DIGEST,
    KEY_SITE_ID,
    KEY_STATUS,
    MOMENTS_ACTION,
)
from fl_server.report import REPORT_JSON
from tests.federation_sites import (
    build_consortium,
    copy_consortium,
    identities,
    quiet_flower,
    run_recorded_simulation,
)

pytestmark = pytest.mark.slow

SITE_MIN_CELL = 5
BASE = ("federation.rounds=2 training.epochs=1 training.batch_size=2 training.normalization=consortium "
        f"agreement.min_cases={SITE_MIN_CELL}")
RUNS = {
    "fedavg": "federation.strategy=fedavg",
    "fedprox": "federation.strategy=fedprox federation.proximal_mu=1.0",
    "fedadam": "federation.strategy=fedadam federation.server_lr=0.01",
    "fedyogi": "federation.strategy=fedyogi federation.server_lr=0.01 federation.site_calibration=none",
}


def _weights(out: Path) -> list[np.ndarray]:
    with np.load(out / "final_model.npz") as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fl_server.federation import RunSettings

    root = tmp_path_factory.mktemp("strategies")
    c = copy_consortium(build_consortium(tmp_path_factory), root / "sites")
    for i in range(c.n_sites):
        c.set_policy(i, min_cell_size=SITE_MIN_CELL)
    quiet_flower(root / "flwr-home")
    settings = [RunSettings(overrides=f"{BASE} {extra}", out_dir=str(root / name), expected_sites=c.n_sites,
                            wait_s=60) for name, extra in RUNS.items()]
    payloads = run_recorded_simulation(c, settings, root / "flower.log")
    reports = {name: json.loads((root / name / REPORT_JSON).read_text()) for name in RUNS}
    return c, reports, {name: _weights(root / name) for name in RUNS}, payloads


@pytest.mark.parametrize("name", list(RUNS))
def test_each_strategy_trains_two_rounds_on_every_agreed_site(runs, name: str) -> None:  # type: ignore[no-untyped-def]
    c, reports, weights, _ = runs
    report = reports[name]
    assert report["training"]["strategy"] == name
    assert report["training_errors"] == []
    agreed = set(report["agreement"]["participating_sites"])
    assert len(agreed) == c.n_sites
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert set(r["train"]) == agreed and set(r["evaluate"]) == agreed
    assert report["training"]["best_round"] in (1, 2)
    assert all(np.isfinite(w).all() for w in weights[name])


def test_strategies_differ_from_fedavg_from_the_same_start(runs) -> None:  # type: ignore[no-untyped-def]
    """Same seed, data and initial weights: the proximal term and the server optimisers change the result.

    Batches of 2 give several local steps per round: on the first step the proximal term is zero.
    """
    _, _, weights, _ = runs
    for name in ("fedprox", "fedadam", "fedyogi"):
        diff = max(float(np.abs(a - b).max()) for a, b in zip(weights[name], weights["fedavg"], strict=True))
        assert diff > 1e-6, f"{name} ended with FedAvg's weights"


def test_moments_round_feeds_consortium_statistics_without_patient_data(runs) -> None:  # type: ignore[no-untyped-def]
    c, reports, _, payloads = runs
    sources = reports["fedavg"]["training"]["normalization_sources"]
    assert {s["status"] for s in sources["sites"].values()} == {"answered"}
    assert sources["ecg_sites"] == c.n_sites
    moment_replies = [p for p in payloads if p["type"] == f"query.{MOMENTS_ACTION}"]
    assert len(moment_replies) == c.n_sites * len(RUNS)
    text = json.dumps(moment_replies)
    for ident in identities(c):
        for value in (ident.pseudonym, ident.pacs_id, ident.case_id, ident.family_name):
            assert value not in text




def test_every_site_stores_the_kept_model_with_its_own_intercept_and_only_a_digest_comes_back(runs) -> None:  # type: ignore[no-untyped-def]
    from fl_client.calibration import fit_site_intercept
    from fl_client.final_model import CARD_FILE, MODEL_FILE, model_digest, site_model_dir
    from fl_client.local import TrainingSettings, training_split_predictions
    from fl_client.normalization import NormStats

    c, reports, weights, payloads = runs
    for name, calibration in (("fedavg", "intercept"), ("fedyogi", "none")):
        report = reports[name]
        digest = model_digest(weights[name])
        agreed = report["agreement"]["participating_sites"]
        assert report["training"]["site_calibration"] == calibration
        assert report["training"]["final_model_sites"] == {s: {"status": "stored", "reason": None} for s in agreed}
        cfg = report["config"]
        settings = TrainingSettings(model=cfg["model"], training=cfg["training"], seed=int(cfg["seed"]))
        stats = NormStats.from_json(json.dumps(report["training"]["norm_stats"]))
        for i in range(c.n_sites):
            site = c.site(i)
            folder = site_model_dir(site, digest)
            card = json.loads((folder / CARD_FILE).read_text())
            with np.load(folder / MODEL_FILE) as npz:
                assert model_digest([npz[f"arr_{k}"] for k in range(len(npz.files))]) == digest == card["digest"]
            assert card["norm_stats"] == report["training"]["norm_stats"]
            if calibration == "none":
                assert card["site_intercept"] is None
                continue
            probs, labels = training_split_predictions(site, report["spec"], report["agreement"]["rule"]["subset"],
                                                       settings, weights[name], stats)
            assert card["site_intercept"] == pytest.approx(fit_site_intercept(probs, labels), abs=1e-9)
            assert card["intercept_fitted_on"] == {"split": "training", "patients": int(labels.size)}
            assert repr(card["site_intercept"]) not in json.dumps(report)  # the intercept stays at the site
    replies = [p for p in payloads if p["type"] == f"query.{FINAL_MODEL_ACTION}"]
    assert len(replies) == c.n_sites * len(RUNS)
    for p in replies:
        assert set(p["records"][ANSWER_RECORD]) == {KEY_SITE_ID, KEY_STATUS, KEY_MODEL_DIGEST}  # type: ignore[index]
