"""FedAvg restricted to the agreed sites, recording per-site metrics and failures per round."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from cohort.protocol import ARRAYS_RECORD, CONFIG_RECORD, METRICS_RECORD, NUM_EXAMPLES


class CohortFedAvg(FedAvg):
    """FedAvg (weighted by training samples) over a fixed set of nodes: the agreed sites.

    Flower's FedAvg samples from every connected node; sites excluded at agreement must not train,
    so configure_* address exactly ``node_sites``. Replies with errors are recorded, not fatal.
    """

    def __init__(self, node_sites: dict[int, str], min_sites: int) -> None:
        super().__init__(min_train_nodes=min_sites, min_evaluate_nodes=min_sites, min_available_nodes=0,
                         weighted_by_key=NUM_EXAMPLES, arrayrecord_key=ARRAYS_RECORD,
                         configrecord_key=CONFIG_RECORD)
        self.node_sites = dict(node_sites)
        self.rounds: dict[int, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  message_type: str) -> list[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, dst_node_id=node, message_type=message_type)
                for node in sorted(self.node_sites)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

    def _record(self, server_round: int, phase: str, replies: list[Message]) -> list[Message]:
        entry = self.rounds.setdefault(server_round, {"round": server_round, "train": {}, "evaluate": {}})
        valid = []
        answered = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            site = self.node_sites.get(node, f"node-{node}")
            if msg.has_error():
                self.errors.append({"round": server_round, "phase": phase, "site": site,
                                    "reason": msg.error.reason})
                continue
            metrics = msg.content.get(METRICS_RECORD)
            entry[phase][site] = {k: v for k, v in dict(metrics).items()} if metrics is not None else {}
            valid.append(msg)
        for node, site in self.node_sites.items():
            if node not in answered:
                self.errors.append({"round": server_round, "phase": phase, "site": site,
                                    "reason": "no reply within the timeout"})
        return valid

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self._record(server_round, "train", list(replies))
        if len(valid) < self.min_train_nodes:
            self.errors.append({"round": server_round, "phase": "train", "site": "*",
                                "reason": f"only {len(valid)} sites replied, fewer than {self.min_train_nodes}: "
                                          "the global model is not updated this round"})
            return None, None
        arrays, metrics = super().aggregate_train(server_round, valid)
        if metrics is not None:
            self.rounds[server_round]["train_aggregated"] = dict(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = self._record(server_round, "evaluate", list(replies))
        site_metrics = list(self.rounds[server_round]["evaluate"].values())
        if not valid or not site_metrics:
            return None
        aggregated = weighted_mean_metrics(site_metrics)
        self.rounds[server_round]["aggregated"] = aggregated
        return MetricRecord(aggregated)  # type: ignore[arg-type]


def weighted_mean_metrics(site_metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Per metric, the mean over the sites that report it, weighted by their sample counts.

    Sites may omit a metric that is undefined for them (AUROC on a validation split with one class),
    which Flower's default aggregation would reject as inconsistent replies.
    """
    out: dict[str, float] = {}
    keys = sorted({k for m in site_metrics for k in m if k != NUM_EXAMPLES})
    for key in keys:
        pairs = [(float(m[NUM_EXAMPLES]), float(m[key])) for m in site_metrics
                 if key in m and NUM_EXAMPLES in m and float(m[NUM_EXAMPLES]) > 0]
        total = sum(w for w, _ in pairs)
        if total > 0:
            out[key] = sum(w * v for w, v in pairs) / total
    out[NUM_EXAMPLES] = float(sum(float(m.get(NUM_EXAMPLES, 0)) for m in site_metrics))
    return out
