"""TensorFlow backend: interprets a :class:`compress_core.ir.graph.Graph` as a TF1-style graph, and the
importer of Keras models and TF1 graphs (:mod:`backends.tf.importer`).

Each model owns its own ``tf.Graph`` and ``tf.compat.v1.Session`` (built with
``graph.as_default()``, so eager execution elsewhere in the process is untouched).

TensorFlow's start-up messages on a CPU machine (oneDNN banners, CUDA not found) are
not shown unless the user asks for them by setting ``TF_CPP_MIN_LOG_LEVEL`` (e.g. 0):
some are printed before TensorFlow reads that variable, so its import runs with the
standard error stream held back (and shown if the import fails).
"""

from __future__ import annotations

import os
import sys
import tempfile

from compress_core.errors import UserError


def _quiet_import():
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_quiet_import()

from backends.tf.importer import from_checkpoint, from_graph_def, from_keras
from backends.tf.model import TFBackend, TFModel, TFTrainer

__all__ = ["TFBackend", "TFModel", "TFTrainer", "from_checkpoint", "from_graph_def", "from_keras", "make_backend"]


_OPTIONS = ("intra_threads", "inter_threads", "fused_bn")


def make_backend(**options) -> TFBackend:
    """The TensorFlow backend; ``options``: ``intra_threads``, ``inter_threads``, ``fused_bn``."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"unknown TensorFlow backend option(s) {unknown} (known: {', '.join(_OPTIONS)})")
    return TFBackend(**options)
