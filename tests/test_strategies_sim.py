"""Every selectable strategy runs two rounds on Flower's simulation engine, after the moments round.

One simulation runs the project's ServerApp four times (fedavg, fedprox, fedadam, fedyogi) against the
project's ClientApp on three tiny synthetic sites, with consortium-wide normalisation statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cohort.protocol import MOMENTS_ACTION
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
    "fedyogi": "federation.strategy=fedyogi federation.server_lr=0.01",
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


