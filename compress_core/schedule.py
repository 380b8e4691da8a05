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


def classification_sums(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[correct, sum of cross-entropies, count]`` (float64) of ``logits`` against ``labels``: parts of a
    split add up (the processes of a data-parallel run), :func:`metrics_from_sums` turns them into metrics."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if len(logits) == 0:
        return np.zeros(3)
    ce = -log_softmax(logits)[np.arange(len(labels)), labels].sum()
    return np.array([float((logits.argmax(1) == labels).sum()), ce, float(len(labels))])


def metrics_from_sums(sums: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy from :func:`classification_sums`."""
    correct, ce, n = (float(v) for v in sums)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": 100.0 * correct / n, "loss": ce / n}


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``logits`` against ``labels``."""
    return metrics_from_sums(classification_sums(logits, labels))
