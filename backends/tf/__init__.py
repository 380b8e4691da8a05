"""TensorFlow backend: interprets a :class:`compress_core.graph.Graph` as a TF1-style graph.

Each model owns its own ``tf.Graph`` and ``tf.compat.v1.Session`` (built with
``graph.as_default()``, so eager execution elsewhere in the process is untouched).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from backends.tf.model import TFBackend, TFModel, TFTrainer

__all__ = ["TFBackend", "TFModel", "TFTrainer", "make_backend"]


def make_backend(**options) -> TFBackend:
    """The TensorFlow backend; ``options`` go to :class:`TFBackend` (e.g. ``intra_threads``)."""
    return TFBackend(**options)
