"""Numeric helpers shared by the criteria modules: checked array inputs and BLAS thread limits."""

from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import ThreadpoolController  # installed with scikit-learn

from compress_core.errors import UserError


def checked_array(array, ndim: int, what: str, name: str) -> np.ndarray:
    """``array`` as float64 if it has rank ``ndim``, is non-empty and finite; else a UserError naming it."""
    y = np.asarray(array, np.float64)
    if y.ndim != ndim or y.size == 0:
        raise UserError(f"{name} must be {what}, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise UserError(f"{name} contains NaN or infinite values")
    return y


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS/LAPACK libraries of numpy and scipy, found once (a lookup per call costs ~2 ms)."""
    return ThreadpoolController()


def one_blas_thread():
    """Context manager limiting BLAS/LAPACK to one thread.

    For many small problems, or when the caller runs its own worker threads: BLAS
    threads then only contend (4x slower on a loaded 2-core machine).
    """
    return _blas().limit(limits=1, user_api="blas")
