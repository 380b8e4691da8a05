"""Datasets, splits, normalisation, augmentation and batching in plain numpy.

Every backend (PyTorch, TensorFlow, ...) consumes the same numpy batches produced
here, so given the same seed both see byte-identical data in identical order.

Canonical layout: images are ``float32`` arrays of shape ``[N, C, H, W]`` (NCHW),
labels are ``int64`` arrays of shape ``[N]``.

Protocol for honest evaluation: hyper-parameters, early stopping and any model
selection use the *validation* split only; the *test* split is evaluated once,
at the end, and never drives a decision.  Normalisation statistics are computed
on the training split only so that no information leaks from val/test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from compress_core.errors import check

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "synthetic", "imagenet")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set in canonical layout.

    ``x`` is coerced to ``float32 [N, C, H, W]`` and ``y`` to ``int64 [N]``;
    labels must lie in ``[0, num_classes)``.  Invalid contents raise
    :class:`UserError`, because datasets usually come from user-supplied files.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str = ""
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        check(x.ndim == 4, f"dataset {self.name!r}: x must be [N,C,H,W], got shape {x.shape}")
        check(y.ndim == 1, f"dataset {self.name!r}: y must be [N], got shape {y.shape}")
        check(len(x) == len(y), f"dataset {self.name!r}: {len(x)} images but {len(y)} labels")
        check(y.size == 0 or np.issubdtype(y.dtype, np.integer),
              f"dataset {self.name!r}: labels must be integers, got dtype {y.dtype}")
        check(int(self.num_classes) >= 1, f"dataset {self.name!r}: num_classes={self.num_classes} < 1")
        check(y.size == 0 or (y.min() >= 0 and y.max() < self.num_classes),
              f"dataset {self.name!r}: labels must be in [0, {self.num_classes}), "
              f"got range [{y.min() if y.size else 0}, {y.max() if y.size else 0}]")
        if self.class_names is not None:
            check(len(self.class_names) == self.num_classes,
                  f"dataset {self.name!r}: {len(self.class_names)} class names for "
                  f"num_classes={self.num_classes}")
            object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Dataset:
        """Return a new dataset with the samples at ``indices`` (copied)."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, x=self.x[indices], y=self.y[indices])

    def take(self, indices: np.ndarray, rng: np.random.Generator | None = None,
             augment: Augment | None = None, rows: slice | None = None) -> np.ndarray:
        """The images at ``indices`` as a batch, through ``augment(x, rng)`` if given; only ``rows``
        of it when given (the random numbers are still those of the whole batch).

        Every batch of :func:`iterate_batches` is read here, so a lazy dataset
        (:class:`compress_core.data.imagefolder.ImageFolderDataset`) overrides it to
        decode files on demand.
        """
        x = self.x[indices]
        x = augment(x, rng) if augment is not None else x
        return x if rows is None else x[rows]

    def stream(self, batches: Iterable[np.ndarray], rng: np.random.Generator | None = None,
               augment: Augment | None = None, rows: Sequence[slice] | None = None) -> Iterator[np.ndarray]:
        """:meth:`take` of every index array of ``batches`` (``rows[b]`` of batch ``b`` when given), in
        order (what :func:`iterate_batches` reads); a lazy dataset overrides it to decode ahead while
        the caller trains."""
        for b, indices in enumerate(batches):
            yield self.take(indices, rng, augment, None if rows is None else rows[b])


class Splits(NamedTuple):
    """Result of :func:`split`: disjoint train / val / test datasets."""

    train: Dataset
    val: Dataset
    test: Dataset


@dataclass(frozen=True, eq=False)
class DataSplits:
    """What training code needs: normalised splits plus the statistics used.

    ``train``, ``val`` and ``test`` already hold normalised images
    ``(x - mean[c]) / std[c]``; ``mean``/``std`` (``float32 [C]``) were computed on
    the training split only and must be reused for any new data at inference.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    mean: np.ndarray
    std: np.ndarray


# --------------------------------------------------------------------------- statistics


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean, std)`` over ``N, H, W`` of ``x`` (``float32 [C]`` each).

    Call it on the *training* split only.  Accumulates in float64 one channel at
    a time (no full float64 copy of ``x``).  A constant channel gets ``std = 1``
    so that normalising it cannot divide by zero.
    """
    check(x.ndim == 4 and x.shape[0] > 0, f"channel_stats needs non-empty [N,C,H,W], got shape {x.shape}")
    mean = np.empty(x.shape[1], np.float64)
    std = np.empty(x.shape[1], np.float64)
    for c in range(x.shape[1]):
        xc = x[:, c]
        mean[c] = xc.mean(dtype=np.float64)
        d = xc - np.float32(mean[c])
        std[c] = math.sqrt(np.mean(d * d, dtype=np.float64))
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, copy: bool = True) -> np.ndarray:
    """Per-channel standardisation ``(x[:, c] - mean[c]) / std[c]`` of ``[N, C, H, W]``.

    With ``copy=False`` a float32 ``x`` is overwritten in place (saves memory on
    CIFAR-sized arrays).
    """
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    check(x.ndim == 4 and mean.size == x.shape[1] == std.size,
          f"normalize: x shape {x.shape} does not match {mean.size} channel statistics")
    check(bool(np.all(std > 0)), f"normalize: std must be > 0, got {std.ravel()}")
    out = np.array(x, dtype=np.float32, copy=True if copy else None)
    out -= mean
    out /= std
    return out


