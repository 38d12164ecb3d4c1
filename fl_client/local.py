"""Local training for the agreed cohort: export once, build MONAI datasets, fit or evaluate the model.

Flower-free, so the same code serves the ClientApp, local-only baselines and pooled training.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from cohort.errors import ConfigError
from cohort.export.tabular import TABULAR_FEATURES
from cohort.siteconfig import SiteConfig
from fl_client.data import (
    DATALIST_FILE,
    DataConfig,
    Datalist,
    DatalistEntry,
    build_datasets,
    load_datalist,
    make_loader,
    positive_weight,
    preprocessed_dataset,
    split_train_val,
    training_moments,
)
from fl_client.model import ModelConfig, MultiModalNet, get_weights, set_weights
from fl_client.normalization import NormStats, SiteMoments
from fl_client.train import DECISION_THRESHOLD, EvalStats, TrainConfig, TrainStats, evaluate, predict, train
from fl_client.transforms import PreprocessConfig

CLASS_WEIGHTS = ("site", "none")
NORMALIZATIONS = ("consortium", "site")


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

    def train_config(self, proximal_mu: float = 0.0, server_round: int = 0) -> TrainConfig:
        """Local training settings; round ``r`` seeds its shuffling and dropout with ``seed + r``.

        Every approach (federated rounds, local-only and pooled baselines) seeds its rounds this way,
        so rounds do not repeat one batch order; the train/validation split stays on ``seed``.
        """
        t = self.training
        return TrainConfig(epochs=int(t["epochs"]), batch_size=int(t["batch_size"]), lr=float(t["lr"]),
                           weight_decay=float(t["weight_decay"]), seed=self.seed + server_round,
                           loss=str(t.get("loss", "weighted_bce")),  # type: ignore[arg-type]
                           focal_gamma=float(t.get("focal_gamma", 2.0)), proximal_mu=float(proximal_mu),
                           device=str(t.get("device", "auto")))

    def data_config(self) -> DataConfig:
        t = self.training
        shape = int(t["ct_shape"])
        pre = PreprocessConfig(ct_spacing=float(t["ct_spacing_mm"]), ct_shape=(shape, shape, shape),
                               ecg_rate=int(t["ecg_sampling_rate"]),
                               ecg_scaling=str(t.get("ecg_scaling", "standardize")))  # type: ignore[arg-type]
        return DataConfig(preprocess=pre, val_fraction=float(t["val_fraction"]), seed=self.seed,
                          persistent=bool(t.get("preprocess_cache", True)))

    @property
    def class_weight(self) -> str:
        """``training.class_weight``: "site" (n_neg / n_pos of the split trained on) or "none"."""
        mode = str(self.training.get("class_weight", "site"))
        if mode not in CLASS_WEIGHTS:
            raise ConfigError(f"training.class_weight={mode!r} is not valid; choose one of {CLASS_WEIGHTS}")
        return mode

    def positive_weight(self, train_entries: list[DatalistEntry] | tuple[DatalistEntry, ...]) -> float:
        """The loss's positive-class weight for these training entries (``training.class_weight``)."""
        return positive_weight(train_entries) if self.class_weight == "site" else 1.0

    def decision_threshold(self, train_entries: list[DatalistEntry] | tuple[DatalistEntry, ...]) -> float:
        """Operating point of the reported threshold metrics: where a positive and a negative weigh the same.

        A loss that weights positives by ``w`` learns odds ``w`` times the training split's, so equal class
        weight sits at probability ``w * n_pos / (w * n_pos + n_neg)``: 0.5 with ``class_weight=site``
        (``w = n_neg / n_pos``), the split's prevalence with ``class_weight=none``. At a fixed 0.5 an
        unweighted model on a 15%-prevalence site flags almost nobody (balanced accuracy 0.5 whatever
        its AUROC).
        """
        n_pos = sum(e.label == 1 for e in train_entries)
        n_neg = len(train_entries) - n_pos
        if n_pos == 0 or n_neg == 0:
            return DECISION_THRESHOLD
        w = self.positive_weight(train_entries)
        return w * n_pos / (w * n_pos + n_neg)

    @property
    def normalization(self) -> str:
        """"consortium" (statistics from the federated moments round) or "site" (own training split)."""
        mode = str(self.training.get("normalization", "site"))
        if mode not in NORMALIZATIONS:
            raise ConfigError(f"training.normalization={mode!r} is not valid; choose one of {NORMALIZATIONS}")
        return mode

    def check(self) -> None:
        """Every model and training setting a site will use, checked at once (the coordinator, before round 1).

        Raises ``ConfigError`` naming the first bad setting, so a typo fails when the run starts instead of
        at every site in round 1. The device is not checked: CUDA is a property of each site's machine.
        """
        try:
            self.model_config()
            self.train_config()
            self.data_config()
            _ = self.class_weight, self.normalization
        except ConfigError as exc:
            raise ConfigError(f"training settings: {exc} (configs/model, configs/training, or an override "
                              f"such as training.loss=focal)") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"training settings: {type(exc).__name__}: {exc}; every key of configs/training "
                              f"and configs/model needs a value of its documented type") from exc


