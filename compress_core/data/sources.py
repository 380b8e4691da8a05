"""Where the data comes from: scikit-learn's digits, CIFAR archives, a synthetic set, an ImageNet folder.

:func:`get_dataset` loads one by name and returns normalised train/validation/test
splits (:class:`~compress_core.data.core.DataSplits`).
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile
from pathlib import Path

import numpy as np

from compress_core.data import imagefolder
from compress_core.data.core import (
    DATASET_NAMES,
    Dataset,
    DataSplits,
    channel_stats,
    normalize,
    split,
)
from compress_core.errors import UserError, check

# --------------------------------------------------------------------------- loaders


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images) as ``[N, 1, 8, 8]`` in ``[0, 1]``.

    Embedded in scikit-learn, so it needs no network: the default dataset for
    quick experiments and tests.  Raw pixel values are 0..16, so ``x = raw / 16``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None]
    return Dataset(x, bunch.target, 10, "digits", tuple(str(t) for t in bunch.target_names))


_CIFAR_LAYOUT = {
    # num_classes: (folder, archive file, train files, test files, meta file)
    10: ("cifar-10-batches-py", "cifar-10-python.tar.gz",
         tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
    100: ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta"),
}

# The only globals a CIFAR pickle (python 2 or 3, numpy 1 or 2) needs to rebuild
# its uint8 arrays; anything else is refused, so a crafted file cannot run code.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} not allowed")
        return super().find_class(module, name)


def _unpickle(fileobj, where: str) -> dict:
    try:
        obj = _SafeUnpickler(fileobj, encoding="bytes").load()
    except Exception as exc:  # corrupt / truncated / hostile file
        raise UserError(f"cannot read CIFAR pickle {where}: {exc}") from exc
    check(isinstance(obj, dict), f"CIFAR pickle {where} does not hold a dict")
    return obj


def _read_cifar_pickles(path: Path, folder: str, archive: str, names: tuple[str, ...]) -> dict:
    """Unpickle ``names`` from a CIFAR folder, its parent, or the ``.tar.gz`` archive."""
    check(path.exists(), f"CIFAR path does not exist: {path}")
    if path.is_dir() and not (path / folder).is_dir() and (path / archive).is_file():
        path = path / archive
    if path.is_dir():
        base = path / folder if (path / folder).is_dir() else path
        missing = [n for n in names if not (base / n).is_file()]
        check(not missing, f"CIFAR directory {base} is missing file(s): {', '.join(missing)}")
        out = {}
        for n in names:
            with open(base / n, "rb") as f:
                out[n] = _unpickle(f, str(base / n))
        return out
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            found = {n: members.get(f"{folder}/{n}", members.get(n)) for n in names}
            missing = [f"{folder}/{n}" for n, m in found.items() if m is None]
            check(not missing, f"CIFAR archive {path} is missing file(s): {', '.join(missing)}")
            return {n: _unpickle(tar.extractfile(m), f"{path}:{m.name}") for n, m in found.items()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"CIFAR path {path} is neither a CIFAR directory nor a readable tar archive: "
                        f"{exc}") from exc


def _field(d: dict, key: bytes, where: str):
    check(key in d, f"CIFAR pickle {where} has no {key.decode()!r} entry")
    return d[key]


def load_cifar(path: str | Path, num_classes: int = 10,
               label_mode: str = "fine") -> tuple[Dataset, Dataset]:
    """Load CIFAR-10/100 from the standard python-pickle release; returns ``(train, test)``.

    ``path`` may be the extracted folder (``cifar-10-batches-py/`` or
    ``cifar-100-python/``), its parent directory, or the downloaded
    ``.tar.gz`` archive, which is read in memory without extracting.  Each
    pickle row is 3072 uint8 values in row-major ``[3, 32, 32]`` (CHW) order,
    so ``x = data.reshape(N, 3, 32, 32) / 255``.  For CIFAR-100,
    ``label_mode="coarse"`` selects the 20 super-classes instead of the 100
    fine classes.  Pickles are read with a restricted unpickler that only
    rebuilds numpy arrays.
    """
    check(num_classes in _CIFAR_LAYOUT, f"num_classes must be 10 or 100 for CIFAR, got {num_classes!r}")
    check(label_mode in ("fine", "coarse"), f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    check(num_classes == 100 or label_mode == "fine",
          f"label_mode={label_mode!r} only exists for CIFAR-100")
    folder, archive, train_files, test_files, meta_file = _CIFAR_LAYOUT[num_classes]
    pickles = _read_cifar_pickles(Path(path), folder, archive, (*train_files, *test_files, meta_file))

    if num_classes == 10:
        label_key, names_key, n_out, name = b"labels", b"label_names", 10, "cifar10"
    else:
        label_key, names_key = (label_mode.encode() + b"_labels", label_mode.encode() + b"_label_names")
        n_out, name = (100, "cifar100") if label_mode == "fine" else (20, "cifar100-coarse")
    class_names = tuple(s.decode() if isinstance(s, bytes) else str(s)
                        for s in _field(pickles[meta_file], names_key, meta_file))

    def build(files: tuple[str, ...]) -> Dataset:
        data = np.concatenate([np.asarray(_field(pickles[f], b"data", f), dtype=np.uint8) for f in files])
        labels = np.concatenate([np.asarray(_field(pickles[f], label_key, f), dtype=np.int64) for f in files])
        check(data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
              f"CIFAR data in {files[0]} must be [N, 3072], got shape {data.shape}")
        x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
        return Dataset(x, labels, n_out, name, class_names)

    return build(train_files), build(test_files)


def synthetic_dataset(n: int, num_classes: int, shape: tuple[int, int, int] = (3, 8, 8),
                      seed: int = 0, noise: float = 1.0) -> Dataset:
    """Deterministic learnable toy data for tests.

    Each class ``k`` has a fixed random prototype ``p_k ~ N(0, 1)`` of ``shape``;
    sample ``i`` is ``x_i = p_{y_i} + noise * eps_i`` with ``eps_i ~ N(0, 1)``.
    Class means differ, so even a tiny network separates the classes.  Labels
    are balanced (``i mod num_classes``, then shuffled).
    """
    check(n >= 1, f"synthetic n must be >= 1, got {n}")
    check(num_classes >= 1, f"synthetic num_classes must be >= 1, got {num_classes}")
    check(len(shape) == 3 and min(shape) >= 1, f"synthetic shape must be (C, H, W), got {shape}")
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_classes, *shape), dtype=np.float32)
    y = rng.permutation(np.arange(n) % num_classes)
    x = prototypes[y] + np.float32(noise) * rng.standard_normal((n, *shape), dtype=np.float32)
    return Dataset(x, y, num_classes, "synthetic")


# --------------------------------------------------------------------------- dispatcher


def get_dataset(name: str, path: str | Path | None = None, *, val_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, label_mode: str = "fine",
                synthetic_n: int = 512, synthetic_classes: int = 4,
                synthetic_shape: tuple[int, int, int] = (3, 8, 8), image_size: int = 224,
                workers: int | None = None) -> DataSplits:
    """Load dataset ``name`` and return normalised, stratified train/val/test splits.

    * ``digits`` / ``synthetic``: one array split into train/val/test by
      :func:`split` with ``val_fraction`` / ``test_fraction``.
    * ``cifar10`` / ``cifar100``: ``path`` is required (see :func:`load_cifar`);
      val is split off the training archive, test is the official test archive,
      so ``test_fraction`` is ignored.
    * ``imagenet``: ``path`` is a folder ``{train,val}/<class>/*.JPEG`` (see
      :mod:`compress_core.data.imagefolder`), decoded lazily to ``image_size`` crops
      by ``workers`` threads; val is split off ``train``, test is ``val``.
      Normalised with the fixed ImageNet mean/std at decode time.

    Mean/std come from the train split only and are applied to all three.
    """
    check(name in DATASET_NAMES, f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    is_cifar = name.startswith("cifar")
    check(is_cifar or name == "imagenet" or path is None, f"dataset {name!r} takes no path, got path={path!r}")
    if name == "imagenet":
        check(path is not None, "dataset 'imagenet' needs path= to a folder with train/ and val/")
        full_train, test = imagefolder.load_image_folder(path, image_size, workers)
        train, val, _ = split(full_train, val_fraction, 0.0, seed)
        return DataSplits(train, val, test, train.num_classes, imagefolder.IMAGENET_MEAN.copy(),
                          imagefolder.IMAGENET_STD.copy())
    if is_cifar:
        check(path is not None, f"dataset {name!r} needs path= to the CIFAR folder or .tar.gz")
        full_train, test = load_cifar(path, 10 if name == "cifar10" else 100, label_mode)
        train, val, _ = split(full_train, val_fraction, 0.0, seed)
        del full_train
    else:
        full = (load_digits_dataset() if name == "digits"
                else synthetic_dataset(synthetic_n, synthetic_classes, synthetic_shape, seed))
        train, val, test = split(full, val_fraction, test_fraction, seed)
    mean, std = channel_stats(train.x)
    # subsets and freshly loaded arrays are private copies: normalise in place
    train, val, test = (dataclasses.replace(d, x=normalize(d.x, mean, std, copy=False))
                        for d in (train, val, test))
    return DataSplits(train, val, test, train.num_classes, mean, std)
