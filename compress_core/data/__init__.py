"""Inputs and settings: datasets, splits and batches (``core``), where the data comes from
(``sources``: digits, CIFAR, synthetic, an ImageNet folder via ``imagefolder``), and the
experiment configuration (``config``). The names below are the package's public API."""

from compress_core.data.core import (
    DATASET_NAMES,
    Dataset,
    DataSplits,
    Splits,
    channel_stats,
    flip_and_crop,
    iterate_batches,
    normalize,
    num_batches,
    random_flip,
    random_pad_crop,
    split,
)
from compress_core.data.sources import (
    get_dataset,
    load_cifar,
    load_digits_dataset,
    synthetic_dataset,
)

__all__ = ["DATASET_NAMES", "DataSplits", "Dataset", "Splits", "channel_stats", "flip_and_crop", "get_dataset",
           "iterate_batches", "load_cifar", "load_digits_dataset", "normalize", "num_batches", "random_flip",
           "random_pad_crop", "split", "synthetic_dataset"]
