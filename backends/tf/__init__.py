"""TensorFlow backend: interprets a :class:`compress_core.graph.Graph` as a TF1-style graph.

Each model owns its own ``tf.Graph`` and ``tf.compat.v1.Session`` (built with
``graph.as_default()``, so eager execution elsewhere in the process is untouched).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from backends.tf.model import TFBackend, TFModel, TFTrainer
from compress_core.errors import UserError

__all__ = ["TFBackend", "TFModel", "TFTrainer", "make_backend"]


_OPTIONS = ("intra_threads", "inter_threads", "fused_bn")


def make_backend(**options) -> TFBackend:
    """The TensorFlow backend; ``options``: ``intra_threads``, ``inter_threads``, ``fused_bn``."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"unknown TensorFlow backend option(s) {unknown} (known: {', '.join(_OPTIONS)})")
    return TFBackend(**options)
