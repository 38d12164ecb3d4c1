"""MONAI transforms that turn one datalist entry (paths and values) into model-ready tensors.

Every modality ends up as a fixed-shape float tensor plus a presence flag, so that batches of patients
with different coverage (no CT, no ECG, missing tabular values) collate and the model can ignore what
is absent. The CT chain is stock MONAI; the ECG and tabular steps are small custom transforms, each an
array transform with a dictionary twin.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    Transform,
)
from scipy.signal import resample_poly

from cohort.errors import ConfigError, InputError

__all__ = [
    "CT_KEY", "CT_PRESENT_KEY", "ECG_KEY", "ECG_PRESENT_KEY", "LABEL_KEY", "TABULAR_KEY",
    "TABULAR_MISSING_KEY", "ECG_LEADS",
    "ECG_SCALINGS", "EcgStats", "IfPresentd", "PreprocessConfig", "TabularStats",
    "LoadECG", "LoadECGd", "ScaleECG", "ScaleECGd", "ResampleECG", "ResampleECGd",
    "FixLengthECG", "FixLengthECGd", "ImputeStandardize", "ImputeStandardized",
    "MissingModalityd", "cached_transforms", "ct_transforms", "ecg_transforms", "normalize_transforms",
    "site_transforms",
]

# Keys of the sample dictionaries: the datalist's own keys plus the ones these transforms add.
CT_KEY = "ct"
ECG_KEY = "ecg"
TABULAR_KEY = "tabular"
LABEL_KEY = "label"
CT_PRESENT_KEY = "ct_present"
ECG_PRESENT_KEY = "ecg_present"
TABULAR_MISSING_KEY = "tabular_missing"

ECG_LEADS = 12
ECG_SCALINGS = ("standardize", "fixed", "consortium")


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the preprocessing chain; every site of a run must use the same values.

    Attributes:
        ct_spacing: Target voxel spacing in mm (isotropic).
        ct_shape: Output CT shape (x, y, z) after resampling.
        ct_fit: "crop_pad" keeps the physical scale (centre crop / zero pad); "resize" interpolates the
            resampled volume to ``ct_shape`` (whole field of view, scale distorted).
        hu_window: HU range mapped linearly onto 0..1 (values outside are clipped).
        ecg_rate: Output ECG sampling rate in Hz; must divide into the source rate by a rational factor.
        ecg_seconds: Output ECG length in seconds (crop at the end / zero pad at the end).
        ecg_scaling: "standardize" (per recording and lead: zero mean, unit variance), "fixed" (divide
            by ``ecg_mv_scale``) or "consortium" (per lead, with the consortium-wide mean and standard
            deviation of :class:`EcgStats`, so amplitudes stay comparable across patients and sites).
        ecg_mv_scale: Divisor in mV for ``ecg_scaling="fixed"``.
    """

    ct_spacing: float = 1.5
    ct_shape: tuple[int, int, int] = (32, 32, 32)
    ct_fit: Literal["crop_pad", "resize"] = "crop_pad"
    hu_window: tuple[float, float] = (-200.0, 1000.0)
    ecg_rate: int = 250
    ecg_seconds: float = 10.0
    ecg_scaling: Literal["standardize", "fixed", "consortium"] = "standardize"
    ecg_mv_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.ct_fit not in ("crop_pad", "resize"):
            raise ConfigError(f"ct_fit={self.ct_fit!r} is not valid; choose 'crop_pad' or 'resize'")
        if self.ecg_scaling not in ECG_SCALINGS:
            raise ConfigError(f"ecg_scaling={self.ecg_scaling!r} is not valid; choose one of {ECG_SCALINGS}")
        if self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"hu_window={self.hu_window} must be (low, high) with low < high")
        if self.ct_spacing <= 0 or self.ecg_rate <= 0 or self.ecg_seconds <= 0 or self.ecg_mv_scale <= 0:
            raise ConfigError("ct_spacing, ecg_rate, ecg_seconds and ecg_mv_scale must be positive")

    @property
    def ecg_length(self) -> int:
        """Number of ECG samples per lead after preprocessing."""
        return round(self.ecg_rate * self.ecg_seconds)

    def cache_settings(self) -> dict[str, Any]:
        """The settings the cached (per-patient, statistics-free) part of the chain depends on."""
        return {"ct_spacing": self.ct_spacing, "ct_shape": list(self.ct_shape), "ct_fit": self.ct_fit,
                "hu_window": list(self.hu_window), "ecg_rate": self.ecg_rate, "ecg_seconds": self.ecg_seconds}


