"""The site's training data: read the cohort export's datalist, split it, and build MONAI datasets.

The export folder (written by ``cohort export``) holds ``datalist.json`` and the arrays it points to.
Paths in the datalist are relative to that folder; :func:`load_datalist` resolves and checks them, so a
broken export fails here with the offending key rather than deep inside a data loader.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset

from cohort.errors import ConfigError, InputError
from fl_client.normalization import NormStats, SiteMoments, norm_stats, site_moments
from fl_client.transforms import PreprocessConfig, cached_transforms, normalize_transforms

__all__ = [
    "CACHE_DIR", "DATALIST_FILE", "DATALIST_VERSION", "DataConfig", "Datalist", "DatalistEntry", "TabularFeature",
    "build_datasets", "load_datalist", "make_loader", "positive_weight", "preprocess_cache_dir",
    "preprocessed_dataset", "site_norm_stats", "split_train_val", "training_moments",
]

DATALIST_FILE = "datalist.json"
DATALIST_VERSION = 1
CACHE_DIR = "preprocessed"  # under the export folder: one subfolder per (cohort hash, preprocessing)
CACHE_FORMAT = 1  # bump when the cached chain changes in code, so old caches are not reused


@dataclass(frozen=True)
class TabularFeature:
    """One column of the tabular vector: its name and UCUM-style unit ("1" for indicators)."""

    name: str
    unit: str


@dataclass(frozen=True)
class DatalistEntry:
    """One training patient: absolute paths of the arrays (None when absent), tabular values, label."""

    patient: str
    ct: Path | None
    ecg: Path | None
    tabular: tuple[float | None, ...]
    label: int

    def to_sample(self) -> dict[str, Any]:
        """The MONAI datalist dictionary the transforms of :mod:`fl_client.transforms` expect."""
        return {
            "patient": self.patient,
            "ct": None if self.ct is None else str(self.ct),
            "ecg": None if self.ecg is None else str(self.ecg),
            "tabular": list(self.tabular),
            "label": self.label,
        }


@dataclass(frozen=True)
class Datalist:
    """A parsed, validated cohort export."""

    root: Path
    version: int
    cohort_hash: str
    ecg_sampling_rate: int
    ecg_samples: int
    tabular_features: tuple[TabularFeature, ...]
    entries: tuple[DatalistEntry, ...]

    @property
    def n_tabular(self) -> int:
        """Length of the tabular vector (the model's ``n_tabular``)."""
        return len(self.tabular_features)


@dataclass(frozen=True)
class DataConfig:
    """How a site turns its datalist into datasets.

    Attributes:
        preprocess: Preprocessing settings (must match across sites).
        val_fraction: Share of each label class held out for local validation.
        seed: Seed of the train/validation split.
        cache: Keep preprocessed samples in memory (``CacheDataset``) for the datasets' lifetime.
        persistent: Store preprocessed samples on disk (``PersistentDataset``) under the export folder,
            keyed by the cohort hash and the preprocessing settings (:func:`preprocess_cache_dir`), so
            later rounds and runs read tensors instead of NIfTI and ECG files.
        cache_root: Folder of the on-disk cache; None: ``<export>/preprocessed``.
        cache_workers: Threads used to fill the in-memory cache.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    val_fraction: float = 0.25
    seed: int = 0
    cache: bool = True
    persistent: bool = True
    cache_root: Path | None = None
    cache_workers: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")


# ------------------------------------------------------------------------------------------ loading


def _require(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str, path: Path) -> Any:
    if key not in obj:
        raise InputError("missing key; the cohort export must write it (re-run `cohort export`)",
                         path=str(path), field=f"{where}{key}")
    value = obj[key]
    # bool is an int in Python, but never a valid count, rate or label here.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        names = "/".join(k.__name__ for k in _as_tuple(kinds))
        raise InputError(f"expected {names}, got {type(value).__name__} {value!r}",
                         path=str(path), field=f"{where}{key}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _resolve(root: Path, rel: str | None, where: str, path: Path) -> Path | None:
    if rel is None:
        return None
    full = (root / rel).resolve()
    if not full.is_file():
        raise InputError(f"file {rel!r} does not exist under {root}", path=str(path), field=where)
    return full


def _parse_entry(raw: Any, i: int, root: Path, n_features: int, path: Path) -> DatalistEntry:
    where = f"training[{i}]."
    if not isinstance(raw, dict):
        raise InputError(f"expected an object, got {type(raw).__name__}", path=str(path), field=where[:-1])
    patient = _require(raw, "patient", str, where, path)
    ct = _require(raw, "ct", (str, type(None)), where, path)
    ecg = _require(raw, "ecg", (str, type(None)), where, path)
    tabular = _require(raw, "tabular", list, where, path)
    label = _require(raw, "label", int, where, path)
    if label not in (0, 1):
        raise InputError(f"label must be 0 or 1, got {label!r}", path=str(path), field=f"{where}label")
    if len(tabular) != n_features:
        raise InputError(f"has {len(tabular)} values but tabular_features names {n_features}",
                         path=str(path), field=f"{where}tabular")
    for j, v in enumerate(tabular):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InputError(f"expected a number or null, got {v!r}", path=str(path),
                             field=f"{where}tabular[{j}]")
    return DatalistEntry(
        patient=patient,
        ct=_resolve(root, ct, f"{where}ct", path),
        ecg=_resolve(root, ecg, f"{where}ecg", path),
        tabular=tuple(None if v is None else float(v) for v in tabular),
        label=label,
    )


def load_datalist(directory: str | Path) -> Datalist:
    """Read and validate ``DIR/datalist.json`` of a cohort export.

    Raises:
        InputError: The file is missing or malformed; the message names the key (e.g.
            ``training[3].label``) and what was expected.
    """
    root = Path(directory).resolve()
    path = root / DATALIST_FILE
    if not path.is_file():
        raise InputError(f"no {DATALIST_FILE} in {root}; pass the folder written by `cohort export --out`",
                         path=str(path))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path=str(path)) from exc
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object at the top level", path=str(path))
    version = _require(doc, "version", int, "", path)
    if version != DATALIST_VERSION:
        raise InputError(f"version {version} is not supported; this client reads version {DATALIST_VERSION}",
                         path=str(path), field="version")
    features_raw = _require(doc, "tabular_features", list, "", path)
    features = []
    for j, f in enumerate(features_raw):
        if not isinstance(f, dict):
            raise InputError("expected an object with name and unit", path=str(path),
                             field=f"tabular_features[{j}]")
        features.append(TabularFeature(_require(f, "name", str, f"tabular_features[{j}].", path),
                                       _require(f, "unit", str, f"tabular_features[{j}].", path)))
    rate = _require(doc, "ecg_sampling_rate", int, "", path)
    samples = _require(doc, "ecg_samples", int, "", path)
    if rate <= 0 or samples <= 0:
        raise InputError("ecg_sampling_rate and ecg_samples must be positive", path=str(path),
                         field="ecg_sampling_rate" if rate <= 0 else "ecg_samples")
    training = _require(doc, "training", list, "", path)
    entries = tuple(_parse_entry(raw, i, root, len(features), path) for i, raw in enumerate(training))
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if e.patient in seen:
            raise InputError(f"patient {e.patient!r} appears twice", path=str(path),
                             field=f"training[{i}].patient")
        seen.add(e.patient)
    return Datalist(root=root, version=version, cohort_hash=_require(doc, "cohort_hash", str, "", path),
                    ecg_sampling_rate=rate, ecg_samples=samples, tabular_features=tuple(features),
                    entries=entries)


# -------------------------------------------------------------------------------------- splitting


def split_train_val(entries: Sequence[DatalistEntry], val_fraction: float = 0.25,
                    seed: int = 0) -> tuple[list[DatalistEntry], list[DatalistEntry]]:
    """Split entries into training and validation, stratified by label and fixed by ``seed``.

    Each label class sends ``round(n * val_fraction)`` patients to validation, at least one and at
    most n - 1 when the class has two or more (so validation can see both classes and training keeps
    both). The result depends only on the set of patients and the seed, not on the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    ordered = sorted(entries, key=lambda e: e.patient)
    rng = np.random.default_rng(seed)
    val_ids: set[str] = set()
    for label in (0, 1):
        members = [e.patient for e in ordered if e.label == label]
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        picked = rng.permutation(len(members))[:n_val]
        val_ids.update(members[k] for k in picked)
    train = [e for e in ordered if e.patient not in val_ids]
    val = [e for e in ordered if e.patient in val_ids]
    return train, val


def positive_weight(entries: Sequence[DatalistEntry]) -> float:
    """``n_negative / n_positive`` for ``BCEWithLogitsLoss(pos_weight=...)``; 1.0 if a class is absent."""
    n_pos = sum(e.label == 1 for e in entries)
    n_neg = len(entries) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 1.0
    return n_neg / n_pos


# --------------------------------------------------------------------------------------- datasets


def preprocess_cache_dir(datalist: Datalist, cfg: DataConfig) -> Path:
    """Where the preprocessed samples of this export live on disk.

    The folder name is a hash of everything the cached samples depend on: the cohort hash (spec and
    matched objects), the export's ECG rate and length, the preprocessing settings of the cached
    chain and the cache format. A change of any of them gives a new folder (the old one is never
    read again); the split, seed, statistics and training settings do not enter it.
    """
    key = json.dumps({"cohort_hash": datalist.cohort_hash, "ecg_sampling_rate": datalist.ecg_sampling_rate,
                      "ecg_samples": datalist.ecg_samples, "preprocess": cfg.preprocess.cache_settings(),
                      "format": CACHE_FORMAT}, sort_keys=True)
    root = cfg.cache_root if cfg.cache_root is not None else datalist.root / CACHE_DIR
    return Path(root) / hashlib.sha256(key.encode()).hexdigest()[:20]


def preprocessed_dataset(datalist: Datalist, entries: Sequence[DatalistEntry], cfg: DataConfig) -> Dataset:
    """Samples of ``entries`` after the statistics-free chain (:func:`~fl_client.transforms.cached_transforms`).

    With ``cfg.persistent`` the chain runs once per patient and export (MONAI ``PersistentDataset``);
    with ``cfg.cache`` the samples are also held in memory (``CacheDataset``), so epochs read tensors.
    """
    samples = [e.to_sample() for e in entries]
    chain = cached_transforms(cfg.preprocess, datalist.ecg_sampling_rate)
    if cfg.persistent:
        directory = preprocess_cache_dir(datalist, cfg)
        directory.mkdir(parents=True, exist_ok=True)
        on_disk: Dataset = PersistentDataset(samples, chain, cache_dir=directory)
        if not cfg.cache:
            return on_disk
        return CacheDataset(on_disk, transform=None, num_workers=cfg.cache_workers, progress=False)  # type: ignore[arg-type]
    if cfg.cache:
        return CacheDataset(samples, chain, num_workers=cfg.cache_workers, progress=False)
    return Dataset(samples, chain)


def training_moments(datalist: Datalist, train: Sequence[DatalistEntry], train_samples: Dataset) -> SiteMoments:
    """Moments of the training split: its tabular rows and its preprocessed samples (``train_samples``)."""
    return site_moments([e.tabular for e in train], [f.unit for f in datalist.tabular_features],
                        (train_samples[i] for i in range(len(train_samples))))


def site_norm_stats(datalist: Datalist, train: Sequence[DatalistEntry], train_samples: Dataset) -> NormStats:
    """Normalisation statistics of this site's own training split (the non-federated fallback)."""
    m = training_moments(datalist, train, train_samples)
    return norm_stats(m.tabular, m.ecg)


def build_datasets(datalist: Datalist, cfg: DataConfig | None = None,
                   stats: NormStats | None = None) -> tuple[Dataset, Dataset]:
    """Split the datalist and build the training and validation datasets.

    Args:
        datalist: The site's cohort export.
        cfg: Split, preprocessing and cache settings.
        stats: Normalisation statistics (the consortium's, from the coordinator). None: computed from
            this site's training split, so validation values never leak into preprocessing.
    """
    cfg = cfg or DataConfig()
    train, val = split_train_val(datalist.entries, cfg.val_fraction, cfg.seed)
    train_pre = preprocessed_dataset(datalist, train, cfg)
    val_pre = preprocessed_dataset(datalist, val, cfg)
    if stats is None:
        stats = site_norm_stats(datalist, train, train_pre)
    tail = normalize_transforms(cfg.preprocess, stats.tabular, stats.ecg)
    return Dataset(train_pre, tail), Dataset(val_pre, tail)  # type: ignore[arg-type]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A MONAI DataLoader whose shuffling order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator)
