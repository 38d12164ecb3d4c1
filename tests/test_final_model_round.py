"""The final-model round, delivered to the real ClientApp in this process: stored, tampered, lost, failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cohort.protocol import (
    ANSWER_RECORD,
    FINAL_MODEL_ACTION,
    KEY_MODEL_DIGEST,
    KEY_SPEC_JSON,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
)
from tests.federation_sites import (  # noqa: F401  (coordinator_identity: an autouse fixture)
    LocalGrid,
    build_consortium,
    coordinator_identity,
    copy_consortium,
)


class TamperingGrid(LocalGrid):
    """Replaces the digest in ``tamper``'s reply: the coordinator must notice."""

    tamper: int | None = None

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        out = super().send_and_receive(messages, timeout=timeout)
        for reply in out:
            if reply.metadata.src_node_id == self.tamper:
                reply.content[ANSWER_RECORD][KEY_MODEL_DIGEST] = "0" * 64
        return out


def _train_cfg(overrides: str = "") -> tuple[Any, dict[str, Any]]:
    from flwr.app import ConfigRecord

    from cohort.spec.load import parse_spec
    from fl_server.config import compose_run_config

    cfg = compose_run_config(None, overrides)
    spec_json = parse_spec(cfg["cohort"], catalog=None).to_dict()
    record = ConfigRecord({KEY_SPEC_JSON: json.dumps(spec_json), KEY_SUBSET: "labelled",
                           KEY_TRAINING_JSON: json.dumps({"model": cfg["model"], "training": cfg["training"],
                                                          "seed": cfg["seed"]})})
    return record, cfg


def test_stored_mismatched_lost_and_failed_sites_are_each_recorded(tmp_path_factory: pytest.TempPathFactory,
                                                                   tmp_path: Path) -> None:
    from fl_client.final_model import CARD_FILE, model_digest, site_model_dir
    from fl_server.federation import initial_arrays, negotiate
    from fl_server.final_model_round import MISMATCH, STORED, deliver_final_model

    c = copy_consortium(build_consortium(tmp_path_factory), tmp_path / "sites")
    grid = TamperingGrid(c)
    nodes = {grid.node_of(i): c.site(i).site_id for i in range(c.n_sites)}
    grid.tamper = grid.node_of(1)
    train_cfg, cfg = _train_cfg("training.normalization=site")
    weights = initial_arrays(cfg["model"], 0).to_numpy_ndarrays()

    for i in range(c.n_sites):  # small sites: a minimum cell that lets each take part
        c.set_policy(i, min_cell_size=3)
    negotiate(grid, list(nodes), json.loads(str(train_cfg[KEY_SPEC_JSON])), None, 5)  # sites train on it only
    grid.drop[f"query.{FINAL_MODEL_ACTION}"] = {grid.node_of(2)}
    result = deliver_final_model(grid, nodes, weights, train_cfg, "intercept", 5)
    sites = [c.site(i).site_id for i in range(c.n_sites)]
    assert result[sites[0]] == {"status": STORED, "reason": None}
    assert result[sites[1]]["status"] == MISMATCH and "0" * 64 in result[sites[1]]["reason"]
    assert result[sites[2]] == {"status": "timeout", "reason": "no answer within 5 s"}
    card = json.loads((site_model_dir(c.site(0), model_digest(weights)) / CARD_FILE).read_text())
    assert card["norm_stats"] == "site" and np.isfinite(card["site_intercept"])

    # A site checks what it is asked to do: a calibration it does not know is an error with the reason,
    # and nothing is stored under that model's digest.
    grid.drop, grid.tamper = {}, None
    other = [w + 1.0 for w in weights]
    result = deliver_final_model(grid, nodes, other, train_cfg, "platt", 5)
    assert {d["status"] for d in result.values()} == {"error"}
    assert all("federation.site_calibration='platt'" in d["reason"] for d in result.values())
    assert not any(site_model_dir(c.site(i), model_digest(other)).exists() for i in range(c.n_sites))