# --------------------------------------------------------------------------- splitting


def split(dataset: Dataset, val_fraction: float, test_fraction: float = 0.0, seed: int = 0) -> Splits:
    """Deterministic stratified split into disjoint train / val / test covering all samples.

    Within each class ``k`` (with ``n_k`` samples, shuffled by
    ``default_rng(seed)``) ``round(n_k * test_fraction)`` go to test,
    ``round(n_k * val_fraction)`` to val and the rest to train, so every class
    keeps its proportion in every split.  Indices inside each split stay in
    original order.  Select models on ``val``; touch ``test`` only for the final
    report.
    """
    check(0.0 <= val_fraction < 1.0, f"val_fraction must be in [0, 1), got {val_fraction}")
    check(0.0 <= test_fraction < 1.0, f"test_fraction must be in [0, 1), got {test_fraction}")
    check(val_fraction + test_fraction < 1.0,
          f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for k in range(dataset.num_classes):
        idx = rng.permutation(np.flatnonzero(dataset.y == k))
        n_test = math.floor(len(idx) * test_fraction + 0.5)
        n_val = math.floor(len(idx) * val_fraction + 0.5)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return Splits(*(dataset.subset(np.sort(np.concatenate(p))) for p in parts))


# --------------------------------------------------------------------------- augmentation


def random_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image horizontally (``W`` axis) with probability 0.5; returns a new array."""
    flip = rng.random(len(x)) < 0.5
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def random_pad_crop(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Zero-pad by ``pad`` on each side, then crop a random ``H x W`` window per image.

    Offsets ``(dy, dx)`` are drawn uniformly from ``0..2*pad``, so
    ``out[i] = padded[i, :, dy_i:dy_i+H, dx_i:dx_i+W]``; (pad, pad) is the
    identity.  One vectorised gather over a sliding-window view, no per-image
    loop.  On normalised data the zero border equals the channel mean.
    """
    check(pad >= 0, f"pad must be >= 0, got {pad}")
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    return windows[np.arange(n), :, dy, dx]  # [N, C, H, W]


def flip_and_crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Standard CIFAR augmentation: :func:`random_pad_crop` (pad 4) then :func:`random_flip`."""
    return random_flip(random_pad_crop(x, rng), rng)


# --------------------------------------------------------------------------- batching


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch: ``floor(n / b)`` with ``drop_last`` else ``ceil(n / b)``."""
    check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(dataset: Dataset, batch_size: int, shuffle: bool,
                    rng: np.random.Generator | None = None, augment: Augment | None = None,
                    drop_last: bool = False, part: tuple[int, int] = (0, 1),
                    stride: tuple[int, int] = (0, 1)) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` numpy batches covering the dataset once (one epoch).

    The order is ``rng.permutation(N)`` when ``shuffle`` else ``0..N-1``; then
    each batch is passed through ``augment(x, rng)``.  All randomness comes
    from ``rng`` in a fixed order, so two backends given generators with the
    same seed receive byte-identical batches.  ``drop_last`` drops a final
    batch smaller than ``batch_size``.

    Data-parallel shares of process ``k`` of ``m``: ``part=(k, m)`` yields only rows
    ``n*k//m : n*(k+1)//m`` of every batch of ``n`` (random numbers are drawn for the
    whole batch, so the processes' rows put together are the one-process batch);
    ``stride=(k, m)`` yields only batches ``k, k + m, ...`` of an order that uses no
    random numbers.
    """
    n_batches = num_batches(len(dataset), batch_size, drop_last)  # validates eagerly
    check(rng is not None or not (shuffle or augment),
          "iterate_batches: shuffle/augment need a numpy Generator rng, got rng=None")
    for name, (k, m) in (("part", part), ("stride", stride)):
        check(0 <= k < m, f"iterate_batches: {name}={(k, m)} is not (process k, of m > k)")
    check(stride == (0, 1) or not (shuffle or augment), "iterate_batches: stride needs an unshuffled pass")
    return _batches(dataset, batch_size, n_batches, shuffle, rng, augment, part, stride)


def _batches(dataset: Dataset, batch_size: int, n_batches: int, shuffle: bool,
             rng: np.random.Generator | None, augment: Augment | None, part, stride):
    order = rng.permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    k, m = part
    indices = [order[b * batch_size:(b + 1) * batch_size] for b in range(stride[0], n_batches, stride[1])]
    rows = [slice(len(idx) * k // m, len(idx) * (k + 1) // m) for idx in indices]
    for idx, r, x in zip(indices, rows, dataset.stream(indices, rng, augment, rows)):
        yield x, dataset.y[idx][r]
