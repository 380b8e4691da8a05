"""Every layout conversion between the canonical layout and TensorFlow's, in one place.

Canonical (PyTorch) layout: conv kernels ``[out, in/groups, kh, kw]`` (OIHW),
dense ``[out, in]``, activations NCHW. TensorFlow: kernels HWIO, dense
``[in, out]``, activations NHWC. Flattening before a dense layer is done in NCHW
order in both backends (TensorFlow transposes with :data:`NHWC_TO_NCHW` first),
so dense weights never need permuting.
"""

from __future__ import annotations

import numpy as np

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
OIHW_TO_HWIO = (2, 3, 1, 0)
HWIO_TO_OIHW = (3, 2, 0, 1)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC)) if x.ndim == 4 else x


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, NHWC_TO_NCHW)) if x.ndim == 4 else x


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, OIHW_TO_HWIO))


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, HWIO_TO_OIHW))


def dense_to_tf(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


dense_from_tf = dense_to_tf  # a transpose is its own inverse


def to_tf(name: str, value: np.ndarray) -> np.ndarray:
    """Canonical parameter -> TensorFlow variable layout (by rank: 4 = conv, 2 = dense)."""
    return _BY_RANK_TO_TF.get(value.ndim, np.ascontiguousarray)(value)


def from_tf(name: str, value: np.ndarray) -> np.ndarray:
    """TensorFlow variable layout -> canonical (inverse of :func:`to_tf`)."""
    return _BY_RANK_FROM_TF.get(value.ndim, np.ascontiguousarray)(value)


_BY_RANK_TO_TF = {4: oihw_to_hwio, 2: dense_to_tf}
_BY_RANK_FROM_TF = {4: hwio_to_oihw, 2: dense_from_tf}
