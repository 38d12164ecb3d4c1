"""Flower 1.42 strategies restricted to the agreed sites, with per-site records and early stopping.

``federation.strategy`` selects Flower's own class (:data:`STRATEGIES`): FedAvg, FedProx (the clients
add the proximal term; Flower sends ``proximal-mu``), or the server optimisers FedAdam / FedYogi. Each is
combined with :class:`AgreedSites`, which

* addresses exactly the agreed nodes (Flower's strategies sample from every connected node: sites
  excluded at agreement must not train), by handing the parent a view of the grid with only those;
* records every site's metrics and failures per round instead of failing;
* keeps the weights of the round with the best federated validation AUROC (the lowest validation
  loss where no site may release an AUROC) and stops early after ``patience`` rounds without
  improvement (the remaining rounds send no messages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi

from cohort.errors import ConfigError
from cohort.protocol import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRIC_AUROC,
    METRIC_LOSS,
    METRICS_RECORD,
    NUM_EXAMPLES,
)

__all__ = ["STRATEGIES", "AgreedSites", "StrategySettings", "build_strategy", "weighted_mean_metrics"]


class _AgreedGrid:
    """The grid as the parent strategy sees it: only the agreed nodes exist.

    The agreed nodes are listed even when one has disconnected, so its message times out and is
    reported instead of the strategy waiting for it to reconnect.
    """

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        self._grid = grid
        self._nodes = sorted(nodes)

    def get_node_ids(self) -> Iterator[int]:
        return iter(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class AgreedSites(FedAvg):
    """Mixin for a Flower strategy: agreed nodes only, per-site records, best round, early stopping.

    Put it first in the bases (``class X(AgreedSites, FedProx)``) so its hooks wrap the strategy's;
    it derives from FedAvg, the common base of every strategy here, so the MRO puts the chosen
    strategy's own hooks between this class and FedAvg.
    """

    def __init__(self, node_sites: dict[int, str], min_sites: int, patience: int = 0, **kwargs: Any) -> None:
        super().__init__(min_train_nodes=min_sites, min_evaluate_nodes=min_sites, min_available_nodes=0,
                         weighted_by_key=NUM_EXAMPLES, arrayrecord_key=ARRAYS_RECORD,
                         configrecord_key=CONFIG_RECORD, **kwargs)
        self.node_sites = dict(node_sites)
        self.min_sites = min_sites
        self.patience = patience
        self.rounds: dict[int, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.best_round: int | None = None
        self.best_auroc: float | None = None
        self._best_score: tuple[int, float] | None = None
        self.best_arrays: ArrayRecord | None = None
        self.stopped_after: int | None = None
        self.on_round: Callable[[int], None] | None = None  # called after each round's evaluation
        self._latest: ArrayRecord | None = None

    # ------------------------------------------------------------------------------- addressing

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.stopped_after is not None:
            return []
        self._latest = arrays
        return super().configure_train(server_round, arrays, config, _AgreedGrid(grid, self.node_sites))  # type: ignore[arg-type]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.stopped_after is not None:
            return []
        self._latest = arrays
        return super().configure_evaluate(server_round, arrays, config, _AgreedGrid(grid, self.node_sites))  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------- recording

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
        if self.stopped_after is not None:
            return None, None
        valid = self._record(server_round, "train", list(replies))
        if len(valid) < self.min_sites:
            self.errors.append({"round": server_round, "phase": "train", "site": "*",
                                "reason": f"only {len(valid)} sites replied, fewer than {self.min_sites}: "
                                          "the global model is not updated this round"})
            return None, None
        arrays, metrics = super().aggregate_train(server_round, valid)
        if metrics is not None:
            self.rounds[server_round]["train_aggregated"] = dict(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.stopped_after is not None:
            return None
        valid = self._record(server_round, "evaluate", list(replies))
        site_metrics = list(self.rounds[server_round]["evaluate"].values())
        if not valid or not site_metrics:
            return None
        aggregated = weighted_mean_metrics(site_metrics)
        self.rounds[server_round]["aggregated"] = aggregated
        self._track_best(server_round, aggregated.get(METRIC_AUROC), aggregated.get(METRIC_LOSS))
        if self.on_round is not None:
            self.on_round(server_round)
        return MetricRecord(aggregated)  # type: ignore[arg-type]

    def _track_best(self, server_round: int, auroc: float | None, loss: float | None = None) -> None:
        """Keep the evaluated weights of the best round; stop after ``patience`` rounds without gain.

        Best by federated validation AUROC; where no site could release one (sites send class metrics
        only when both classes of their validation split reach the minimum cell), by the lowest
        federated validation loss. A round with an AUROC beats every round ranked by loss only.
        """
        score = (1, auroc) if auroc is not None else (0, -loss) if loss is not None else None
        if score is not None and (self._best_score is None or score > self._best_score):
            self._best_score, self.best_round, self.best_arrays = score, server_round, self._latest
            self.best_auroc = auroc
        elif self.best_round is None:
            self.best_round, self.best_arrays = server_round, self._latest
        if self.patience and self.best_round is not None and server_round - self.best_round >= self.patience:
            self.stopped_after = server_round


class CohortFedAvg(AgreedSites, FedAvg):
    """FedAvg (weighted by training samples) over the agreed sites."""


class CohortFedProx(AgreedSites, FedProx):
    """FedProx: FedAvg on the server; the clients add ``proximal_mu / 2 * ||w - w_global||^2``."""


class CohortFedAdam(AgreedSites, FedAdam):
    """FedAdam: the averaged update is applied with a server-side Adam step (``eta``)."""


class CohortFedYogi(AgreedSites, FedYogi):
    """FedYogi: like FedAdam with Yogi's additive second-moment update."""