# ---------------------------------------------------------------------------------------------- ECG


class LoadECG(Transform):
    """Load a 12-lead ECG saved as a ``(12, samples)`` float array in mV from a ``.npy`` file."""

    def __call__(self, path: str | Path) -> np.ndarray:
        # allow_pickle=False: a datalist file must never be able to run code on the site.
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[0] != ECG_LEADS:
            raise InputError(f"ECG array has shape {arr.shape}; expected ({ECG_LEADS}, samples) in lead "
                             "order I, II, III, aVR, aVL, aVF, V1-V6", path=str(path))
        return np.ascontiguousarray(arr, dtype=np.float32)


class ScaleECG(Transform):
    """Scale an ECG: per recording and lead to zero mean and unit variance, by a fixed mV value, or per
    lead with consortium-wide statistics (``mode="consortium"``, needs ``stats``)."""

    def __init__(self, mode: Literal["standardize", "fixed", "consortium"] = "standardize", mv_scale: float = 1.0,
                 stats: EcgStats | None = None) -> None:
        if mode == "consortium" and stats is None:
            raise ConfigError("ecg_scaling='consortium' needs the consortium's ECG statistics (EcgStats)")
        self.mode = mode
        self.mv_scale = mv_scale
        self.stats = stats

    def __call__(self, ecg: np.ndarray | torch.Tensor) -> np.ndarray:
        ecg = np.asarray(ecg)
        if self.mode == "fixed":
            return (ecg / self.mv_scale).astype(np.float32)
        if self.mode == "consortium":
            assert self.stats is not None
            means = np.asarray(self.stats.means, dtype=np.float32)[:, None]
            stds = np.asarray(self.stats.stds, dtype=np.float32)[:, None]
            return ((ecg - means) / stds).astype(np.float32)
        x = ecg.astype(np.float64)
        mean = x.mean(axis=-1, keepdims=True)
        std = x.std(axis=-1, keepdims=True)
        # A flat (disconnected) lead would otherwise be blown up to rounding noise or NaN; 0.1 uV is far
        # below the noise floor of any real recording.
        std = np.where(std < 1e-4, 1.0, std)
        return ((x - mean) / std).astype(np.float32)


class ResampleECG(Transform):
    """Resample an ECG along time with a polyphase anti-aliasing filter (e.g. 500 Hz -> 250 Hz)."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        g = gcd(int(source_rate), int(target_rate))
        self.up = int(target_rate) // g
        self.down = int(source_rate) // g

    def __call__(self, ecg: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return ecg
        return resample_poly(ecg, self.up, self.down, axis=-1).astype(np.float32)


class FixLengthECG(Transform):
    """Keep the first ``length`` samples of each lead, zero-padding shorter recordings at the end."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, ecg: np.ndarray) -> np.ndarray:
        n = ecg.shape[-1]
        if n >= self.length:
            return ecg[..., : self.length]
        out = np.zeros((*ecg.shape[:-1], self.length), dtype=ecg.dtype)
        out[..., :n] = ecg
        return out


