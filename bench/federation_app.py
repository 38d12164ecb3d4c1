"""The Flower app that bench/federation.py submits to a deployment: timed rounds of the real handlers.

ServerApp (``server``), in one run on the same connected SuperNodes:

1. bare query rounds: ``query.empty`` to every node, whose handler returns an empty reply at once
   (what one Flower round costs with no work: message delivery, polling, a ClientApp process);
2. the negotiation round: ``fl_server.federation.negotiate`` -> the project's real cohort query handler;
3. one training round: the agreed sites train the shared model from the same initial weights with the
   same config records as ``CohortFedAvg`` (message ``train.timed``: the project's ``fl_client.local``
   code, plus the site's own timing of the export and of the local fit);
4. one federated evaluation round with the project's real ``evaluate`` handler.

Wall times are measured around ``grid.send_and_receive``; the JSON goes to run config ``out-file``.
ClientApp (``client``): the project's ClientApp plus the ``query.empty`` and ``train.timed`` handlers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from cohort.protocol import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    KEY_SPEC_JSON,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    METRIC_LOSS,
    METRICS_RECORD,
    NUM_EXAMPLES,
)
from fl_client.client_app import build_client_app

EMPTY_ACTION = "empty"
TIMED_ACTION = "timed"

client = build_client_app()


@client.query(EMPTY_ACTION)
def empty(msg: Message, context: Context) -> Message:
    """The bare round's handler: no work at all."""
    return Message(RecordDict(), reply_to=msg)


@client.train(TIMED_ACTION)
def timed_train(msg: Message, context: Context) -> Message:
    """The project's local training (same code as the ``train`` handler), timed at the site."""
    from fl_client.local import TrainingSettings, export_dir, fit
    from fl_client.site_runtime import resolve_site_config

    site = resolve_site_config(dict(context.node_config), dict(context.run_config))
    cfg = msg.content[CONFIG_RECORD]
    spec_json = json.loads(str(cfg[KEY_SPEC_JSON]))
    settings = TrainingSettings.from_json(str(cfg[KEY_TRAINING_JSON]))
    t0 = time.perf_counter()
    export_dir(site, spec_json, str(cfg[KEY_SUBSET]))  # one-time cohort export, cached in the store
    t1 = time.perf_counter()
    weights, stats = fit(site, spec_json, str(cfg[KEY_SUBSET]), settings, msg.content[ARRAYS_RECORD].to_numpy_ndarrays())
    t2 = time.perf_counter()
    metrics = MetricRecord({NUM_EXAMPLES: stats.num_samples, METRIC_LOSS: float(stats.loss),
                            "export-s": t1 - t0, "fit-s": t2 - t1, "epochs": int(settings.training["epochs"])})
    return Message(RecordDict({ARRAYS_RECORD: ArrayRecord(numpy_ndarrays=weights), METRICS_RECORD: metrics}),
                   reply_to=msg)


server = ServerApp()


def _round(grid: Grid, messages: list[Message], timeout: float) -> tuple[float, list[Message]]:
    t0 = time.perf_counter()
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    return time.perf_counter() - t0, replies


def _errors(replies: list[Message], expected: int) -> list[str]:
    errs = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
    if len(replies) < expected:
        errs.append(f"{expected - len(replies)} nodes did not reply")
    return errs


@server.main()
def main(grid: Grid, context: Context) -> None:
    from fl_server.agreement import AgreementRule, agree
    from fl_server.config import compose_config
    from fl_server.federation import _wait_for_nodes, coordinator_spec, initial_arrays, negotiate

    rc = dict(context.run_config)
    expected = int(rc["expected-sites"])
    out_file = Path(str(rc["out-file"]))
    result: dict[str, Any] = {"sites": expected, "errors": []}
    nodes = _wait_for_nodes(grid, expected, float(rc.get("wait-s", 300)))
    result["nodes"] = len(nodes)

    bare = []
    for _ in range(int(rc.get("bare-rounds", 3))):
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=f"query.{EMPTY_ACTION}") for n in nodes]
        dt, replies = _round(grid, msgs, 120)
        result["errors"] += _errors(replies, len(nodes))
        bare.append(dt)
    result["bare_round_s"] = bare

    cfg = compose_config(str(rc["cohort-name"]), str(rc.get("hydra-overrides", "")))
    spec_json = coordinator_spec(cfg).to_dict()
    t0 = time.perf_counter()
    answers = negotiate(grid, nodes, spec_json, None, float(cfg["federation"]["query_timeout_s"]))
    result["negotiation_s"] = time.perf_counter() - t0
    result["answers"] = {a.site_id: a.status for a in answers}
    agreement = agree(answers, AgreementRule(**cfg["agreement"]))
    participants = {d.node_id: d.site_id for d in agreement.participants}
    result["participants"] = sorted(participants.values())

    train_cfg = ConfigRecord({KEY_SPEC_JSON: json.dumps(spec_json, sort_keys=True), KEY_SUBSET: agreement.rule.subset,
                              KEY_TRAINING_JSON: json.dumps({"model": cfg["model"], "training": cfg["training"],
                                                             "seed": cfg["seed"]}), "server-round": 1})
    arrays = initial_arrays(cfg["model"], int(cfg["seed"]))
    timeout = float(cfg["federation"]["train_timeout_s"])
    msgs = [Message(RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: train_cfg}), dst_node_id=n,
                    message_type=f"train.{TIMED_ACTION}") for n in sorted(participants)]
    dt, replies = _round(grid, msgs, timeout)
    result["errors"] += _errors(replies, len(msgs))
    result["train_round_s"] = dt
    result["train_sites"] = {participants[m.metadata.src_node_id]: dict(m.content[METRICS_RECORD])
                             for m in replies if not m.has_error()}

    msgs = [Message(RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: ConfigRecord(dict(train_cfg))}),
                    dst_node_id=n, message_type="evaluate") for n in sorted(participants)]
    dt, replies = _round(grid, msgs, timeout)
    result["errors"] += _errors(replies, len(msgs))
    result["evaluate_round_s"] = dt
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
