"""The round before training: consortium-wide normalisation statistics from the sites' moments.

Each agreed site answers a ``query.moments`` message with the count, sum and sum of squares of its
training split's numeric tabular features and ECG leads (features below its minimum cell withheld);
the coordinator adds them up and sends the resulting means and standard deviations with every train
and evaluate message. The report records, per feature, how many sites contributed (never a site's
own moments).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from cohort.errors import ConfigError
from cohort.protocol import (
    CONFIG_RECORD,
    KEY_MOMENTS_JSON,
    KEY_REQUEST_ID,
    KEY_REQUESTED_MIN_CELL,
    KEY_SPEC_JSON,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    MOMENTS_ACTION,
)
from fl_client.normalization import NormStats, SiteMoments, combine, norm_stats
from fl_server.site_queries import ask_sites


@dataclass
class NormRound:
    """Outcome of the moments round: the statistics and who contributed what."""

    stats: NormStats | None  # None: no site released moments
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> status, reason
    tabular_sites: list[int] = field(default_factory=list)  # per feature: number of contributing sites
    ecg_sites: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"sites": self.sites, "tabular_sites_per_feature": self.tabular_sites, "ecg_sites": self.ecg_sites}


def combine_site_moments(parts: list[SiteMoments]) -> tuple[NormStats, list[int], int]:
    """Consortium statistics from the sites' released moments, with contributing-site counts."""
    if not parts:
        raise ConfigError("no site released normalisation moments (see training.normalization_sources)")
    tab = combine([p.tabular for p in parts])
    ecg_parts = [p.ecg for p in parts if p.ecg_patients > 0]
    ecg = combine(ecg_parts) if ecg_parts else None
    n_features = len(parts[0].tabular.counts)
    per_feature = [sum(1 for p in parts if p.tabular.counts[j] not in (None, 0)) for j in range(n_features)]
    return norm_stats(tab, ecg), per_feature, len(ecg_parts)


def consortium_norm_stats(grid: Grid, node_sites: dict[int, str], train_cfg: ConfigRecord,
                          requested_min_cell: int | None, timeout: float) -> NormRound:
    """Ask every agreed node for its moments and combine the released ones."""
    cfg = ConfigRecord({KEY_SPEC_JSON: str(train_cfg[KEY_SPEC_JSON]), KEY_SUBSET: str(train_cfg[KEY_SUBSET]),
                        KEY_TRAINING_JSON: str(train_cfg[KEY_TRAINING_JSON]), KEY_REQUEST_ID: uuid.uuid4().hex})
    if requested_min_cell is not None:
        cfg[KEY_REQUESTED_MIN_CELL] = int(requested_min_cell)
    sites, answered = ask_sites(grid, node_sites, RecordDict({CONFIG_RECORD: cfg}), MOMENTS_ACTION, timeout)
    parts = [SiteMoments.from_json(str(rec[KEY_MOMENTS_JSON])) for rec in answered.values()]
    if not parts:
        return NormRound(None, sites)
    stats, per_feature, ecg_sites = combine_site_moments(parts)
    return NormRound(stats, sites, per_feature, ecg_sites)