class _ArrayTwind(MapTransform):
    """Dictionary twin that applies one array transform to each key."""

    def __init__(self, keys: KeysCollection, transform: Callable[[Any], Any]) -> None:
        super().__init__(keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class LoadECGd(_ArrayTwind):
    """Dictionary twin of :class:`LoadECG`."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys, LoadECG())


class ScaleECGd(_ArrayTwind):
    """Dictionary twin of :class:`ScaleECG`."""

    def __init__(self, keys: KeysCollection, mode: Literal["standardize", "fixed", "consortium"] = "standardize",
                 mv_scale: float = 1.0, stats: EcgStats | None = None) -> None:
        super().__init__(keys, ScaleECG(mode, mv_scale, stats))


class ResampleECGd(_ArrayTwind):
    """Dictionary twin of :class:`ResampleECG`."""

    def __init__(self, keys: KeysCollection, source_rate: int, target_rate: int) -> None:
        super().__init__(keys, ResampleECG(source_rate, target_rate))


class FixLengthECGd(_ArrayTwind):
    """Dictionary twin of :class:`FixLengthECG`."""

    def __init__(self, keys: KeysCollection, length: int) -> None:
        super().__init__(keys, FixLengthECG(length))


# ------------------------------------------------------------------------------------------ tabular


@dataclass(frozen=True)
class EcgStats:
    """Per-lead mean and standard deviation (mV) of preprocessed ECG samples, for ``ecg_scaling="consortium"``."""

    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.means) != ECG_LEADS or len(self.stds) != ECG_LEADS:
            raise ConfigError(f"EcgStats needs {ECG_LEADS} means and stds, got {len(self.means)} and {len(self.stds)}")


@dataclass(frozen=True)
class TabularStats:
    """Per-feature mean and standard deviation used to impute and standardize tabular values.

    Fit them on the training split only, so validation values never leak into preprocessing.
    """

    means: tuple[float, ...]
    stds: tuple[float, ...]

    @classmethod
    def fit(cls, rows: Sequence[Sequence[float | None]], n_features: int) -> TabularStats:
        """Compute statistics over the non-missing values of each feature.

        A feature that is missing in every row gets mean 0 and std 1; a constant feature gets std 1.
        """
        table = np.full((len(rows), n_features), np.nan, dtype=np.float64)
        for i, row in enumerate(rows):
            table[i] = [np.nan if v is None else float(v) for v in row]
        counts = (~np.isnan(table)).sum(axis=0)
        means = np.zeros(n_features)
        stds = np.ones(n_features)
        seen = counts > 0
        means[seen] = np.nanmean(table[:, seen], axis=0)
        spread = np.zeros(n_features)
        spread[seen] = np.nanstd(table[:, seen], axis=0)
        stds[spread > 1e-12] = spread[spread > 1e-12]
        return cls(tuple(means.tolist()), tuple(stds.tolist()))


class ImputeStandardize(Transform):
    """Replace missing values by the training mean, standardize, and return a missingness indicator.

    Returns ``(values, missing)``: two float32 tensors of length n_features, where a missing value
    becomes 0 (the standardized mean) and its indicator 1.
    """

    def __init__(self, stats: TabularStats) -> None:
        self.means = np.asarray(stats.means, dtype=np.float64)
        self.stds = np.asarray(stats.stds, dtype=np.float64)

    def __call__(self, row: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(row) != len(self.means):
            raise InputError(f"tabular row has {len(row)} values; the statistics have {len(self.means)}",
                             field=TABULAR_KEY)
        values = np.array([np.nan if v is None else float(v) for v in row], dtype=np.float64)
        missing = np.isnan(values)
        values = np.where(missing, self.means, values)
        z = (values - self.means) / self.stds
        return torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(missing, dtype=torch.float32)


class ImputeStandardized(MapTransform):
    """Dictionary twin of :class:`ImputeStandardize`; writes the indicator to ``missing_key``."""

    def __init__(self, key: str, stats: TabularStats, missing_key: str = TABULAR_MISSING_KEY) -> None:
        super().__init__([key])
        self.transform = ImputeStandardize(stats)
        self.missing_key = missing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.missing_key] = self.transform(d[key])
        return d


# --------------------------------------------------------------------------------- missing modality


class MissingModalityd(MapTransform):
    """Run a modality's chain when its path is set; otherwise put a zero tensor there.

    Writes ``flag_key`` = 1.0 (present) or 0.0 (absent), so the model can drop the modality and
    batches of mixed coverage still collate.
    """

    def __init__(self, key: str, transform: Callable[[dict[Hashable, Any]], dict[Hashable, Any]],
                 empty_shape: Sequence[int], flag_key: str) -> None:
        super().__init__([key], allow_missing_keys=True)
        self.key = key
        self.transform = transform
        self.empty_shape = tuple(empty_shape)
        self.flag_key = flag_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.key) is None:
            d[self.key] = torch.zeros(self.empty_shape, dtype=torch.float32)
            d[self.flag_key] = torch.tensor(0.0)
            return d
        d = dict(self.transform(d))
        d[self.flag_key] = torch.tensor(1.0)
        return d


# ---------------------------------------------------------------------------------------- pipelines


def ct_transforms(cfg: PreprocessConfig, key: str = CT_KEY) -> Compose:
    """CT chain: NIfTI -> channel-first RAS volume at ``ct_spacing`` mm, HU window to 0..1, fixed shape."""
    low, high = cfg.hu_window
    fit: MapTransform
    if cfg.ct_fit == "resize":
        fit = Resized(key, spatial_size=cfg.ct_shape, mode="trilinear")
    else:
        # Pad with 0 after windowing: that is air/below-window, the same as outside the body.
        fit = ResizeWithPadOrCropd(key, spatial_size=cfg.ct_shape, mode="constant")
    return Compose([
        LoadImaged(key, reader="NibabelReader", image_only=True, ensure_channel_first=True),
        # Labels pinned: NIfTI affines are RAS-based world coordinates, whatever MONAI's future default.
        Orientationd(key, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(key, pixdim=(cfg.ct_spacing,) * 3, mode="bilinear", dtype=np.float32),
        ScaleIntensityRanged(key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        fit,
        # Plain tensors: MetaTensor and Tensor samples (absent CT) must not mix in one batch.
        EnsureTyped(key, dtype=torch.float32, track_meta=False),
    ])


def ecg_transforms(cfg: PreprocessConfig, source_rate: int, key: str = ECG_KEY) -> Compose:
    """ECG chain: ``.npy`` in mV -> resampled, fixed-length ``(12, ecg_length)`` tensor in mV.

    Scaling is not part of it: it may need consortium statistics (:func:`normalize_transforms`).
    """
    return Compose([
        LoadECGd(key),
        ResampleECGd(key, source_rate, cfg.ecg_rate),
        FixLengthECGd(key, cfg.ecg_length),
        EnsureTyped(key, dtype=torch.float32, track_meta=False),
    ])


class IfPresentd(MapTransform):
    """Apply a dictionary transform only when the sample's presence flag is set (see MissingModalityd)."""

    def __init__(self, flag_key: str, transform: Callable[[dict[Hashable, Any]], dict[Hashable, Any]]) -> None:
        super().__init__([flag_key])
        self.flag_key = flag_key
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        return dict(self.transform(d)) if float(d[self.flag_key]) > 0 else d


def cached_transforms(cfg: PreprocessConfig, ecg_source_rate: int) -> Compose:
    """The per-patient part of the chain that depends on no statistics: what the cache stores.

    CT: loaded, reoriented, resampled, windowed and fitted to ``ct_shape``; ECG: loaded, resampled and
    fixed in length, still in mV. Tabular values and the label pass through unchanged.
    """
    return Compose([
        MissingModalityd(CT_KEY, ct_transforms(cfg), (1, *cfg.ct_shape), CT_PRESENT_KEY),
        MissingModalityd(ECG_KEY, ecg_transforms(cfg, ecg_source_rate), (ECG_LEADS, cfg.ecg_length),
                         ECG_PRESENT_KEY),
        EnsureTyped(LABEL_KEY, dtype=torch.float32, track_meta=False),
    ])


def normalize_transforms(cfg: PreprocessConfig, stats: TabularStats, ecg_stats: EcgStats | None = None) -> Compose:
    """The statistics-dependent tail, applied after the cache: ECG scaling and tabular imputation."""
    return Compose([
        IfPresentd(ECG_PRESENT_KEY, Compose([ScaleECGd(ECG_KEY, cfg.ecg_scaling, cfg.ecg_mv_scale, ecg_stats),
                                             EnsureTyped(ECG_KEY, dtype=torch.float32, track_meta=False)])),
        ImputeStandardized(TABULAR_KEY, stats),
    ])


def site_transforms(cfg: PreprocessConfig, stats: TabularStats, ecg_source_rate: int,
                    ecg_stats: EcgStats | None = None) -> Compose:
    """The whole per-sample chain for datalist entries with keys ct, ecg, tabular and label.

    Args:
        cfg: Preprocessing settings shared by all sites.
        stats: Tabular statistics (the site's training split, or the consortium's).
        ecg_source_rate: Sampling rate of the exported ECG arrays (datalist ``ecg_sampling_rate``).
        ecg_stats: Per-lead ECG statistics, required for ``ecg_scaling="consortium"``.

    Returns:
        A Compose producing ``ct (1, *ct_shape)``, ``ct_present``, ``ecg (12, ecg_length)``,
        ``ecg_present``, ``tabular (F,)``, ``tabular_missing (F,)`` and a float ``label``.
    """
    return Compose([cached_transforms(cfg, ecg_source_rate), normalize_transforms(cfg, stats, ecg_stats)])
