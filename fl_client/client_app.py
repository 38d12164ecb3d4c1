"""The Flower ClientApp: cohort queries, secure totals, local training and evaluation at one site.

Every handler is registered through the release gate (``fl_client.gate``, ``cohort.release.gate``):
what leaves the site is released counts (after the site's disclosure policy and differencing ledger),
masked secure-sum vectors, model weights, metrics whose counts meet the minimum cell with a
``num-examples`` derived from counts already released, and the digest of the final model it stored.
Never identifiers, rows or raw values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp

from cohort.errors import DisclosureError
from cohort.protocol import (
    ANSWER_RECORD,
    ARRAYS_RECORD,
    FINAL_MODEL_ACTION,
    KEY_MODEL_DIGEST,
    KEY_MOMENTS_JSON,
    KEY_NORM_STATS_JSON,
    KEY_PROXIMAL_MU,
    KEY_REASON,
    KEY_RELEASED_JSON,
    KEY_REQUEST_ID,
    KEY_REQUESTED_MIN_CELL,
    KEY_SERVER_ROUND,
    KEY_SITE_CALIBRATION,
    KEY_SITE_ID,
    KEY_STATUS,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    METRIC_AUROC,
    METRIC_BALANCED_ACCURACY,
    METRIC_LOSS,
    METRIC_SENSITIVITY,
    METRIC_SPECIFICITY,
    MOMENTS_ACTION,
    QUERY_ACTION,
    SECAGG_ACTIONS,
    SECAGG_RECORD,
)
from fl_client.gate import (
    NEGOTIATION,
    RUN_BOUND,
    SECURE_TOTAL,
    GatedClientApp,
    HandlerResult,
    Request,
    SplitMetrics,
)


def build_client_app(consortium: Path | None = None) -> ClientApp:
    """The site's Flower ClientApp; ``consortium`` maps simulation partitions to synthetic sites (None:
    node config)."""
    return build_gated_app(consortium).app


def build_gated_app(consortium: Path | None = None) -> GatedClientApp:
    """The ClientApp with its handlers, each registered through the release gate."""
    gated = GatedClientApp(consortium)

    @gated.register(f"query.{QUERY_ACTION}", NEGOTIATION)
    def query(req: Request) -> HandlerResult:
        cfg = req.config
        request: dict[str, Any] = {"spec": req.spec_json, "requester": str(cfg.get(KEY_REQUEST_ID, ""))}
        if KEY_REQUESTED_MIN_CELL in cfg:
            request["requested_min_cell"] = int(cfg[KEY_REQUESTED_MIN_CELL])
        answer = req.gate.answer_counts(request)
        return _answer(answer.site_id, answer.status, answer.reason, KEY_RELEASED_JSON, answer.released_json)

    def secure_stage(action: str):  # type: ignore[no-untyped-def]
        """A handler for one stage of the secure sum of counts (state kept in the node's context)."""
        def handler(req: Request) -> HandlerResult:
            from fl_client.secure_counts import SECAGG_STATE, handle

            state = dict(req.context.state.config_records.get(SECAGG_STATE, ConfigRecord()))
            reply = handle(action, req.site, dict(req.msg.content[SECAGG_RECORD]), state, req.context.node_id,
                           req.gate.account)
            req.context.state.config_records[SECAGG_STATE] = ConfigRecord(state)
            return HandlerResult({SECAGG_RECORD: ConfigRecord(reply)})
        return handler

    for action in SECAGG_ACTIONS:
        gated.register(f"query.{action}", SECURE_TOTAL)(secure_stage(action))

    @gated.register(f"query.{MOMENTS_ACTION}", RUN_BOUND)
    def moments(req: Request) -> HandlerResult:
        from fl_client.moments import answer_moments

        assert req.admission is not None
        if req.admission.dp:
            raise DisclosureError("moments refused: this site answers with differential privacy and its moments "
                                  "(exact counts and sums) are not; the consortium normalises without them")
        cfg = req.config
        answer = answer_moments(req.site, req.spec_json, str(cfg[KEY_SUBSET]), str(cfg[KEY_TRAINING_JSON]),
                                str(cfg.get(KEY_REQUEST_ID, "")), req.admission.min_cell)
        return _answer(answer.site_id, answer.status, answer.reason, KEY_MOMENTS_JSON, answer.moments_json)

    @gated.register(f"query.{FINAL_MODEL_ACTION}", RUN_BOUND)
    def final_model(req: Request) -> HandlerResult:
        from fl_client.final_model import store_final_model

        cfg = req.config
        answer = store_final_model(req.site, req.spec_json, str(cfg[KEY_SUBSET]), str(cfg[KEY_TRAINING_JSON]),
                                   req.msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays(),
                                   str(cfg[KEY_NORM_STATS_JSON]) if cfg.get(KEY_NORM_STATS_JSON) else None,
                                   str(cfg[KEY_SITE_CALIBRATION]), str(cfg.get(KEY_REQUEST_ID, "")))
        return _answer(answer.site_id, answer.status, answer.reason, KEY_MODEL_DIGEST, answer.digest)

    @gated.register("train", RUN_BOUND)
    def train(req: Request) -> HandlerResult:
        from fl_client.local import TrainingSettings, fit

        cfg = req.config
        settings = TrainingSettings.from_json(str(cfg[KEY_TRAINING_JSON]))
        weights = req.msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
        new_weights, stats = fit(req.site, req.spec_json, str(cfg[KEY_SUBSET]), settings, weights,
                                 stats=_norm_stats(cfg), proximal_mu=float(cfg.get(KEY_PROXIMAL_MU, 0.0)),
                                 server_round=int(cfg.get(KEY_SERVER_ROUND, 1)))
        metrics = SplitMetrics({METRIC_LOSS: float(stats.loss)}, samples=stats.num_samples, positives=0,
                               negatives=0, fraction=1.0 - settings.data_config().val_fraction)
        return HandlerResult({ARRAYS_RECORD: ArrayRecord(numpy_ndarrays=new_weights)}, metrics)

    @gated.register("evaluate", RUN_BOUND)
    def evaluate(req: Request) -> HandlerResult:
        from fl_client.local import TrainingSettings, validate

        cfg = req.config
        settings = TrainingSettings.from_json(str(cfg[KEY_TRAINING_JSON]))
        stats = validate(req.site, req.spec_json, str(cfg[KEY_SUBSET]), settings,
                         req.msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays(), stats=_norm_stats(cfg))
        positives = int(np.sum(np.asarray(stats.labels) == 1))
        values = {METRIC_LOSS: stats.loss, METRIC_AUROC: stats.auroc, METRIC_BALANCED_ACCURACY: stats.balanced_accuracy,
                  METRIC_SENSITIVITY: stats.sensitivity, METRIC_SPECIFICITY: stats.specificity}
        return HandlerResult(metrics=SplitMetrics(values, samples=stats.num_samples, positives=positives,
                                                  negatives=stats.num_samples - positives,
                                                  fraction=settings.data_config().val_fraction))

    return gated


def _answer(site_id: str, status: str, reason: str | None, payload_key: str, payload: str | None) -> HandlerResult:
    """A query reply: ConfigRecord ``answer`` with site id, status, the payload when answered, the reason."""
    rec = ConfigRecord({KEY_SITE_ID: site_id, KEY_STATUS: status})
    if payload is not None:
        rec[payload_key] = payload
    if reason is not None:
        rec[KEY_REASON] = reason
    return HandlerResult({ANSWER_RECORD: rec})


def _norm_stats(cfg: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The consortium's normalisation statistics the server sent, or None (site statistics)."""
    from fl_client.normalization import NormStats

    text = cfg.get(KEY_NORM_STATS_JSON)
    return NormStats.from_json(str(text)) if text else None


app = build_client_app()
