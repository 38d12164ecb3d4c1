"""The round after training: every training site receives the kept model and stores it locally.

Each site stores the weights with what it needs to score its own patients and, with
``federation.site_calibration: intercept``, fits its own intercept on its training split
(:mod:`fl_client.final_model`). It answers with the digest of what it stored; the coordinator records
per site whether that digest equals its own (the intercept stays at the site).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from cohort.protocol import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    FINAL_MODEL_ACTION,
    KEY_MODEL_DIGEST,
    KEY_NORM_STATS_JSON,
    KEY_REQUEST_ID,
    KEY_SITE_CALIBRATION,
    KEY_SPEC_JSON,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
)
from fl_client.final_model import model_digest
from fl_server.site_queries import ask_sites

STORED, MISMATCH = "stored", "digest-mismatch"


def deliver_final_model(grid: Grid, node_sites: dict[int, str], weights: list[np.ndarray], train_cfg: ConfigRecord,
                        site_calibration: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Send ``weights`` to every node; site -> {status: stored | digest-mismatch | timeout | error, reason}."""
    digest = model_digest(weights)
    cfg = ConfigRecord({key: str(train_cfg[key]) for key in (KEY_SPEC_JSON, KEY_SUBSET, KEY_TRAINING_JSON)})
    if train_cfg.get(KEY_NORM_STATS_JSON):
        cfg[KEY_NORM_STATS_JSON] = str(train_cfg[KEY_NORM_STATS_JSON])
    cfg[KEY_SITE_CALIBRATION] = site_calibration
    cfg[KEY_REQUEST_ID] = uuid.uuid4().hex
    content = RecordDict({CONFIG_RECORD: cfg, ARRAYS_RECORD: ArrayRecord(numpy_ndarrays=weights)})
    sites, answered = ask_sites(grid, node_sites, content, FINAL_MODEL_ACTION, timeout)
    for site, rec in answered.items():
        stored = str(rec.get(KEY_MODEL_DIGEST, ""))
        sites[site] = ({"status": STORED, "reason": None} if stored == digest
                       else {"status": MISMATCH, "reason": f"the site stored {stored}, sent {digest}"})
    return sites
