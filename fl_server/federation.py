"""The coordinator's run: negotiation (counts only), agreement, label balance report, FedAvg, reports."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from cohort.errors import ConfigError
from cohort.index.catalog import field_catalog
from cohort.protocol import (
    ANSWER_RECORD,
    CONFIG_RECORD,
    KEY_NORM_STATS_JSON,
    KEY_REASON,
    KEY_RELEASED_JSON,
    KEY_REQUEST_ID,
    KEY_REQUESTED_MIN_CELL,
    KEY_SITE_ID,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    QUERY_ACTION,
    STATUS_ERROR,
)
from cohort.release.disclosure import ReleasedCounts
from cohort.spec.load import parse_spec
from cohort.spec.model import CohortSpec
from fl_server.agreement import AgreementRule, SiteAnswer
from fl_server.config import compose_run_config
from fl_server.final_model_round import STORED, deliver_final_model
from fl_server.norm_round import consortium_norm_stats
from fl_server.report import RunReport, write_reports
from fl_server.secure_counts import agree_with_totals
from fl_server.strategy import StrategySettings, build_strategy

STATUS_TIMEOUT = "timeout"


@dataclass(frozen=True)
class RunSettings:
    """The flat selectors a run starts from (Flower run_config keys in kebab case)."""

    cohort: str | None = None
    overrides: str = ""
    out_dir: str = "fl-out"
    expected_sites: int = 0  # wait for this many nodes before negotiating (0: whoever is connected)
    wait_s: float = 60.0

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> RunSettings:
        return cls(cohort=str(rc["cohort-name"]) if rc.get("cohort-name") else None,
                   overrides=str(rc.get("hydra-overrides", "") or ""),
                   out_dir=str(rc.get("out-dir", "fl-out") or "fl-out"),
                   expected_sites=int(rc.get("expected-sites", 0) or 0),
                   wait_s=float(rc.get("wait-s", 60) or 60))


def _wait_for_nodes(grid: Grid, expected: int, wait_s: float) -> list[int]:
    deadline = time.monotonic() + wait_s
    nodes = sorted(grid.get_node_ids())
    while expected and len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    return nodes


def negotiate(grid: Grid, nodes: list[int], spec_json: dict[str, Any], requested_min_cell: int | None,
              timeout: float) -> list[SiteAnswer]:
    """Send the spec to every node as a query; collect released counts, refusals, errors, silences."""
    request_id = uuid.uuid4().hex
    cfg = ConfigRecord({KEY_SPEC_JSON: json.dumps(spec_json, sort_keys=True), KEY_REQUEST_ID: request_id})
    if requested_min_cell is not None:
        cfg[KEY_REQUESTED_MIN_CELL] = int(requested_min_cell)
    messages = [Message(content=RecordDict({CONFIG_RECORD: cfg}), dst_node_id=n,
                        message_type=f"query.{QUERY_ACTION}") for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    answers: list[SiteAnswer] = []
    seen = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        seen.add(node)
        if msg.has_error():
            answers.append(SiteAnswer(f"node-{node}", node, STATUS_ERROR, reason=msg.error.reason))
            continue
        rec = msg.content[ANSWER_RECORD]
        released = rec.get(KEY_RELEASED_JSON)
        answers.append(SiteAnswer(
            str(rec[KEY_SITE_ID]), node, str(rec[KEY_STATUS]),
            ReleasedCounts.from_json(json.loads(str(released))) if released else None,
            str(rec[KEY_REASON]) if rec.get(KEY_REASON) else None))
    for n in nodes:
        if n not in seen:
            answers.append(SiteAnswer(f"node-{n}", n, STATUS_TIMEOUT, reason=f"no answer within {timeout:.0f} s"))
    return answers


def initial_arrays(model_cfg: dict[str, Any], seed: int) -> ArrayRecord:
    """The shared model's initial weights (fl_client.model), the same for every site."""
    import torch

    from cohort.export.tabular import TABULAR_FEATURES
    from fl_client.model import ModelConfig, MultiModalNet, get_weights

    torch.manual_seed(seed)
    model = MultiModalNet(ModelConfig(n_tabular=len(TABULAR_FEATURES), **_model_kwargs(model_cfg)))
    # Positional keys, as the ClientApp replies (ArrayRecord(numpy_ndarrays=...)): FedOpt strategies
    # subtract the sent arrays from the aggregate key by key.
    return ArrayRecord(numpy_ndarrays=get_weights(model))


def _model_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()}


def coordinator_spec(cfg: dict[str, Any]) -> CohortSpec:
    """The run's cohort spec, checked against the coordinator's catalog before any message goes out.

    The coordinator has no store: its catalog is the built-in fields plus the template configs the
    consortium shares (``federation.template_configs``, folders). Each site checks the spec again
    against its own store's catalog when it answers.
    """
    dirs = [Path(d) for d in cfg["federation"].get("template_configs") or []]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"federation.template_configs names folders that do not exist: {missing}; give folders "
                          "of template extraction configs (docs/templates.md)")
    return parse_spec(cfg["cohort"], catalog=field_catalog(dirs))


