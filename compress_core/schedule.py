"""Learning-rate schedules and evaluation metrics (numpy), shared by every method."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from compress_core.errors import UserError


def learning_rate(epoch: int, base_lr: float, schedule: str = "step", epochs: int = 1,
                  milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Learning rate for ``epoch`` (0-based).

    ``step``: ``base_lr * gamma ** (number of milestones <= epoch)`` (the CDC
    reference drops at epochs 80 and 160); ``cosine``:
    ``0.5 * base_lr * (1 + cos(pi * epoch / epochs))``; ``constant``.
    """
    if schedule == "step":
        return base_lr * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "constant":
        return base_lr
    raise UserError(f"unknown learning-rate schedule '{schedule}' (step, cosine, constant)")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``logits`` against ``labels``."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if len(logits) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    ce = -log_softmax(logits)[np.arange(len(labels)), labels].mean()
    return {"accuracy": 100.0 * float((logits.argmax(1) == labels).mean()), "loss": float(ce)}
