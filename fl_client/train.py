"""Local training and evaluation of :class:`~fl_client.model.MultiModalNet` on one site's data.

Sample counts (not batch counts) are returned so FedAvg can weight sites correctly. Class imbalance
is handled by the loss (``TrainConfig.loss``): BCE with ``pos_weight = n_negative / n_positive`` of the
site's own training split, or MONAI's alpha-balanced focal loss with ``alpha = n_negative / n``.
FedProx adds ``mu / 2 * ||w - w_global||^2`` to the loss when ``proximal_mu > 0``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cohort.errors import ConfigError
from fl_client.transforms import (
    CT_KEY,
    CT_PRESENT_KEY,
    ECG_KEY,
    ECG_PRESENT_KEY,
    LABEL_KEY,
    TABULAR_KEY,
    TABULAR_MISSING_KEY,
)

__all__ = [
    "DECISION_THRESHOLD", "LOSSES", "BinaryMetrics", "EvalStats", "TrainConfig", "TrainStats", "binary_metrics",
    "evaluate", "predict", "resolve_device", "roc_auc", "seed_everything", "train",
]

# Default operating point of the reported threshold metrics: where both classes weigh equally for a model
# trained with pos_weight = n_neg / n_pos. A site passes its own (fl_client.local.TrainingSettings.
# decision_threshold): the training prevalence for an unweighted model.
DECISION_THRESHOLD = 0.5
LOSSES = ("weighted_bce", "focal")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one local training call.

    ``batch_size`` and ``num_workers`` are for building the loader (:func:`fl_client.data.make_loader`);
    :func:`train` uses the loader it is given.

    Attributes:
        epochs: Passes over the local training set per call (per federated round).
        batch_size: Samples per optimizer step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        seed: Seed of torch, numpy and random before training (dropout, shuffling).
        num_workers: DataLoader worker processes (0: load in the main process).
        loss: "weighted_bce" (BCE with the positive class weighted by n_neg / n_pos) or "focal"
            (alpha-balanced focal loss, ``focal_gamma``).
        focal_gamma: Focusing parameter of the focal loss.
        proximal_mu: FedProx proximal weight (0: plain local training).
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    loss: Literal["weighted_bce", "focal"] = "weighted_bce"
    focal_gamma: float = 2.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs={self.epochs} and batch_size={self.batch_size} must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr={self.lr} must be > 0 and weight_decay={self.weight_decay} >= 0")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r} is not valid; choose one of {LOSSES}")
        if self.focal_gamma < 0 or self.proximal_mu < 0:
            raise ConfigError(f"focal_gamma={self.focal_gamma} and proximal_mu={self.proximal_mu} must be >= 0")


@dataclass(frozen=True)
class TrainStats:
    """Result of :func:`train`.

    Attributes:
        num_samples: Training samples in one epoch (the FedAvg weight; not multiplied by epochs).
        loss: Mean per-sample training loss of the last epoch.
        epoch_losses: Mean per-sample loss of every epoch, in order.
        data_seconds: Wall time spent waiting for batches (loading, transforms, collation).
        step_seconds: Wall time of forward, backward and optimizer steps.
    """

    num_samples: int
    loss: float
    epoch_losses: tuple[float, ...] = field(default_factory=tuple)
    data_seconds: float = 0.0
    step_seconds: float = 0.0

    @property
    def model_share(self) -> float:
        """Share of the training time spent in the model (forward + backward + step)."""
        total = self.data_seconds + self.step_seconds
        return self.step_seconds / total if total > 0 else math.nan


@dataclass(frozen=True)
class BinaryMetrics:
    """Threshold metrics of binary predictions; None where undefined (a class is absent)."""

    threshold: float
    balanced_accuracy: float | None
    sensitivity: float | None
    specificity: float | None


@dataclass(frozen=True)
class EvalStats:
    """Result of :func:`evaluate`.

    Metrics at ``threshold`` are the reported ones. ``at_prevalence`` uses the
    threshold that flags as many patients positive as the split has positives; it is chosen on the
    evaluated labels themselves, so it is an optimistic diagnostic, not an unbiased estimate.

    Attributes:
        num_samples: Samples evaluated.
        loss: Mean unweighted BCE loss (NaN when there are no samples).
        auroc: Area under the ROC curve; None when only one class is present.
        balanced_accuracy: Mean of sensitivity and specificity at ``threshold`` (of the defined ones).
        sensitivity: True positive rate at ``threshold``; None without positives.
        specificity: True negative rate at ``threshold``; None without negatives.
        probabilities: Predicted probabilities, in loader order.
        labels: True labels (0/1), in loader order.
        at_prevalence: The same threshold metrics at the prevalence-matched threshold.
        threshold: The operating point of the reported metrics (:data:`DECISION_THRESHOLD` by default).
    """

    num_samples: int
    loss: float
    auroc: float | None
    balanced_accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    probabilities: np.ndarray
    labels: np.ndarray
    at_prevalence: BinaryMetrics | None
    threshold: float = DECISION_THRESHOLD


# ------------------------------------------------------------------------------------------ helpers


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; other strings are passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r} is not valid; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so a training call is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    keys = (CT_KEY, ECG_KEY, TABULAR_KEY, TABULAR_MISSING_KEY, CT_PRESENT_KEY, ECG_PRESENT_KEY)
    return {k: torch.as_tensor(batch[k]).to(device, dtype=torch.float32) for k in keys}


def _labels(batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(batch[LABEL_KEY]).to(device, dtype=torch.float32).reshape(-1)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------- training


class _Loss(nn.Module):
    """The configured classification loss over logits ``(B,)`` and 0/1 labels ``(B,)``."""

    def __init__(self, cfg: TrainConfig, pos_weight: float, device: torch.device) -> None:
        super().__init__()
        self.kind = cfg.loss
        if cfg.loss == "focal":
            from monai.losses import FocalLoss

            # pos_weight = n_neg / n_pos  ->  alpha = n_neg / n, the weight of the positive class.
            alpha = pos_weight / (1.0 + pos_weight)
            self.fn: nn.Module = FocalLoss(gamma=cfg.focal_gamma, alpha=alpha, use_softmax=False, reduction="mean")
        else:
            self.fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight), device=device))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "focal":
            return self.fn(logits.reshape(-1, 1), labels.reshape(-1, 1))
        return self.fn(logits, labels)


def _proximal_term(model: nn.Module, anchor: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))  # type: ignore[return-value]


def train(model: nn.Module, loader: Iterable[Mapping[str, Any]], cfg: TrainConfig,
          pos_weight: float = 1.0) -> TrainStats:
    """Train ``model`` in place for ``cfg.epochs`` epochs with AdamW and the configured loss.

    Args:
        model: The model, holding the global weights of the round; moved to the configured device.
        loader: Yields batches with the keys of :func:`fl_client.transforms.site_transforms`.
        cfg: Training settings (``proximal_mu > 0``: FedProx, anchored at the weights ``model`` has now).
        pos_weight: ``n_negative / n_positive`` of the training split, e.g.
            :func:`fl_client.data.positive_weight`.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = _Loss(cfg, pos_weight, device)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    epoch_losses: list[float] = []
    num_samples = 0
    data_s = step_s = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.epochs):
        total, count = 0.0, 0
        t_data = time.perf_counter()
        for batch in loader:
            labels = _labels(batch, device)
            inputs = _model_inputs(batch, device)
            sync()
            t_step = time.perf_counter()
            data_s += t_step - t_data
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(**inputs), labels)
            if anchor is not None:
                loss = loss + cfg.proximal_mu / 2.0 * _proximal_term(model, anchor)
            loss.backward()
            optimizer.step()
            total += loss.item() * labels.numel()  # .item() synchronizes the device
            count += labels.numel()
            t_data = time.perf_counter()
            step_s += t_data - t_step
        num_samples = count
        epoch_losses.append(total / count if count else math.nan)
    return TrainStats(num_samples=num_samples, loss=epoch_losses[-1], epoch_losses=tuple(epoch_losses),
                      data_seconds=data_s, step_seconds=step_s)