STRATEGIES: dict[str, type[AgreedSites]] = {"fedavg": CohortFedAvg, "fedprox": CohortFedProx,
                                            "fedadam": CohortFedAdam, "fedyogi": CohortFedYogi}


@dataclass(frozen=True)
class StrategySettings:
    """``federation.*`` keys that choose and tune the strategy.

    Attributes:
        strategy: One of :data:`STRATEGIES`.
        proximal_mu: FedProx's proximal weight.
        server_lr: FedAdam/FedYogi server learning rate (Flower's ``eta``).
        server_beta_1, server_beta_2, server_tau: Their moment decay rates and adaptivity.
        patience: Stop after this many rounds without a better federated validation AUROC (0: never).
    """

    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    server_lr: float = 0.01
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3
    patience: int = 0

    @classmethod
    def from_config(cls, fed: dict[str, Any]) -> StrategySettings:
        names = [f for f in cls.__dataclass_fields__ if f in fed]
        return cls(**{k: fed[k] for k in names})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"federation.strategy={self.strategy!r} is not valid; choose one of "
                              f"{', '.join(STRATEGIES)}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ConfigError("federation.strategy=fedprox needs federation.proximal_mu > 0 (e.g. 0.01)")
        if self.patience < 0:
            raise ConfigError(f"federation.patience={self.patience} must be >= 0")


def build_strategy(settings: StrategySettings, node_sites: dict[int, str], min_sites: int) -> AgreedSites:
    """The configured strategy over ``node_sites`` (node id -> site id)."""
    cls = STRATEGIES[settings.strategy]
    kwargs: dict[str, Any] = {}
    if settings.strategy == "fedprox":
        kwargs["proximal_mu"] = float(settings.proximal_mu)
    elif settings.strategy in ("fedadam", "fedyogi"):
        kwargs.update(eta=float(settings.server_lr), beta_1=float(settings.server_beta_1),
                      beta_2=float(settings.server_beta_2), tau=float(settings.server_tau))
    return cls(node_sites, min_sites, patience=int(settings.patience), **kwargs)


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
