"""Local training for the agreed cohort: export once, build MONAI datasets, fit or evaluate the model.

Flower-free, so the same code serves the ClientApp, local-only baselines and pooled training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort.export.tabular import TABULAR_FEATURES
from cohort.siteconfig import SiteConfig
from fl_client.data import (
    DataConfig,
    Datalist,
    build_datasets,
    load_datalist,
    make_loader,
    positive_weight,
    split_train_val,
)
from fl_client.model import ModelConfig, MultiModalNet, get_weights, set_weights
from fl_client.train import EvalStats, TrainConfig, TrainStats, evaluate, train
from fl_client.transforms import PreprocessConfig


@dataclass(frozen=True)
class TrainingSettings:
    """Resolved model and training settings as the coordinator sends them (JSON)."""

    model: dict[str, Any]
    training: dict[str, Any]
    seed: int = 0

    @classmethod
    def from_json(cls, text: str) -> TrainingSettings:
        data = json.loads(text)
        return cls(model=data["model"], training=data["training"], seed=int(data.get("seed", 0)))

    def model_config(self) -> ModelConfig:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}
        return ModelConfig(n_tabular=len(TABULAR_FEATURES), **kwargs)

    def train_config(self) -> TrainConfig:
        t = self.training
        return TrainConfig(epochs=int(t["epochs"]), batch_size=int(t["batch_size"]), lr=float(t["lr"]),
                           weight_decay=float(t["weight_decay"]), seed=self.seed)

    def data_config(self) -> DataConfig:
        t = self.training
        shape = int(t["ct_shape"])
        pre = PreprocessConfig(ct_spacing=float(t["ct_spacing_mm"]), ct_shape=(shape, shape, shape),
                               ecg_rate=int(t["ecg_sampling_rate"]))
        return DataConfig(preprocess=pre, val_fraction=float(t["val_fraction"]), seed=self.seed)


def export_dir(site: SiteConfig, spec_json: dict[str, Any], subset: str) -> Path:
    """Export the agreed cohort once per (spec, subset); later calls reuse the export."""
    from cohort.export import export_cohort, export_key
    from cohort.spec.load import parse_spec

    spec = parse_spec(spec_json)
    out = site.store_path() / "exports" / export_key(spec, subset)
    if not (out / "datalist.json").exists():
        export_cohort(site.store_path(), spec, out, subset=subset)
    return out


def _datasets(datalist: Datalist, settings: TrainingSettings):  # type: ignore[no-untyped-def]
    return build_datasets(datalist, settings.data_config())


def fit(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings,
        weights: list[np.ndarray]) -> tuple[list[np.ndarray], TrainStats]:
    """One round of local training from the global ``weights``."""
    datalist = load_datalist(export_dir(site, spec_json, subset))
    train_ds, _ = _datasets(datalist, settings)
    cfg = settings.train_config()
    model = MultiModalNet(settings.model_config())
    set_weights(model, weights)
    train_entries, _ = split_train_val(datalist.entries, settings.data_config().val_fraction, settings.seed)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed)
    stats = train(model, loader, cfg, pos_weight=positive_weight(train_entries))
    return get_weights(model), stats


def validate(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings,
             weights: list[np.ndarray]) -> EvalStats:
    """Evaluate the global ``weights`` on this site's fixed validation split."""
    datalist = load_datalist(export_dir(site, spec_json, subset))
    _, val_ds = _datasets(datalist, settings)
    model = MultiModalNet(settings.model_config())
    set_weights(model, weights)
    with torch.no_grad():
        return evaluate(model, make_loader(val_ds, settings.train_config().batch_size))