@torch.no_grad()
def _logits_and_labels(model: nn.Module, loader: Iterable[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    device = _model_device(model)
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(**_model_inputs(batch, device)).double().cpu())
        labels.append(_labels(batch, device).double().cpu())
    if not logits:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(logits), torch.cat(labels)


def predict(model: nn.Module, loader: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and 0/1 labels for every sample of ``loader``, on the model's current device."""
    logits, labels = _logits_and_labels(model, loader)
    return torch.sigmoid(logits).numpy(), labels.round().long().numpy()


# ----------------------------------------------------------------------------------------- metrics


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Tied scores share the mean of the ranks they span.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):
        ranks[order[start:start + n]] = start + (n + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> BinaryMetrics:
    """Sensitivity, specificity and balanced accuracy of ``scores >= threshold``."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    sens = float((predicted & labels).sum() / n_pos) if n_pos else None
    spec = float((~predicted & ~labels).sum() / n_neg) if n_neg else None
    defined = [v for v in (sens, spec) if v is not None]
    bacc = float(np.mean(defined)) if defined else None
    return BinaryMetrics(threshold=threshold, balanced_accuracy=bacc, sensitivity=sens, specificity=spec)


def _prevalence_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    n_pos = int(np.asarray(labels).sum())
    if n_pos == 0 or n_pos == labels.size:
        return None
    # The n_pos-th highest score: flagging everything at or above it matches the prevalence (up to ties).
    return float(np.sort(scores)[::-1][n_pos - 1])


def evaluate(model: nn.Module, loader: Iterable[Mapping[str, Any]],
             threshold: float = DECISION_THRESHOLD) -> EvalStats:
    """Evaluate on the model's current device; threshold metrics at ``threshold`` (see :class:`EvalStats`)."""
    logits, label_t = _logits_and_labels(model, loader)
    probs, labels = torch.sigmoid(logits).numpy(), label_t.round().long().numpy()
    if probs.size == 0:
        return EvalStats(0, math.nan, None, None, None, None, probs, labels, None, threshold)
    # From logits, not probabilities: stays finite and exact for confident predictions.
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, label_t))
    main = binary_metrics(labels, probs, threshold)
    prev_t = _prevalence_threshold(labels, probs)
    at_prev = binary_metrics(labels, probs, prev_t) if prev_t is not None else None
    return EvalStats(num_samples=int(probs.size), loss=loss, auroc=roc_auc(labels, probs),
                     balanced_accuracy=main.balanced_accuracy, sensitivity=main.sensitivity,
                     specificity=main.specificity, probabilities=probs, labels=labels,
                     at_prevalence=at_prev, threshold=threshold)
