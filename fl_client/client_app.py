"""The Flower ClientApp: cohort queries, local training and evaluation at one site.

What leaves the site: released counts (after the site's disclosure policy), model weights, metrics
with the number of samples, and the digest of the final model it stored. Never identifiers, rows or
raw values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cohort.protocol import (
    ANSWER_RECORD,
    ARRAYS_RECORD,
    CONFIG_RECORD,
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
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    METRIC_AUROC,
    METRIC_BALANCED_ACCURACY,
    METRIC_LOSS,
    METRIC_SENSITIVITY,
    METRIC_SPECIFICITY,
    METRICS_RECORD,
    MOMENTS_ACTION,
    NUM_EXAMPLES,
    QUERY_ACTION,
    SECAGG_ACTIONS,
    SECAGG_RECORD,
)
from fl_client.query import account_of
from fl_client.site_runtime import resolve_site_config


def build_client_app(consortium: Path | None = None) -> ClientApp:
    """A ClientApp; ``consortium`` maps simulation partitions to synthetic sites (None: node config)."""
    app = ClientApp()

    def site_of(context: Context):  # type: ignore[no-untyped-def]
        return resolve_site_config(dict(context.node_config), dict(context.run_config), consortium)

    @app.query(QUERY_ACTION)
    def query(msg: Message, context: Context) -> Message:
        from fl_client.query import answer_query

        site = site_of(context)
        cfg = msg.content[CONFIG_RECORD]
        request = {"spec": json.loads(str(cfg[KEY_SPEC_JSON])), "requester": str(cfg.get(KEY_REQUEST_ID, ""))}
        if KEY_REQUESTED_MIN_CELL in cfg:
            request["requested_min_cell"] = int(cfg[KEY_REQUESTED_MIN_CELL])  # type: ignore[arg-type]
        answer = answer_query(site, request, account=account_of(context.node_config), run_id=str(context.run_id))
        return _answer(msg, answer.site_id, answer.status, answer.reason, KEY_RELEASED_JSON, answer.released_json)

    def secure_stage(action: str):  # type: ignore[no-untyped-def]
        """A handler for one stage of the secure sum of counts (state kept in the node's context)."""
        def handler(msg: Message, context: Context) -> Message:
            from fl_client.secure_counts import SECAGG_STATE, handle

            state = dict(context.state.config_records.get(SECAGG_STATE, ConfigRecord()))
            reply = handle(action, site_of(context), dict(msg.content[SECAGG_RECORD]), state, context.node_id,
                           account_of(context.node_config))
            context.state.config_records[SECAGG_STATE] = ConfigRecord(state)
            return Message(RecordDict({SECAGG_RECORD: ConfigRecord(reply)}), reply_to=msg)
        return handler

    for action in SECAGG_ACTIONS:
        app.query(action)(secure_stage(action))

    @app.query(MOMENTS_ACTION)
    def moments(msg: Message, context: Context) -> Message:
        from fl_client.moments import answer_moments

        site = site_of(context)
        cfg = msg.content[CONFIG_RECORD]
        requested = int(cfg[KEY_REQUESTED_MIN_CELL]) if KEY_REQUESTED_MIN_CELL in cfg else None  # type: ignore[arg-type]
        answer = answer_moments(site, json.loads(str(cfg[KEY_SPEC_JSON])), str(cfg[KEY_SUBSET]),
                                str(cfg[KEY_TRAINING_JSON]), str(cfg.get(KEY_REQUEST_ID, "")), requested)
        return _answer(msg, answer.site_id, answer.status, answer.reason, KEY_MOMENTS_JSON, answer.moments_json)

    @app.query(FINAL_MODEL_ACTION)
    def final_model(msg: Message, context: Context) -> Message:
        from fl_client.final_model import store_final_model

        cfg = msg.content[CONFIG_RECORD]
        answer = store_final_model(site_of(context), json.loads(str(cfg[KEY_SPEC_JSON])), str(cfg[KEY_SUBSET]),
                                   str(cfg[KEY_TRAINING_JSON]), msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays(),
                                   str(cfg[KEY_NORM_STATS_JSON]) if cfg.get(KEY_NORM_STATS_JSON) else None,
                                   str(cfg[KEY_SITE_CALIBRATION]), str(cfg.get(KEY_REQUEST_ID, "")))
        return _answer(msg, answer.site_id, answer.status, answer.reason, KEY_MODEL_DIGEST, answer.digest)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fl_client.local import TrainingSettings, fit

        site = site_of(context)
        cfg = msg.content[CONFIG_RECORD]
        weights = msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
        new_weights, stats = fit(site, json.loads(str(cfg[KEY_SPEC_JSON])), str(cfg[KEY_SUBSET]),
                                 TrainingSettings.from_json(str(cfg[KEY_TRAINING_JSON])), weights,
                                 stats=_norm_stats(cfg), proximal_mu=float(cfg.get(KEY_PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
                                 server_round=int(cfg.get(KEY_SERVER_ROUND, 1)))  # type: ignore[arg-type]
        metrics = MetricRecord({NUM_EXAMPLES: stats.num_samples, METRIC_LOSS: float(stats.loss)})
        return Message(RecordDict({ARRAYS_RECORD: ArrayRecord(numpy_ndarrays=new_weights),
                                   METRICS_RECORD: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fl_client.local import TrainingSettings, validate

        site = site_of(context)
        cfg = msg.content[CONFIG_RECORD]
        stats = validate(site, json.loads(str(cfg[KEY_SPEC_JSON])), str(cfg[KEY_SUBSET]),
                         TrainingSettings.from_json(str(cfg[KEY_TRAINING_JSON])),
                         msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays(), stats=_norm_stats(cfg))
        values = {NUM_EXAMPLES: stats.num_samples, METRIC_LOSS: stats.loss, METRIC_AUROC: stats.auroc,
                  METRIC_BALANCED_ACCURACY: stats.balanced_accuracy, METRIC_SENSITIVITY: stats.sensitivity,
                  METRIC_SPECIFICITY: stats.specificity}
        # Undefined metrics (e.g. AUROC with one class in the split) are left out, not sent as NaN.
        clean = {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}
        clean[NUM_EXAMPLES] = int(stats.num_samples)
        return Message(RecordDict({METRICS_RECORD: MetricRecord(clean)}), reply_to=msg)  # type: ignore[arg-type]

    return app


def _answer(msg: Message, site_id: str, status: str, reason: str | None, payload_key: str,
            payload: str | None) -> Message:
    """A query reply: ConfigRecord ``answer`` with site id, status, the payload when answered, the reason."""
    rec = ConfigRecord({KEY_SITE_ID: site_id, KEY_STATUS: status})
    if payload is not None:
        rec[payload_key] = payload
    if reason is not None:
        rec[KEY_REASON] = reason
    return Message(RecordDict({ANSWER_RECORD: rec}), reply_to=msg)


def _norm_stats(cfg: Any):  # type: ignore[no-untyped-def]
    """The consortium's normalisation statistics the server sent, or None (site statistics)."""
    from fl_client.normalization import NormStats

    text = cfg.get(KEY_NORM_STATS_JSON)
    return NormStats.from_json(str(text)) if text else None


app = build_client_app()
