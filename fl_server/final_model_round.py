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
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from cohort.protocol import (
    ANSWER_RECORD,
    ARRAYS_RECORD,
    CONFIG_RECORD,
    FINAL_MODEL_ACTION,
    KEY_MODEL_DIGEST,
    KEY_NORM_STATS_JSON,
    KEY_REASON,
    KEY_REQUEST_ID,
    KEY_SITE_CALIBRATION,
    KEY_SITE_ID,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    STATUS_ANSWERED,
)
from fl_client.final_model import model_digest

STORED, MISMATCH = "stored", "digest-mismatch"


def deliver_final_model(grid: Grid, node_sites: dict[int, str], weights: list[np.ndarray], train_cfg: ConfigRecord,
                        site_calibration: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Send ``weights`` to every node; site -> {status: stored | digest-mismatch | error | timeout, reason}."""
    digest = model_digest(weights)
    cfg = ConfigRecord({key: str(train_cfg[key]) for key in (KEY_SPEC_JSON, KEY_SUBSET, KEY_TRAINING_JSON)})
    if train_cfg.get(KEY_NORM_STATS_JSON):
        cfg[KEY_NORM_STATS_JSON] = str(train_cfg[KEY_NORM_STATS_JSON])
    cfg[KEY_SITE_CALIBRATION] = site_calibration
    cfg[KEY_REQUEST_ID] = uuid.uuid4().hex
    messages = [Message(content=RecordDict({CONFIG_RECORD: cfg, ARRAYS_RECORD: ArrayRecord(numpy_ndarrays=weights)}),
                        dst_node_id=n, message_type=f"query.{FINAL_MODEL_ACTION}") for n in sorted(node_sites)]
    sites: dict[str, dict[str, Any]] = {s: {"status": "timeout", "reason": f"no answer within {timeout:.0f} s"}
                                        for s in node_sites.values()}
    for msg in grid.send_and_receive(messages, timeout=timeout):
        site = node_sites.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
        if msg.has_error():
            sites[site] = {"status": "error", "reason": msg.error.reason}
            continue
        rec = msg.content[ANSWER_RECORD]
        site = str(rec[KEY_SITE_ID])
        if str(rec[KEY_STATUS]) != STATUS_ANSWERED:
            sites[site] = {"status": "error", "reason": str(rec[KEY_REASON]) if rec.get(KEY_REASON) else None}
        elif str(rec.get(KEY_MODEL_DIGEST, "")) != digest:
            sites[site] = {"status": MISMATCH, "reason": f"the site stored {str(rec.get(KEY_MODEL_DIGEST))}, sent {digest}"}
        else:
            sites[site] = {"status": STORED, "reason": None}
    return sites