def run_federation(grid: Grid, settings: RunSettings) -> RunReport:
    """The whole coordinator side of one run; writes the reports into ``settings.out_dir``."""
    out = Path(settings.out_dir)
    cfg = compose_run_config(settings.cohort, settings.overrides)
    spec = coordinator_spec(cfg)
    spec_json = spec.to_dict()
    fed = cfg["federation"]
    nodes = _wait_for_nodes(grid, settings.expected_sites, settings.wait_s)
    log(INFO, "negotiation: sending cohort %r to %d sites", spec.name, len(nodes))
    answers = negotiate(grid, nodes, spec_json, cfg["disclosure"].get("requested_min_cell_size"),
                        float(fed["query_timeout_s"]))
    rule = AgreementRule(**cfg["agreement"])
    agreement, totals = agree_with_totals(grid, answers, rule, spec_json, cfg)  # secure totals over agreed sites
    report = RunReport(cohort_name=spec.name, spec=spec_json, answers=answers, agreement=agreement, config=cfg,
                       totals=totals)
    write_reports(report, out)  # the label balance report exists before any training starts
    participants = {d.node_id: d.site_id for d in agreement.participants}
    min_sites = int(fed["min_sites"])
    if len(participants) < min_sites:
        report.training_errors.append({"round": 0, "phase": "agreement", "site": "*",
                                       "reason": f"{len(participants)} sites meet the rule, fewer than "
                                                 f"min_sites={min_sites}: no training"})
        write_reports(report, out)
        return report
    strategy_settings = StrategySettings.from_config(fed)
    train_cfg = ConfigRecord({KEY_SPEC_JSON: json.dumps(spec_json, sort_keys=True), KEY_SUBSET: rule.subset,
                              KEY_TRAINING_JSON: json.dumps({"model": cfg["model"], "training": cfg["training"],
                                                             "seed": cfg["seed"]})})
    report.training = {"strategy": strategy_settings.strategy, "normalization": cfg["training"].get("normalization", "site")}
    if report.training["normalization"] == "consortium":
        log(INFO, "normalisation: asking %d sites for the moments of their training splits", len(participants))
        # The first message after agreement: sites export and preprocess here, so it gets the train timeout.
        norm = consortium_norm_stats(grid, participants, train_cfg, cfg["disclosure"].get("requested_min_cell_size"),
                                     float(fed["train_timeout_s"]))
        report.training["normalization_sources"] = norm.to_json()
        if norm.stats is None:
            report.training_errors.append({"round": 0, "phase": "normalisation", "site": "*",
                                           "reason": "no site released normalisation moments (see "
                                                     "training.normalization_sources): sites use their own statistics"})
            report.training["normalization"] = "site"
        else:
            train_cfg[KEY_NORM_STATS_JSON] = norm.stats.to_json()
            report.training["norm_stats"] = json.loads(norm.stats.to_json())  # consortium-wide, no site's own
    strategy = build_strategy(strategy_settings, participants, min_sites)

    def publish_round(server_round: int) -> None:  # the coordinator view follows the run round by round
        report.rounds = [_round_summary(r) for _, r in sorted(strategy.rounds.items())]
        report.training.update({"best_round": strategy.best_round, "best_validation_auroc": strategy.best_auroc})
        write_reports(report, out)

    strategy.on_round = publish_round
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(cfg["model"], int(cfg["seed"])),
                            num_rounds=int(fed["rounds"]), timeout=float(fed["train_timeout_s"]),
                            train_config=train_cfg, evaluate_config=ConfigRecord(dict(train_cfg)))
    report.rounds = [_round_summary(r) for _, r in sorted(strategy.rounds.items())]
    report.training_errors += strategy.errors
    # The kept model is the round with the best federated validation AUROC (the last one without any).
    final = strategy.best_arrays if strategy.best_arrays is not None else result.arrays
    report.training.update({"best_round": strategy.best_round, "best_validation_auroc": strategy.best_auroc,
                            "stopped_after_round": strategy.stopped_after})
    weights_path = out / "final_model.npz"
    state = final.to_numpy_ndarrays() if final is not None else []
    np.savez(weights_path, *state)
    report.final_weights = weights_path.name
    if state:
        calibration = str(fed["site_calibration"])
        log(INFO, "final model: sending it to %d sites (site_calibration=%s)", len(participants), calibration)
        delivered = deliver_final_model(grid, participants, state, train_cfg, calibration, float(fed["train_timeout_s"]))
        report.training.update({"site_calibration": calibration, "final_model_sites": delivered})
        report.training_errors += [{"round": "final", "phase": "final model", "site": site, "reason": d["reason"]}
                                   for site, d in sorted(delivered.items()) if d["status"] != STORED]
    write_reports(report, out)
    return report


def _round_summary(r: dict[str, Any]) -> dict[str, Any]:
    losses = [m.get("loss") for m in r.get("train", {}).values() if m.get("loss") is not None]
    return {**r, "train_loss": round(float(np.mean(losses)), 4) if losses else None}