def export_dir(site: SiteConfig, spec_json: dict[str, Any], subset: str) -> Path:
    """Export the agreed cohort once per (spec, subset); later calls reuse the export."""
    return store_export_dir(site.store_path(), spec_json, subset)


def store_export_dir(store: Path, spec_json: dict[str, Any], subset: str) -> Path:
    """:func:`export_dir` of the site whose store is ``store`` (``fl-client predict`` has no site.yaml)."""
    from cohort.export import export_cohort, export_key
    from cohort.index.catalog import store_catalog
    from cohort.spec.load import parse_spec

    spec = parse_spec(spec_json, catalog=store_catalog(store))
    out = store / "exports" / export_key(spec, subset)
    if not (out / "datalist.json").exists():
        export_cohort(store, spec, out, subset=subset)
    return out


# Datasets of recent rounds in this process (a simulation actor serves every round of its sites; a
# deployed ClientApp process serves one message, so there every round reads the disk cache).
_DATASETS: OrderedDict[tuple[Any, ...], tuple[Dataset, Dataset]] = OrderedDict()
_DATASETS_KEPT = 4


def _round_datasets(export: Path, data_cfg: DataConfig, stats: NormStats | None) -> tuple[Datalist, Dataset, Dataset]:
    """The datalist and its training / validation datasets, reused while datalist and settings are unchanged."""
    datalist = load_datalist(export)
    stat = (export / DATALIST_FILE).stat()
    key = (str(export), stat.st_mtime_ns, stat.st_size, datalist.cohort_hash, data_cfg,
           None if stats is None else stats.to_json())
    if key in _DATASETS:
        _DATASETS.move_to_end(key)
    else:
        _DATASETS[key] = build_datasets(datalist, data_cfg, stats)
        while len(_DATASETS) > _DATASETS_KEPT:
            _DATASETS.popitem(last=False)
    return (datalist, *_DATASETS[key])


def fit(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings,
        weights: list[np.ndarray], stats: NormStats | None = None,
        proximal_mu: float = 0.0, server_round: int = 1) -> tuple[list[np.ndarray], TrainStats]:
    """One round of local training from the global ``weights``.

    ``stats``: the consortium's normalisation statistics (None: this site's own training split);
    ``proximal_mu``: FedProx's proximal weight, as the strategy sends it; ``server_round``: the
    round number, which seeds this round's shuffling and dropout (:meth:`TrainingSettings.train_config`).
    """
    data_cfg = settings.data_config()
    datalist, train_ds, _ = _round_datasets(export_dir(site, spec_json, subset), data_cfg, stats)
    cfg = settings.train_config(proximal_mu, server_round)
    model = MultiModalNet(settings.model_config())
    set_weights(model, weights)
    train_entries, _ = split_train_val(datalist.entries, data_cfg.val_fraction, settings.seed)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed)
    stats_out = train(model, loader, cfg, pos_weight=settings.positive_weight(train_entries))
    return get_weights(model), stats_out


def validate(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings,
             weights: list[np.ndarray], stats: NormStats | None = None) -> EvalStats:
    """Evaluate the global ``weights`` on this site's fixed validation split.

    Threshold metrics are taken at :meth:`TrainingSettings.decision_threshold` of the site's training split.
    """
    data_cfg = settings.data_config()
    datalist, _, val_ds = _round_datasets(export_dir(site, spec_json, subset), data_cfg, stats)
    train_entries, _ = split_train_val(datalist.entries, data_cfg.val_fraction, settings.seed)
    model = MultiModalNet(settings.model_config())
    set_weights(model, weights)
    with torch.no_grad():
        return evaluate(model, make_loader(val_ds, settings.train_config().batch_size),
                        threshold=settings.decision_threshold(train_entries))


def training_split_predictions(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings,
                               weights: list[np.ndarray], stats: NormStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and the labels on this site's training split (for its own intercept)."""
    data_cfg = settings.data_config()
    _, train_ds, _ = _round_datasets(export_dir(site, spec_json, subset), data_cfg, stats)
    model = MultiModalNet(settings.model_config())
    set_weights(model, weights)
    with torch.no_grad():
        return predict(model, make_loader(train_ds, settings.train_config().batch_size))


def moments(site: SiteConfig, spec_json: dict[str, Any], subset: str, settings: TrainingSettings) -> SiteMoments:
    """Moments of this site's training split for the consortium-wide normalisation statistics."""
    datalist = load_datalist(export_dir(site, spec_json, subset))
    data_cfg = settings.data_config()
    train_entries, _ = split_train_val(datalist.entries, data_cfg.val_fraction, settings.seed)
    return training_moments(datalist, train_entries, preprocessed_dataset(datalist, train_entries, data_cfg))
