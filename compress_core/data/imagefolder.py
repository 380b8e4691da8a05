"""ImageNet-style folders of image files as lazy datasets, decoded batch by batch with PIL.

Layout: ``root/{train,val}/<class_name>/*.{JPEG,jpg,jpeg,png}`` (extensions in any
case). The class index is the position of the folder name in the sorted list of
class names, so it matches torchvision's ``ImageFolder``; both splits must hold the
same classes. ``train`` is the training data (a validation split is held out of it
by :func:`compress_core.data.split`), ``val`` is ImageNet's official validation
set, used as the test split.

Nothing is held in memory but the file list: :class:`FolderImages` is an
array-like ``[N, 3, S, S]`` whose indexing decodes the images it is asked for with
the evaluation transform, and :meth:`ImageFolderDataset.take` decodes a training
batch with the training transform when augmentation is asked for.
:func:`compress_core.data.iterate_batches` reads through
:meth:`ImageFolderDataset.stream`: with ``workers`` decoding processes, the next
batches decode (and augment) in the workers while the current one trains, at most
``prefetch`` batches ahead (bounded memory). The transforms are
torchvision's ImageNet ones for a crop size ``S`` (224 by default):

* evaluation: resize the shorter side to ``round(S / 0.875)`` (256 for 224),
  bilinear, then the central ``S x S`` crop;
* training: ``RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3))`` then a
  horizontal flip with probability 1/2;

then ``x = (pixel / 255 - mean) / std`` with the ImageNet statistics. Random
numbers come from the caller's generator in a fixed amount per image, drawn in the
calling process in batch order, so the batches are identical for both backends and
for any number of decoding processes (0: decode in the calling process).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress_core.data import Dataset
from compress_core.errors import UserError, check

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
#: RandomResizedCrop: attempts, area fraction and aspect ratio ranges (torchvision's defaults)
_ATTEMPTS, _SCALE, _RATIO = 10, (0.08, 1.0), (3 / 4, 4 / 3)


def eval_resize(size: int) -> int:
    """Shorter side before the centre crop: ``round(size / 0.875)`` (256 for 224)."""
    return round(size / 0.875)


def _resized(img, short: int):
    """``img`` with its shorter side resized to ``short`` (torchvision's ``Resize(short)``)."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == short:
        return img
    ow, oh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return img.resize((ow, oh), Image.BILINEAR)


def center_crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of torchvision's ``CenterCrop(size)`` of a ``w x h`` image."""
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return left, top, left + size, top + size


def random_crop_box(w: int, h: int, u: np.ndarray) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` on a ``w x h`` image, driven by ``u``.

    ``u [10, 4]`` are uniforms in [0, 1): per attempt the area fraction
    ``0.08 + 0.92 u0``, the log aspect ratio ``log(3/4) + log(16/9) u1`` and the
    offsets ``floor(u2 (h - ch + 1))``, ``floor(u3 (w - cw + 1))``. The first
    attempt whose crop fits is taken; if none fits, the central crop with the
    aspect ratio clamped to [3/4, 4/3].
    """
    lo, hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for u0, u1, u2, u3 in u:
        area = w * h * (_SCALE[0] + (_SCALE[1] - _SCALE[0]) * u0)
        ratio = math.exp(lo + (hi - lo) * u1)
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u2 * (h - ch + 1)), int(u3 * (w - cw + 1))
            return left, top, left + cw, top + ch
    if w / h < _RATIO[0]:
        cw, ch = w, round(w / _RATIO[0])
    elif w / h > _RATIO[1]:
        cw, ch = round(h * _RATIO[1]), h
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def decode_image(path: str, size: int, u: np.ndarray | None = None, flip: bool = False) -> np.ndarray:
    """One image as normalised ``float32 [3, size, size]``: the training transform with the crop
    uniforms ``u [10, 4]`` (:func:`random_crop_box`) and ``flip``, or the evaluation one (``u`` None)."""
    from PIL import Image

    try:
        with Image.open(path) as f:
            img = f.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode image {path}: {exc}") from exc
    if u is None:
        img = _resized(img, eval_resize(size))
        img = img.crop(center_crop_box(*img.size, size))
    else:
        img = img.crop(random_crop_box(*img.size, u)).resize((size, size), Image.BILINEAR)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = np.asarray(img, np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def _decode_chunk(jobs: list, size: int) -> np.ndarray:
    """``[len(jobs), 3, size, size]`` of ``(path, u, flip)`` jobs (a worker process's task)."""
    out = np.empty((len(jobs), 3, size, size), np.float32)
    for k, (path, u, flip) in enumerate(jobs):
        out[k] = decode_image(path, size, u, flip)
    return out


_POOLS: dict[int, ProcessPoolExecutor] = {}


def decoder_pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool of ``workers`` decoding processes, started on first use and shared by every
    folder dataset. Workers come from a fork server (``spawn`` where there is none): forking the
    training process itself would copy a framework's thread pools mid-operation."""
    pool = _POOLS.get(workers)
    if pool is None or getattr(pool, "_broken", False):
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            context.set_forkserver_preload([__name__])  # each worker forks with numpy and PIL loaded
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context)
    return pool


def resolve_workers(workers: int | None) -> int:
    """Decoding processes for a ``workers`` setting: -1 one per CPU core, None or 0 none."""
    if workers is None:
        return 0
    check(isinstance(workers, (int, np.integer)) and not isinstance(workers, bool) and workers >= -1,
          f"decoding workers must be an integer >= -1 (-1: one per CPU core), got {workers!r}")
    return int(os.cpu_count() or 1) if workers == -1 else int(workers)


class FolderImages:
    """Lazy ``float32 [N, 3, S, S]`` images of a list of files.

    ``images[i]``, ``images[a:b]`` and ``images[index_array]`` decode those files with
    the evaluation transform; :meth:`decode` with a generator uses the training one.
    ``workers`` processes decode (:func:`resolve_workers`: -1 one per CPU core, 0 or None
    in the calling process); :meth:`stream` keeps them busy ``prefetch`` batches ahead.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, files, size: int = 224, workers: int | None = None, prefetch: int = 2):
        check(isinstance(size, int) and not isinstance(size, bool) and size >= 1,
              f"image size must be a positive integer, got {size!r}")
        check(isinstance(prefetch, int) and prefetch >= 1, f"prefetch must be a positive integer, got {prefetch!r}")
        self.files = tuple(str(f) for f in files)
        self.size = size
        self.workers = resolve_workers(workers)
        self.prefetch = prefetch

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.decode(np.arange(len(self))[[index]])[0]
        return self.decode(np.arange(len(self))[index])

    def subset(self, indices) -> FolderImages:
        return FolderImages([self.files[i] for i in np.asarray(indices, np.int64)], self.size, self.workers,
                            self.prefetch)

    def _jobs(self, indices, rng: np.random.Generator | None, rows: slice | None = None) -> list:
        """``(path, crop uniforms, flip)`` per image; the uniforms drawn from ``rng`` here, in the
        calling process (None: the evaluation transform); only ``rows`` of them (the uniforms are
        drawn for all: a data-parallel share)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        u = flips = [None] * len(indices)
        if rng is not None:
            u, flips = rng.random((len(indices), _ATTEMPTS, 4)), rng.random(len(indices)) < 0.5
        return [(self.files[i], u[k], bool(flips[k])) for k, i in enumerate(indices)][rows or slice(None)]

    def _submit(self, jobs: list) -> list:
        """Futures of ``jobs`` split into one chunk per worker."""
        if not jobs:
            return []
        pool = decoder_pool(self.workers)
        chunks = np.array_split(np.arange(len(jobs)), min(self.workers, len(jobs)))
        return [pool.submit(_decode_chunk, [jobs[k] for k in chunk], self.size) for chunk in chunks]

    def _gather(self, futures: list) -> np.ndarray:
        parts = [f.result() for f in futures]
        return np.concatenate(parts) if parts else np.empty((0, 3, self.size, self.size), np.float32)

    def decode(self, indices, rng: np.random.Generator | None = None, rows: slice | None = None) -> np.ndarray:
        """Images ``indices``: training transform with uniforms drawn from ``rng``, else evaluation;
        only ``rows`` of them are decoded."""
        jobs = self._jobs(indices, rng, rows)
        if self.workers and len(jobs) > 1:
            return self._gather(self._submit(jobs))
        return _decode_chunk(jobs, self.size)

    def stream(self, batches: Iterable, rng: np.random.Generator | None = None,
               rows: Sequence[slice] | None = None) -> Iterator[np.ndarray]:
        """:meth:`decode` of every index array of ``batches`` (only ``rows[b]`` of batch ``b`` when
        given), in order. With workers, up to ``prefetch`` batches are decoding while the caller
        works on the current one, so ``rng`` is consumed that far ahead (the same numbers, in the
        same order, as batch by batch)."""
        if not self.workers:
            for b, indices in enumerate(batches):
                yield self.decode(indices, rng, None if rows is None else rows[b])
            return
        pending: deque = deque()
        batches = iter(batches)
        try:
            for b, indices in enumerate(batches):
                pending.append(self._submit(self._jobs(indices, rng, None if rows is None else rows[b])))
                if len(pending) > self.prefetch:
                    yield self._gather(pending.popleft())
            while pending:
                yield self._gather(pending.popleft())
        finally:  # the caller stopped early (or a worker failed): drop the work nobody will read
            for futures in pending:
                for f in futures:
                    f.cancel()


@dataclass(frozen=True, eq=False)
class ImageFolderDataset(Dataset):
    """A :class:`~compress_core.data.Dataset` whose ``x`` is a lazy :class:`FolderImages`.

    Batches decode on demand: :meth:`take` with an ``augment`` request uses the
    training transform (the ImageNet augmentation replaces ``augment``, which is
    not applied to decoded images); without one, the evaluation transform.
    Images are already normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
    """

    def __post_init__(self) -> None:
        y = np.asarray(self.y)
        check(isinstance(self.x, FolderImages), f"dataset {self.name!r}: x must be FolderImages")
        check(y.ndim == 1 and len(y) == len(self.x),
              f"dataset {self.name!r}: {len(self.x)} images but labels of shape {y.shape}")
        check(y.size == 0 or (y.min() >= 0 and y.max() < self.num_classes),
              f"dataset {self.name!r}: labels must be in [0, {self.num_classes})")
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", tuple(self.class_names or ()) or None)

    def subset(self, indices: np.ndarray) -> ImageFolderDataset:
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, x=self.x.subset(indices), y=self.y[indices])

    def take(self, indices, rng=None, augment=None, rows=None) -> np.ndarray:
        return self.x.decode(indices, rng if augment is not None else None, rows)

    def stream(self, batches, rng=None, augment=None, rows=None):
        return self.x.stream(batches, rng if augment is not None else None, rows)


def _scan_split(root: Path, split: str) -> dict[str, list[str]]:
    """``{class name: sorted image files}`` of ``root/split``."""
    base = root / split
    check(base.is_dir(), f"image folder {root} has no '{split}' directory (expected {root}/{{train,val}}/<class>/)")
    classes = {}
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.is_dir():
            files = sorted(f.path for f in os.scandir(entry.path)
                           if f.is_file() and f.name.lower().endswith(EXTENSIONS))
            check(bool(files), f"class folder {entry.path} holds no image ({', '.join(EXTENSIONS)})")
            classes[entry.name] = files
    check(bool(classes), f"image folder {base} has no class sub-directories")
    return classes


def load_image_folder(root: str | Path, size: int = 224, workers: int | None = None,
                      name: str = "imagenet") -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """``(train, val)`` lazy datasets of ``root/{train,val}/<class>/*`` with ``size x size`` crops."""
    root = Path(root)
    check(root.is_dir(), f"image folder root does not exist or is not a directory: {root}")
    scanned = {s: _scan_split(root, s) for s in SPLITS}
    names = sorted(scanned["train"])
    for a, b in ((SPLITS[0], SPLITS[1]), (SPLITS[1], SPLITS[0])):
        missing = sorted(set(scanned[a]) - set(scanned[b]))
        if missing:
            raise UserError(f"class '{missing[0]}' of {root / a} is missing from {root / b}")
    out = []
    for s in SPLITS:
        files = [f for c in names for f in scanned[s][c]]
        labels = np.concatenate([np.full(len(scanned[s][c]), k, np.int64) for k, c in enumerate(names)])
        out.append(ImageFolderDataset(FolderImages(files, size, workers), labels, len(names), name, tuple(names)))
    return out[0], out[1]
