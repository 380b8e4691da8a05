"""TensorFlow's collective ops over a ``tf.distribute.Server`` cluster: the engine of data-parallel TF runs.

``tf.distribute.MultiWorkerMirroredStrategy`` drives Keras and ``tf.function`` code, not the
``tf.compat.v1`` sessions of this backend; the strategy's own communication layer, the
collective all-reduce and broadcast ops (``CollectiveReduce``, ``CollectiveBcastSend/Recv``)
between the workers of a ``tf.distribute.Server`` cluster, runs in a session. Each process
starts its server from the cluster's worker list and runs the collectives in a small graph of
its own; the models' sessions are unchanged.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import collective_ops

from backends.base import Collective, pack, unpack

_V1 = tf.compat.v1
_LEADER = "/job:worker/replica:0/task:0"
_GROUP = 1


class TFCollective(Collective):
    """Sums and broadcasts of numpy vectors through collective ops, one op per (kind, dtype, length),
    built on first use: every rank builds them in the same order, so their instance keys agree."""

    def __init__(self, rank: int, world: int, workers: list[str], config):
        """``config``: the process's session ``ConfigProto`` (threads, GPU), given the collective group leader."""
        self.rank, self.world = rank, world
        config.experimental.collective_group_leader = _LEADER
        cluster = tf.train.ClusterSpec({"worker": list(workers)})
        self.server = tf.distribute.Server(cluster, job_name="worker", task_index=rank, config=config, start=True)
        self.graph = tf.Graph()
        self.session = _V1.Session(self.server.target, graph=self.graph, config=config)
        self._ops: dict = {}
        self._keys = itertools.count(1)

    def _op(self, kind: str, dtype: np.dtype, n: int):
        key = (kind, dtype.str, n)
        if key not in self._ops:
            with self.graph.as_default(), tf.device(f"/job:worker/task:{self.rank}/device:CPU:0"):
                x = _V1.placeholder(tf.as_dtype(dtype), [n])
                instance = next(self._keys)
                if kind == "sum":
                    y = collective_ops.all_reduce(x, self.world, _GROUP, instance, "Add", "Id")
                elif self.rank == 0:
                    y = collective_ops.broadcast_send(x, x.shape, x.dtype, self.world, _GROUP, instance)
                else:
                    y = collective_ops.broadcast_recv(x.shape, x.dtype, self.world, _GROUP, instance)
            self._ops[key] = (x, y)
        return self._ops[key]

    def _each(self, arrays, kind: str) -> list[np.ndarray]:
        out = {}
        for k, v in pack(arrays).items():
            x, y = self._op(kind, v.dtype, v.size)
            out[k] = self.session.run(y, {x: v} if kind == "sum" or self.rank == 0 else None)
        return unpack(arrays, out)

    def all_reduce(self, arrays):
        return self._each(arrays, "sum")

    def broadcast(self, arrays):
        return self._each(arrays, "broadcast")
