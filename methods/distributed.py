"""Data-parallel runs: which process this is, its share of the data, and collectives through the backend.

A run of N processes is started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) or, for the TensorFlow
backend across machines, by starting each process with its ``TF_CONFIG``. Every process runs
the same method code on the same weights; each takes its rows of every global batch
(``iterate_batches(part=share())``), or every N-th batch of a pass that only reads
(``stride=share()``), and the framework's own engine sums what the ranks computed
(:class:`backends.base.Collective`): gradients in the trainer, statistics and metrics here.
Only rank 0 writes to the work directory (:func:`is_main`). Nothing here imports a framework.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from compress_core.errors import UserError

_comm = None  # the backend's Collective once start() joined a run of several processes


def tf_config() -> dict | None:
    """The parsed ``TF_CONFIG`` (TensorFlow's cluster description), or None when unset."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        cfg = json.loads(text)
        workers, index = list(cfg["cluster"]["worker"]), int(cfg["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise UserError("TF_CONFIG must be JSON like {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                        "\"task\": {\"type\": \"worker\", \"index\": 0}}") from None
    if not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG task index {index} is not one of the {len(workers)} workers")
    return {"workers": workers, "index": index}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def world_size() -> int:
    """Processes in the run: torchrun's ``WORLD_SIZE``, else the workers of ``TF_CONFIG``, else 1."""
    if "WORLD_SIZE" in os.environ:
        return _env_int("WORLD_SIZE", 1)
    cfg = tf_config()
    return len(cfg["workers"]) if cfg else 1


def rank() -> int:
    """This process's place in the run (0 writes the files)."""
    if "WORLD_SIZE" in os.environ:
        return _env_int("RANK", 0)
    cfg = tf_config()
    return cfg["index"] if cfg else 0


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 per ``TF_CONFIG`` launch)."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def workers() -> list[str] | None:
    """``host:port`` of every rank for TensorFlow's cluster: ``TF_CONFIG``'s workers, or under torchrun on
    one machine ``MASTER_ADDR`` at ports ``MASTER_PORT + 1 + rank``; None when neither says."""
    cfg = tf_config()
    if cfg:
        return cfg["workers"]
    n = world_size()
    if "MASTER_ADDR" in os.environ and local_world_size() == n:
        port = _env_int("MASTER_PORT", 29500)
        return [f"{os.environ['MASTER_ADDR']}:{port + 1 + r}" for r in range(n)]
    return None


def is_main() -> bool:
    """True on the process that writes the work directory, logs and prints (rank 0)."""
    return rank() == 0


def active() -> bool:
    """True when this process shares its work with others."""
    return _comm is not None


def start(backend) -> None:
    """Join the run's other processes through ``backend`` (nothing for a single process). The process
    joins once; a later backend object (another method run in the same process) adopts that link."""
    global _comm
    n = world_size()
    if n > 1:
        if not 0 <= rank() < n:
            raise UserError(f"RANK {rank()} is not in [0, WORLD_SIZE={n})")
        _comm = backend.init_distributed(rank(), n, workers(), _comm)


def share() -> tuple[int, int]:
    """``(rank, world)`` of this process: its share of the data for ``iterate_batches(part=..., stride=...)``
    (a single process: ``(0, 1)``, everything)."""
    return (_comm.rank, _comm.world) if _comm else (0, 1)


def quiet() -> bool | None:
    """``disable`` for progress bars: only rank 0 shows them."""
    return None if is_main() else True


def all_reduce(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Elementwise sums over the ranks (the arrays themselves for a single process)."""
    return [np.asarray(a) for a in arrays] if _comm is None else _comm.all_reduce(list(arrays))


def broadcast(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rank 0's arrays on every rank; the others pass arrays of the same shapes and dtypes."""
    return [np.asarray(a) for a in arrays] if _comm is None else _comm.broadcast(list(arrays))


def gather(arrays: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Every rank's arrays (same shapes on all ranks), in rank order: ``out[r][i]``.

    A sum of zero-padded copies, each rank filling its own slot: adding zeros is exact.
    """
    if _comm is None:
        return [[np.asarray(a) for a in arrays]]
    padded = []
    for a in arrays:
        a = np.asarray(a)
        z = np.zeros((_comm.world,) + a.shape, a.dtype)
        z[_comm.rank] = a
        padded.append(z)
    summed = _comm.all_reduce(padded)
    return [[s[r] for s in summed] for r in range(_comm.world)]


def agree(flag: bool) -> bool:
    """Rank 0's decision on every rank (a stopping rule, a file that exists)."""
    return bool(broadcast([np.array([1 if flag else 0], np.int64)])[0][0])


def barrier() -> None:
    """Wait until every rank got here (e.g. before reading what rank 0 wrote)."""
    if _comm is not None:
        _comm.barrier()
