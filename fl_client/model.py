"""The shared multi-modal model: CT, 12-lead ECG and tabular encoders with late fusion to one logit.

Normalization is GroupNorm rather than BatchNorm: it has no running statistics, so the state dict
holds only learnable weights (FedAvg averages everything it is sent) and it works with the tiny,
mixed-coverage batches a small site produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cohort.errors import ConfigError
from fl_client.transforms import ECG_LEADS

__all__ = ["ModelConfig", "MultiModalNet", "get_weights", "set_weights"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of :class:`MultiModalNet`; the defaults give a CPU-friendly model (~38k parameters).

    Attributes:
        n_tabular: Length of the tabular vector (datalist ``tabular_features``).
        ct_channels: Output channels of the 3D conv blocks (each halves the resolution).
        ecg_channels: Output channels of the 1D conv blocks (each quarters the length).
        ecg_kernel: Temporal kernel size of the ECG convolutions (odd).
        tabular_hidden: Hidden width of the tabular MLP.
        embed_dim: Size of each modality's embedding.
        fusion_hidden: Hidden width of the fusion head.
        dropout: Dropout before the output layer.
        linear: Instead of the network, logistic regression on the tabular features and their
            missingness indicators (one logit = w . [values, missing] + b): the transparent baseline,
            trained and federated through exactly the same code path (``configs/model/linear.yaml``).
    """

    n_tabular: int = 8
    ct_channels: tuple[int, ...] = (8, 16, 32)
    ecg_channels: tuple[int, ...] = (16, 32, 32)
    ecg_kernel: int = 7
    tabular_hidden: int = 32
    embed_dim: int = 32
    fusion_hidden: int = 32
    dropout: float = 0.1
    linear: bool = False

    def __post_init__(self) -> None:
        if self.n_tabular < 0:
            raise ConfigError(f"n_tabular={self.n_tabular} must be >= 0")
        if not self.ct_channels or not self.ecg_channels:
            raise ConfigError("ct_channels and ecg_channels need at least one block each")
        if self.ecg_kernel % 2 == 0:
            raise ConfigError(f"ecg_kernel={self.ecg_kernel} must be odd so padding keeps samples centred")


def _groups(channels: int) -> int:
    # Largest of 8, 4, 2, 1 that divides the channel count.
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class CTEncoder(nn.Module):
    """3D conv blocks (conv, GroupNorm, ReLU, stride-2 downsampling) and global average pooling."""

    def __init__(self, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv3d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(_groups(c), c), nn.ReLU()]
            c_in = c
        self.blocks = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.proj = nn.Linear(c_in, embed_dim)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` -> ``(B, embed_dim)``."""
        return torch.relu(self.proj(self.blocks(ct)))


class ECGEncoder(nn.Module):
    """1D conv blocks over the 12 leads (conv, GroupNorm, ReLU, max-pool 4) and global pooling.

    Global max and mean pooling together keep both "is there a wide complex anywhere" and overall
    level information, independent of the recording length.
    """

    def __init__(self, channels: Sequence[int], kernel: int, embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = ECG_LEADS
        for c in channels:
            layers += [nn.Conv1d(c_in, c, kernel, padding=kernel // 2), nn.GroupNorm(_groups(c), c), nn.ReLU(),
                       nn.MaxPool1d(4, ceil_mode=True)]
            c_in = c
        self.blocks = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in, embed_dim)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        """``(B, 12, T)`` -> ``(B, embed_dim)``."""
        h = self.blocks(ecg)
        return torch.relu(self.proj(torch.cat([h.amax(dim=-1), h.mean(dim=-1)], dim=1)))


class TabularEncoder(nn.Module):
    """MLP over the standardized values concatenated with their missingness indicators."""

    def __init__(self, n_features: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * n_features, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim),
                                 nn.ReLU())

    def forward(self, values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """``(B, F)``, ``(B, F)`` -> ``(B, embed_dim)``."""
        return self.net(torch.cat([values, missing], dim=1))


class MultiModalNet(nn.Module):
    """Late-fusion binary classifier; returns one logit per patient.

    An absent modality's embedding is multiplied by its presence flag (0), so the zero placeholder
    volume or waveform cannot leak into the prediction; the flags also enter the head, so it can
    recalibrate when a modality is missing.
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ModelConfig()
        c = self.cfg
        if c.linear:
            self.logistic = nn.Linear(2 * c.n_tabular, 1)
            return
        self.ct = CTEncoder(c.ct_channels, c.embed_dim)
        self.ecg = ECGEncoder(c.ecg_channels, c.ecg_kernel, c.embed_dim)
        self.tabular = TabularEncoder(c.n_tabular, c.tabular_hidden, c.embed_dim)
        self.head = nn.Sequential(nn.Linear(3 * c.embed_dim + 2, c.fusion_hidden), nn.ReLU(),
                                  nn.Dropout(c.dropout), nn.Linear(c.fusion_hidden, 1))

    def forward(self, ct: torch.Tensor, ecg: torch.Tensor, tabular: torch.Tensor, tabular_missing: torch.Tensor,
                ct_present: torch.Tensor, ecg_present: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B,)``; presence flags are ``(B,)`` tensors of 0.0 / 1.0."""
        if self.cfg.linear:
            return self.logistic(torch.cat([tabular, tabular_missing], dim=1)).squeeze(1)
        ct_flag = ct_present.reshape(-1, 1).to(ct.dtype)
        ecg_flag = ecg_present.reshape(-1, 1).to(ecg.dtype)
        fused = torch.cat([
            self.ct(ct) * ct_flag,
            self.ecg(ecg) * ecg_flag,
            self.tabular(tabular, tabular_missing),
            ct_flag,
            ecg_flag,
        ], dim=1)
        return self.head(fused).squeeze(1)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state dict values as numpy arrays, in state-dict order (the FedAvg wire order)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` (of a model with the same ModelConfig).

    Raises:
        ConfigError: The count or a shape differs, i.e. server and site use different model settings.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ConfigError(f"got {len(weights)} arrays but the model has {len(state)} tensors; "
                          "server and site must use the same ModelConfig")
    new_state = {}
    for (name, current), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise ConfigError(f"weight {name!r} has shape {tuple(array.shape)}, model expects "
                              f"{tuple(current.shape)}; server and site must use the same ModelConfig")
        new_state[name] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state, strict=True)
