"""The TensorFlow backend: a :class:`Graph` interpreted as a TF1-style graph and session.

Everything crossing the adapter boundary is numpy in the canonical layout; the
conversion to TensorFlow's layouts (HWIO kernels, ``[in, out]`` dense weights,
NHWC activations) happens only here, through :mod:`compress_core.ir.layout`.

Each model holds two forward passes over the same variables: an inference pass
(BatchNorm with running statistics) and a training pass (batch statistics),
whose BatchNorm running-statistic updates are separate ops that only a trainer
step runs. Weight assignment goes through one placeholder and one assign op per
variable created at build time, so loading weights never grows the graph.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from backends.base import (
    LOSS_SCALE,
    Backend,
    LossSpec,
    Model,
    OptimSpec,
    Trainer,
    check_lr_groups,
    pick,
)
from compress_core.errors import UserError
from compress_core.ir import layout
from compress_core.ir.checkpoint import check_params
from compress_core.ir.graph import SELECT_CONV_MAX_IN, Graph, pads, select_matrix
from compress_core.ir.init import init_params

_V1 = tf.compat.v1


def session_config(intra: int, inter: int, gpu: str = "") -> _V1.ConfigProto:
    """A session's threads; ``gpu``: the one GPU this process uses (``visible_device_list``, the same for
    every session of a process), empty for all."""
    config = _V1.ConfigProto(intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter,
                             allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    config.gpu_options.visible_device_list = gpu
    return config


def _tf_name(canonical: str, taken: set[str]) -> str:
    """A valid, unique TF variable name for a canonical parameter name."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", canonical)
    if not re.match(r"[A-Za-z0-9.]", name):
        name = "v" + name
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


class _Assigner:
    """One placeholder + assign op per variable, created once, fed on every assignment."""

    def __init__(self, variables: Mapping[str, tf.Variable]):
        self.ops = {}
        with tf.name_scope("assign"):
            for k, v in variables.items():
                ph = _V1.placeholder(v.dtype.base_dtype, v.shape)
                self.ops[k] = (ph, v.assign(ph, read_value=False))

    def run(self, session, tf_values: Mapping[str, np.ndarray]) -> None:
        if not tf_values:
            return
        feed = {self.ops[k][0]: v for k, v in tf_values.items()}
        session.run([self.ops[k][1] for k in tf_values], feed_dict=feed)


class TFModel(Model):
    """A graph built in its own ``tf.Graph`` with its own session.

    The inference pass is built with the model; the training pass (batch
    statistics, and the ops updating the running statistics) on first use, so
    a model that is only evaluated costs half the graph.
    """

    def __init__(self, graph: Graph, tf_graph: tf.Graph, session, x, x_nhwc, infer: dict,
                 variables: dict, assigner: _Assigner):
        self.graph = graph
        self.tf_graph = tf_graph
        self.session = session
        self.x = x                    # NCHW float32 placeholder
        self._x_nhwc = x_nhwc
        self.infer = infer            # node name -> tensor (NHWC maps, [N, C] vectors), running BN stats
        self.variables = variables    # canonical name -> tf.Variable (TF layout)
        self.assigner = assigner
        self.trainable = [k for k in variables if not Graph.is_buffer(k)]
        self.fused_bn = False         # set by the backend; read when the training pass is built
        self._passes: dict[str, tuple[dict, list]] = {}  # precision -> (tensors, BN update ops)
        self._sums: dict = {}         # (taps, bn_batch_stats) -> sum_tensors(), built on first use

    def training_pass(self, precision: str = "float32") -> tuple[dict, list]:
        """Node name -> tensor of the training pass (BatchNorm with batch statistics) computing in
        ``precision`` (mixed precision: :class:`_CastVariables`), and its running-statistic update
        ops (run only by a trainer step); built on first use."""
        if precision not in self._passes:
            updates: list = []
            with self.tf_graph.as_default():
                if not self._passes:
                    self.dropout_on = _V1.placeholder_with_default(False, [], name="dropout_on")
                x, V = self._x_nhwc, self.variables
                if precision != "float32":
                    dtype = getattr(tf, precision)
                    x, V = tf.cast(x, dtype), _CastVariables(self.graph, V, dtype)
                with tf.name_scope("train" if precision == "float32" else f"train_{precision}"):
                    tensors = _forward_pass(self.graph, x, V, "fused" if self.fused_bn else "batch", updates,
                                            self.dropout_on)
            self._passes[precision] = (tensors, updates)
        return self._passes[precision]

    @property
    def train(self) -> dict:
        """Node name -> tensor of the float32 training pass (BatchNorm with batch statistics)."""
        return self.training_pass()[0]

    @property
    def bn_updates(self) -> list:
        """Running-statistic update ops of the float32 training pass (run only by a trainer step)."""
        return self.training_pass()[1]

    def sum_tensors(self, taps: tuple[str, ...], bn_batch_stats: bool):
        """Per-image spatial sums and Euclidean norms of ``taps``, side by side: two ``[N, sum C]`` tensors.

        One read of each map per reduction and no temporaries: the exact two-pass ``m2``
        (mean, then squared differences) read it three times and made the TF scoring pass
        ~1.4x an inference pass; ``ClassStats.update_sums`` finishes in float64 on the host.
        Concatenated so a batch costs two fetches, not two per tap (~4% of a digits pass).
        Also returns each tap's channel count and positions per image.
        """
        key = (taps, bn_batch_stats)
        if key not in self._sums:
            acts = self.train if bn_batch_stats else self.infer
            sums, norms = [], []
            with self.tf_graph.as_default(), tf.name_scope("moments"):
                for tap in taps:
                    axes = list(range(1, acts[tap].shape.rank - 1))  # spatial axes of NHWC, none of [N, C]
                    sums.append(tf.reduce_sum(acts[tap], axis=axes))
                    norms.append(tf.math.reduce_euclidean_norm(acts[tap], axis=axes))
                self._sums[key] = (tf.concat(sums, 1), tf.concat(norms, 1),
                                   [int(acts[t].shape[-1]) for t in taps],
                                   [int(np.prod(acts[t].shape[1:-1], dtype=np.int64)) for t in taps])
        return self._sums[key]

    def close(self) -> None:
        """Release the session (the model is unusable afterwards)."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - at interpreter shutdown even contextlib may be gone
            pass


class _CastVariables(Mapping):
    """The variables as a mixed-precision pass reads them: weights, biases and DCFF fusion matrices
    cast to ``dtype`` where they are used (the float32 variables stay the master copy and receive
    the gradients); BatchNorm's parameters and statistics are not cast (:func:`_bn` runs in float32)."""

    def __init__(self, graph: Graph, variables: Mapping[str, tf.Variable], dtype):
        self.graph, self.variables, self.dtype = graph, variables, dtype
        self._cast: dict = {}

    def __getitem__(self, key: str):
        v = self.variables[key]
        if self.graph[key.rsplit(".", 1)[0]].op == "bn":
            return v
        if key not in self._cast:
            self._cast[key] = tf.cast(v, self.dtype)
        return self._cast[key]

    def __iter__(self):
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)


def _mean_nhw(x):
    """Per-channel mean over all axes but the last, summing H*W first and then N.

    A one-level float32 reduction over N*H*W (tens of thousands of values) is
    several times less accurate than PyTorch's; the two-level mean keeps the
    batch statistics within float32 round-off of PyTorch's.
    """
    if x.shape.rank == 4:
        x = tf.reduce_mean(x, axis=[1, 2])
    return tf.reduce_mean(x, axis=0)


def _sum_nhw(x):
    """Per-channel sum over all axes but the last, H*W first and then N (see :func:`_mean_nhw`)."""
    return tf.reduce_sum(tf.reduce_sum(x, axis=[1, 2]), axis=0)


def _sum_square_nhw(centred):
    """Per-channel sum of ``centred ** 2`` (H*W first, then N), reading the map once: a Euclidean
    norm per image needs no map-sized temporary, unlike squaring first."""
    return tf.reduce_sum(tf.square(tf.math.reduce_euclidean_norm(centred, axis=[1, 2])), axis=0)


class _Counts:
    """Values per channel in a batch (``N * H * W``) and that minus one (at least one), as float
    tensors made once per spatial size from one read of the batch size: per BatchNorm they were
    nine scalar ops, a few percent of a training step at batch 1."""

    def __init__(self, x):
        self.x, self.batch, self.made = x, None, {}

    def __call__(self, hw: int):
        if hw not in self.made:
            if self.batch is None:
                self.batch = tf.cast(tf.shape(self.x)[0], tf.float32)
            n = self.batch * float(hw)
            self.made[hw] = (n, tf.maximum(n - 1.0, 1.0))
        return self.made[hw]


@functools.cache
def _no_gpu() -> bool:
    """Whether TensorFlow sees no GPU (asked once, when the first training pass is built)."""
    return not tf.config.list_physical_devices("GPU")


def _batch_normalise(centred, gamma, beta, var, eps: float, fused_grad: bool | None = None):
    """``centred / sqrt(var + eps) * gamma + beta`` of an NHWC map ``centred`` (its batch mean
    subtracted; ``var`` its biased batch variance), with the batch-statistics gradient.

    The forward is ``fused_batch_norm`` in inference mode (one read and write of the map). Its
    registered gradient treats the statistics as constants, so the gradient is given here:
    TensorFlow's fused training-mode gradient kernel fed these statistics (``fused_grad``; by
    default when TensorFlow sees no GPU: the kernel reads them as the mean and biased variance
    on CPU, with and without oneDNN, but as cuDNN's inverse deviation on a GPU), or
    ``dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))`` written out. Differentiating
    the unfused expression instead, as before, built ~14 elementwise ops and reductions over
    whole maps per BatchNorm: a ResNet-20 training step at batch 128 with oneDNN cost 1.3x a
    fused-BatchNorm network's (CPU time), the written-out gradient 1.3x, the fused kernel 1.02x.
    """
    zero = tf.zeros_like(var)
    fused_grad = _no_gpu() if fused_grad is None else fused_grad

    @tf.custom_gradient
    def normalise(centred, gamma, beta):
        y = _V1.nn.fused_batch_norm(centred, gamma, beta, zero, var, epsilon=eps, is_training=False)[0]

        def grad(dy):
            if fused_grad:
                dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=dy, x=centred, scale=gamma, reserve_space_1=zero, reserve_space_2=var,
                    reserve_space_3=tf.zeros([0]), epsilon=eps, data_format="NHWC", is_training=True)
                return dx, dgamma, dbeta
            rstd = tf.math.rsqrt(var + eps)
            dbeta = _sum_nhw(dy)
            dcentred = _sum_nhw(dy * centred)
            k = gamma * rstd
            n = tf.cast(tf.size(centred) // tf.shape(centred)[-1], tf.float32)
            dx = dy * k - (dbeta * k / n) - centred * (dcentred * rstd * rstd * k / n)
            return dx, dcentred * rstd, dbeta
        return y, grad
    return normalise(centred, gamma, beta)


def _bn(x, node, V, mode: str, updates: list, counts: _Counts | None = None):
    """BatchNorm with running statistics (``mode="running"``) or batch statistics.

    ``"batch"`` computes the statistics in two passes (the mean, then the mean square of the
    centred map, each H*W first and then N: see :func:`_mean_nhw`) and normalises the centred
    map with :func:`_batch_normalise`; ``"fused"`` uses ``fused_batch_norm`` in training mode
    (one op, as fast, but its statistics drift from PyTorch's by up to ~3e-5 per layer with
    oneDNN, ~1e-4 on the logits of a 164-layer network). Vectors run as ``[N, 1, 1, C]`` maps.
    ``counts``: the :class:`_Counts` of the pass (``"batch"`` mode).
    """
    a = node.attrs
    if x.dtype != tf.float32:  # mixed precision: normalisation and statistics in float32
        return tf.cast(_bn(tf.cast(x, tf.float32), node, V, mode, updates, counts), x.dtype)
    gamma, beta = V[f"{node.name}.weight"], V[f"{node.name}.bias"]
    rm, rv = V[f"{node.name}.running_mean"], V[f"{node.name}.running_var"]
    eps, m = float(a["eps"]), float(a["momentum"])
    vector = x.shape.rank == 2
    if vector:
        x = tf.reshape(x, [-1, 1, 1, x.shape[-1]])
    if mode == "batch":
        # the statistics are constants to autodiff; _batch_normalise's gradient accounts for them
        # (its input gradient has zero mean per channel, so subtracting the mean passes it unchanged)
        mean = tf.stop_gradient(_mean_nhw(x))
        centred = x - mean
        squares = tf.stop_gradient(_sum_square_nhw(centred))
        n, n_1 = counts(int(np.prod(x.shape[1:3])))
        var, unbiased = squares / n, squares / n_1  # the biased variance normalises
        y = _batch_normalise(centred, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta), var, eps)
    elif mode == "fused":
        # training mode returns the unbiased batch variance (what the running variance averages)
        y, mean, unbiased = _V1.nn.fused_batch_norm(x, gamma, beta, epsilon=eps, is_training=True)
    else:
        y, _, _ = _V1.nn.fused_batch_norm(x, gamma, beta, rm, rv, epsilon=eps, is_training=False)
    if vector:
        y = tf.reshape(y, [-1, y.shape[-1]])
    if mode != "running":
        updates.append(rm.assign(rm * (1.0 - m) + mean * m, read_value=False))
        updates.append(rv.assign(rv * (1.0 - m) + unbiased * m, read_value=False))
    return y


def _conv(x, node, V, cin: int):
    """A conv node on NHWC ``x``, built only from kernels every device has.

    TensorFlow's CPU kernels without oneDNN (the default on many CPUs) have no dilated
    convolution gradient, no grouped convolution gradient and no depthwise convolution
    with unequal strides; oneDNN and cuDNN have all three. So a dilated conv runs its
    undilated kernel on the space-to-batch phases of the map (exact: each phase is the
    map subsampled by the rate), grouped convs run group by group, and unequal depthwise
    strides are rewritten as equal ones (:func:`_depthwise`).
    """
    a = node.attrs
    w = V[f"{node.name}.weight"]  # HWIO
    fusion = V.get(f"{node.name}.fusion")  # DCFF: [n, out] in TF layout (the dense transpose)
    if fusion is not None:
        w = tf.tensordot(w, fusion, axes=[[3], [0]])
    (pt, pl, pb, pr), (sh, sw), (dh, dw) = pads(a), a["stride"], a["dilation"]
    g = int(a["groups"])
    dilated = dh > 1 or dw > 1
    padding = "VALID"
    if (pt or pl or pb or pr) and not dilated and (sh == sw or g != cin) and _same_is(x, a["k"], (sh, sw),
                                                                                     (pt, pl, pb, pr)):
        # 'SAME' where it pads exactly as the graph says: the convolution pads inside its kernel; a
        # tf.pad before it copies the map, and its gradient slices it back (ResNet-20 inference at
        # batch 128 with oneDNN: 1.4x slower with the pads)
        padding = "SAME"
    elif pt or pl or pb or pr:
        # explicit padding as a pad + VALID conv: same numbers as
        # conv2d(padding=[[0,0],[pt,pb],[pl,pr],[0,0]]) but the gradient gets oneDNN kernels (2x faster)
        x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    if dilated:
        y = tf.nn.with_space_to_batch(
            x, [dh, dw], "VALID", lambda phases, num_spatial_dims, padding: _conv2d(phases, w, (1, 1), g, cin))
        if sh > 1 or sw > 1:  # stride after dilation: the stride-1 output subsampled (rare, exact)
            y = y[:, ::sh, ::sw, :]
    else:
        y = _conv2d(x, w, (sh, sw), g, cin, padding)
    if a["bias"]:
        b = V[f"{node.name}.bias"]
        y = tf.nn.bias_add(y, b if fusion is None else tf.linalg.matvec(fusion, b, transpose_a=True))
    return y


def _same_is(x, k, strides, pads) -> bool:
    """Whether TensorFlow's ``SAME`` padding of NHWC ``x`` is ``pads`` ``(top, left, bottom, right)``."""
    for size, kk, s, before, after in zip(x.shape[1:3], k, strides, pads[:2], pads[2:]):
        total = max((-(-int(size) // s) - 1) * s + kk - int(size), 0)  # SAME puts total // 2 first
        if (before, after) != (total // 2, total - total // 2):
            return False
    return True


def _conv2d(x, w, strides: tuple[int, int], g: int, cin: int, padding: str = "VALID"):
    """An undilated conv of NHWC ``x`` with HWIO ``w`` in ``g`` groups (``padding``: VALID or SAME)."""
    sh, sw = strides
    if g == 1:
        return tf.nn.conv2d(x, w, strides=[1, sh, sw, 1], padding=padding)
    if g == cin:
        # HWIO [kh, kw, 1, cin*m] -> depthwise [kh, kw, cin, m]: output o = c*m + j, as torch groups
        kh, kw = int(w.shape[0]), int(w.shape[1])
        return _depthwise(x, tf.reshape(w, [kh, kw, cin, int(w.shape[3]) // cin]), sh, sw, padding)
    # grouped conv2d has no CPU gradient in TF: split into groups and concatenate
    return tf.concat([tf.nn.conv2d(xi, wi, strides=[1, sh, sw, 1], padding=padding)
                      for xi, wi in zip(tf.split(x, g, axis=3), tf.split(w, g, axis=3))], axis=3)


def _depthwise(x, wd, sh: int, sw: int, padding: str = "VALID"):
    """Depthwise conv with strides ``(sh, sw)``; unequal strides (VALID only) through equal-stride kernels.

    A ``kh x 1`` kernel reads one column: the map's columns move into the channels
    (``[N, H, W, C] -> [N, H, 1, W*C]``, a free reshape in NHWC) with the kernel tiled
    ``W`` times, so the stride along W no longer exists. A ``1 x kw`` kernel reads one row:
    the rows move into the batch. Anything else runs at the common stride and subsamples.
    """
    if sh == sw:
        return tf.nn.depthwise_conv2d(x, wd, [1, sh, sh, 1], padding)
    kh, kw, c, m = (int(v) for v in wd.shape)
    if kw == 1:
        x = x[:, :, ::sw, :]
        cols = int(x.shape[2])
        y = tf.nn.depthwise_conv2d(tf.reshape(x, [-1, int(x.shape[1]), 1, cols * c]),
                                   tf.tile(wd, [1, 1, cols, 1]), [1, sh, sh, 1], "VALID")
        return tf.reshape(y, [-1, int(y.shape[1]), cols, c * m])
    if kh == 1:
        x = x[:, ::sh, :, :]
        rows = int(x.shape[1])
        y = tf.nn.depthwise_conv2d(tf.reshape(x, [-1, 1, int(x.shape[2]), c]), wd, [1, sw, sw, 1], "VALID")
        return tf.reshape(y, [-1, rows, int(y.shape[2]), c * m])
    s = math.gcd(sh, sw)
    return tf.nn.depthwise_conv2d(x, wd, [1, s, s, 1], "VALID")[:, ::sh // s, ::sw // s, :]


def _select(x, node, cin: int):
    s, src = int(node.attrs["stride"]), [int(j) for j in node.attrs["src"]]
    if src == list(range(cin)):
        return x[:, ::s, ::s, :] if s > 1 else x
    if cin > SELECT_CONV_MAX_IN:  # a wide stream: the conv would cost cin MACs per picked value
        if s > 1:
            x = x[:, ::s, ::s, :]
        if min(src) < 0:
            x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, 1]])
            src = [cin if j < 0 else j for j in src]
        return tf.gather(x, src, axis=3)
    # a 1x1 convolution with a 0/1 matrix, not tf.gather: gathering along the innermost axis of
    # NHWC made CDC-pruned ResNet-56 slower than the original at batch 32 (55 vs 44 ms), the
    # convolution makes it faster (39 ms), and picks the same values exactly (x * 1 + 0). Strided,
    # it subsamples too: ResNet-20 inference at batch 128 took 0.92x the CPU time of a strided
    # slice and a channel pad (the hand-written option-A shortcut), a slice before the conv 1.05x
    pick = select_matrix(src, cin).T[None, None]  # HWIO
    return tf.nn.conv2d(x, tf.constant(pick, x.dtype), s, "VALID")


def _diagonal(x, node, V):
    """``y_j = w_j x_j (+ b_j)`` for ``j < n = len(w)``, zeros (+ ``b_j``) up to ``out`` (graph op ``diagonal``)."""
    w, out = V[f"{node.name}.weight"], int(node.attrs["out"])
    n = int(w.shape[0])
    y = x[:, :n] * w
    if out > n:
        y = tf.pad(y, [[0, 0], [0, out - n]])
    if node.attrs["bias"]:
        y = tf.nn.bias_add(y, V[f"{node.name}.bias"])
    return y


def _flatten_nchw(x, dim: int):
    """``[N, dim]`` in NCHW order (so dense weights and projections stay canonical)."""
    if x.shape.rank == 4:
        return tf.reshape(tf.transpose(x, layout.NHWC_TO_NCHW), [-1, dim])
    return x


_ACTIVATIONS = {"relu": tf.nn.relu, "relu6": tf.nn.relu6, "silu": tf.nn.silu, "sigmoid": tf.sigmoid,
                "hardswish": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
                "hardsigmoid": lambda x: tf.nn.relu6(x + 3.0) / 6.0}


def _mul(a, b):
    """``a * b``; a per-channel ``[N, C]`` scale multiplies an NHWC map as ``[N, 1, 1, C]``."""
    if a.shape.rank == 4 and b.shape.rank == 2:
        b = b[:, None, None, :]
    elif b.shape.rank == 4 and a.shape.rank == 2:
        a = a[:, None, None, :]
    return a * b


def _dropout(x, p: float, mode: str, on):
    """Dropout when the trainer feeds ``on`` True: elementwise, or ``row`` (one draw per sample)."""
    if p <= 0.0:
        return x
    shape = tf.shape(x) if mode == "element" else tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1],
                                                                                     tf.int32)], 0)
    keep = tf.cast(tf.random.uniform(shape) >= p, x.dtype) / (1.0 - p)
    return tf.cond(on, lambda: x * keep, lambda: x)


def _adaptive_avgpool(x, oh: int, ow: int):
    """PyTorch's adaptive average pool of an NHWC map: window ``i`` over ``[floor(i H / oh), ceil((i+1) H / oh))``."""
    h, w = int(x.shape[1]), int(x.shape[2])
    if h % oh == 0 and w % ow == 0:
        return tf.nn.avg_pool2d(x, [h // oh, w // ow], [h // oh, w // ow], "VALID")
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        rows.append(tf.stack([tf.reduce_mean(x[:, r0:r1, (j * w) // ow:-(-((j + 1) * w) // ow), :], axis=[1, 2])
                              for j in range(ow)], axis=1))
    return tf.stack(rows, axis=1)


def _forward_pass(graph: Graph, x_nhwc, V, bn_mode: str, updates: list, dropout=None) -> dict:
    """Tensors of every node (NHWC maps, [N, C] vectors); ``dropout``: the boolean tensor that turns
    dropout on (the training pass), None for the inference pass (dropout is the identity)."""
    shapes = graph.shapes()
    t: dict = {}
    counts = _Counts(x_nhwc)
    for node in graph.nodes:
        a, op = node.attrs, node.op
        ins = [t[i] for i in node.inputs]
        with tf.name_scope(_tf_name(node.name, set())):
            if op == "input":
                y = x_nhwc
            elif op == "conv":
                y = _conv(ins[0], node, V, shapes[node.inputs[0]][0])
            elif op == "dense":
                y = tf.matmul(ins[0], V[f"{node.name}.weight"])
                if a["bias"]:
                    y = tf.nn.bias_add(y, V[f"{node.name}.bias"])
            elif op == "diagonal":
                y = _diagonal(ins[0], node, V)
            elif op == "bn":
                y = _bn(ins[0], node, V, bn_mode, updates, counts)
            elif op in _ACTIVATIONS:
                y = _ACTIVATIONS[op](ins[0])
            elif op == "mul":
                y = _mul(*ins)
            elif op == "dropout":
                y = ins[0] if dropout is None else _dropout(ins[0], float(a["p"]), a.get("mode", "element"), dropout)
            elif op == "adaptive_avgpool":
                y = _adaptive_avgpool(ins[0], *a["out"])
            elif op == "add":
                y = tf.add_n(ins) if len(ins) > 1 else ins[0]
            elif op == "concat":
                y = tf.concat(ins, axis=-1) if len(ins) > 1 else ins[0]
            elif op == "gap":
                y = tf.reduce_mean(ins[0], axis=[1, 2], keepdims=bool(a.get("keep", False)))
            elif op == "flatten":
                y = _flatten_nchw(ins[0], shapes[node.name][0])
            elif op in ("maxpool", "avgpool"):
                k, s = a["k"], a["stride"]
                k = [int(k), int(k)] if isinstance(k, int) else [int(v) for v in k]
                s = [int(s), int(s)] if isinstance(s, int) else [int(v) for v in s]
                pool = tf.nn.max_pool2d if op == "maxpool" else tf.nn.avg_pool2d
                p = pads(a)
                x = ins[0]
                (h, w), (oh, ow) = shapes[node.inputs[0]][1:], shapes[node.name][1:]
                # ceil mode: the last window runs past the input; extra bottom/right padding that -inf
                # never lets win (a graph allows it for max-pools only)
                extra = [max(0, (oh - 1) * s[0] + k[0] - h - p[0] - p[2]),
                         max(0, (ow - 1) * s[1] + k[1] - w - p[1] - p[3])]
                if any(p) or extra[0] or extra[1]:
                    # explicit pad + VALID (never 'SAME'): -inf never wins a max, as in PyTorch;
                    # zeros count in an average, PyTorch's count_include_pad=True
                    x = tf.pad(x, [[0, 0], [p[0], p[2] + extra[0]], [p[1], p[3] + extra[1]], [0, 0]],
                               constant_values=-np.inf if op == "maxpool" else 0.0)
                y = pool(x, ksize=k, strides=s, padding="VALID")
            elif op == "select":
                y = _select(ins[0], node, shapes[node.inputs[0]][0])
            else:  # pragma: no cover - Graph validates ops
                raise UserError(f"TF backend: unsupported op '{op}' in node '{node.name}'")
        t[node.name] = y
    return t


class TFTrainer(Trainer):
    """Loss on the training pass + ``MomentumOptimizer``; BN running statistics update in the step.

    In a data-parallel run (``collective`` given) a step is two session runs around one all-reduce:
    the first computes this rank's sums of the per-image terms and their gradients (and the
    BatchNorm updates), the collective sums them with the image count over the ranks, the
    second applies ``sum / count + weight_decay * w`` with the optimiser.
    """

    def __init__(self, model: TFModel, loss: LossSpec, optim: OptimSpec, collective=None):
        self.model, self.loss_spec, self.collective = model, loss, collective
        shared = collective is not None
        g = model.graph
        self._kd = loss.kd_weight > 0
        self._feature = loss.feature_weight > 0
        self._projection: np.ndarray | None = None
        if self._feature:
            g[loss.feature_tap]  # raises a clear error for an unknown layer name
        precision = self._precision = optim.check_precision()
        train, bn_updates = model.training_pass(precision)  # built on first use
        with model.tf_graph.as_default(), tf.name_scope("trainer"):
            self._y = _V1.placeholder(tf.int64, [None], name="labels")
            self._lr = _V1.placeholder(tf.float32, [], name="lr")
            self._teacher = (_V1.placeholder(tf.float32, [None, g.num_classes], name="teacher")
                             if self._kd else None)
            logits = tf.cast(train[g.output], tf.float32)  # every loss term in float32
            terms = {}
            # shared: per-image terms summed over this rank's rows, weight decay added once after the sum
            reduce = tf.reduce_sum if shared else tf.reduce_mean
            if loss.ce_weight > 0:
                ce = reduce(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self._y, logits=logits))
                terms["ce"] = ce if loss.ce_weight == 1.0 else loss.ce_weight * ce
            decayed = [k for k in model.trainable if g[k.rsplit(".", 1)[0]].op in ("conv", "dense", "diagonal")]
            wd = None
            if loss.weight_decay > 0:
                # l2_loss is sum(v^2) / 2 in one op whose gradient is one multiply (a square and a sum
                # had two per variable)
                wd = loss.weight_decay * tf.add_n([tf.nn.l2_loss(model.variables[k]) for k in decayed])
                if not shared:
                    terms["wd"] = wd
            if self._kd:
                T = float(loss.kd_temperature)
                log_ps = tf.nn.log_softmax(logits / T)
                log_pt = tf.nn.log_softmax(self._teacher / T)
                kl = tf.reduce_sum(tf.exp(log_pt) * (log_pt - log_ps), axis=1)
                terms["kd"] = loss.kd_weight * T * T * reduce(kl)
            if self._feature:
                self._dim = int(np.prod(g.shapes()[loss.feature_tap]))
                self._P = _V1.placeholder(tf.float32, [self._dim, None], name="projection")
                self._target = _V1.placeholder(tf.float32, [None, None], name="feature_target")
                z = _flatten_nchw(tf.cast(train[loss.feature_tap], tf.float32), self._dim)
                sq = tf.square(tf.matmul(z, self._P) - self._target)
                terms["feature"] = loss.feature_weight * (tf.reduce_sum(tf.reduce_mean(sq, 1)) if shared
                                                          else tf.reduce_mean(sq))
            if not terms and wd is None:
                raise UserError("loss has no active term (ce_weight, weight_decay, kd_weight and "
                                "feature_weight are all 0)")
            if shared:
                self._shared_graph(terms, wd, decayed)
            else:
                total = tf.add_n(list(terms.values())) if len(terms) > 1 else tf.identity(terms[next(iter(terms))])
                self._fetch = dict(terms, loss=total)
            # one optimiser per (lr group, multiplier) (OptimSpec.lr_group / lr_scale), one gradient pass;
            # a group's factor (set_lr_factors) is fed with every step, 1 by default
            groups = optim.groups(model.trainable)
            self._factor = {g: _V1.placeholder_with_default(1.0, [], name=f"lr_factor_{i}")
                            for i, g in enumerate(dict.fromkeys(g for g, _ in groups.values()))}
            self._factors: dict[str, float] = {}
            opts = {(g, s): _V1.train.MomentumOptimizer((self._lr if s == 1.0 else self._lr * s) * self._factor[g],
                                                        float(optim.momentum), use_nesterov=bool(optim.nesterov))
                    for g, s in dict.fromkeys(groups.values())}
            owner = {k: opts[key] for k, key in groups.items()}
            var_list = [model.variables[k] for k in model.trainable]
            self._loss_scale = _LossScale() if precision == "float16" else None
            if shared and self._loss_scale is not None:
                # the scale would have to agree on skipped steps across ranks; bfloat16 needs no scaling
                raise UserError("float16 with loss scaling is not supported in data-parallel runs: use bfloat16")
            if shared:  # the summed gradients, fed
                grads = list(zip(self._summed, var_list))
            elif self._loss_scale is None:
                grads = next(iter(opts.values())).compute_gradients(total, var_list)
            else:
                grads = self._loss_scale.gradients(next(iter(opts.values())), total, var_list)
            index = {k: i for i, k in enumerate(model.trainable)}
            self._grads = {k: grads[index[k]][0] for k in optim.gradients_of}
            self._last_grads: dict[str, np.ndarray] = {}

            def apply_all():
                return tf.group(*[o.apply_gradients([gv for gv, k in zip(grads, model.trainable) if owner[k] is o])
                                  for o in opts.values()])

            # the fetched terms (and gradients) come from pre-update values
            with tf.control_dependencies(list(self._fetch.values()) + list(self._grads.values())):
                apply = apply_all() if self._loss_scale is None else self._loss_scale.apply(grads, apply_all)
            # BN running statistics update in the same session.run (they read only batch moments
            # and running statistics; no ordering with the weight update is needed)
            self._apply, self._bn_updates = apply, bn_updates
            self._train_op = [apply] + bn_updates
            self._slots = {}
            for k in model.trainable:
                slot = owner[k].get_slot(model.variables[k], "momentum")
                if slot is not None:
                    self._slots[k] = slot
            self._assigner = _Assigner({**self._slots, **(self._loss_scale.variables if self._loss_scale else {})})
            model.session.run(_V1.variables_initializer([v for o in opts.values() for v in o.variables()] +
                                                        ([*self._loss_scale.variables.values()]
                                                         if self._loss_scale else [])))

    def _shared_graph(self, terms: dict, wd, decayed: list[str]) -> None:
        """A data-parallel step's tensors: ``_local`` (this rank's gradient sums, image count and term sums
        in one vector), ``_incoming`` (the vector summed over the ranks, fed), ``_summed`` (each
        variable's gradient of the global batch) and ``_fetch`` (the global batch's loss terms)."""
        m = self.model
        variables = [m.variables[k] for k in m.trainable]
        self._terms = list(terms)
        total = tf.add_n(list(terms.values())) if terms else None
        local = (tf.gradients(total, variables) if total is not None else [None] * len(variables))
        local = [tf.zeros_like(v) if d is None else tf.convert_to_tensor(d) for d, v in zip(local, variables)]
        head = [tf.cast(tf.shape(self._y)[0], tf.float32)] + [terms[k] for k in self._terms]
        self._local = tf.concat([tf.reshape(d, [-1]) for d in local] + [tf.stack(head)], 0)
        self._width = sum(int(np.prod(v.shape)) for v in variables) + len(head)
        self._incoming = _V1.placeholder(tf.float32, [self._width], name="summed")
        count = self._incoming[-len(head)]
        parts = tf.split(self._incoming[:-len(head)], [int(np.prod(v.shape)) for v in variables])
        self._summed = [tf.reshape(p, v.shape) / count for p, v in zip(parts, variables)]
        if wd is not None:
            rate = float(self.loss_spec.weight_decay)
            self._summed = [d + rate * v if k in decayed else d for d, v, k in zip(self._summed, variables, m.trainable)]
        sums = self._incoming[-len(head) + 1:] if self._terms else None
        self._fetch = {k: sums[i] / count for i, k in enumerate(self._terms)}
        if wd is not None:
            self._fetch["wd"] = wd
        order = [k for k in ("ce", "wd", "kd", "feature") if k in self._fetch]
        self._fetch["loss"] = tf.add_n([self._fetch[k] for k in order])

    def set_projection(self, projection: np.ndarray) -> None:
        """The ``[D, k]`` matrix of the feature term, fed with every step."""
        projection = np.asarray(projection, np.float32)
        if self._feature and (projection.ndim != 2 or projection.shape[0] != self._dim):
            raise UserError(f"feature projection has shape {projection.shape}, expected "
                            f"[{self._dim}, k] for layer '{self.loss_spec.feature_tap}'")
        self._projection = projection

    def step(self, x: np.ndarray, y: np.ndarray, lr: float, teacher_logits: np.ndarray | None = None,
             feature_target: np.ndarray | None = None) -> dict[str, float]:
        m = self.model
        feed = {m.x: np.asarray(x, np.float32), self._y: np.asarray(y, np.int64),
                self._lr: float(lr), m.dropout_on: True}
        if self._kd:
            if teacher_logits is None:
                raise UserError("the loss has a distillation term (kd_weight > 0) but no teacher logits were given")
            feed[self._teacher] = np.asarray(teacher_logits, np.float32)
        if self._feature:
            if feature_target is None or self._projection is None:
                raise UserError("the loss has a feature term but no projection or target was given")
            feed[self._P] = self._projection
            feed[self._target] = np.asarray(feature_target, np.float32)
        feed.update({self._factor[g]: f for g, f in self._factors.items()})
        if self.collective is not None:
            # an empty share runs nothing (its BatchNorm moments would be NaN) and adds zeros
            local = (m.session.run([self._local] + self._bn_updates, feed_dict=feed)[0] if len(y)
                     else np.zeros(self._width, np.float32))
            feed = {self._incoming: self.collective.all_reduce([local])[0], self._lr: float(lr)}
            feed.update({self._factor[g]: f for g, f in self._factors.items()})
            _, values, grads = m.session.run([self._apply, self._fetch, self._grads], feed_dict=feed)
            self._last_grads = {k: layout.from_tf(k, v) for k, v in grads.items()}
            return {k: float(v) for k, v in values.items()}
        try:
            _, values, grads = m.session.run([self._train_op, self._fetch, self._grads], feed_dict=feed)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
            if self._precision == "float32" or "kernel" not in str(e).lower():
                raise
            # oneDNN brings bfloat16 kernels of its own; a build or CPU without them lacks some
            raise UserError(f"TensorFlow on this machine has no {self._precision} kernel for an operation of "
                            f"this network ({str(e).splitlines()[0][:160]}); train with precision float32, or "
                            f"with oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)") from None
        self._last_grads = {k: layout.from_tf(k, v) for k, v in grads.items()}
        return {k: float(v) for k, v in values.items()}

    def set_lr_factors(self, factors: Mapping[str, float]) -> None:
        self._factors.update(check_lr_groups(factors, self._factor))

    def gradients(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._last_grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        values = self.model.session.run(self._slots)
        out = {f"momentum/{k}": layout.from_tf(k, v).astype(np.float32) for k, v in values.items()}
        if self._loss_scale is not None:
            out.update({k: np.array([v], np.float32)
                        for k, v in self.model.session.run(self._loss_scale.variables).items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore momentum buffers; a parameter without a buffer in ``state`` restarts at zero."""
        shapes = self.model.graph.param_shapes()
        tf_values = {}
        for key, value in state.items():
            if key.startswith("loss_scale/"):  # float16 only; a float32 run resuming a float16 one ignores it
                if self._loss_scale is not None and key in self._loss_scale.variables:
                    tf_values[key] = np.asarray(value, np.float32).reshape(())
                continue
            name = key[len("momentum/"):] if key.startswith("momentum/") else None
            if name not in self._slots:
                raise UserError(f"optimizer state: unexpected entry '{key}' for model '{self.model.graph.arch}'")
            value = np.asarray(value, np.float32)
            if tuple(value.shape) != shapes[name]:
                raise UserError(f"optimizer state: '{key}' has shape {tuple(value.shape)}, "
                                f"expected {shapes[name]}")
            tf_values[name] = layout.to_tf(name, value)
        for name, slot in self._slots.items():
            if name not in tf_values:
                tf_values[name] = np.zeros(slot.shape, np.float32)
        self._assigner.run(self.model.session, tf_values)


class _LossScale:
    """Dynamic loss scaling of a float16 training step (:data:`backends.base.LOSS_SCALE`, PyTorch's
    ``GradScaler`` rule): the loss is multiplied by the scale before differentiation and the
    gradients divided by it; a step with a non-finite gradient is skipped and halves the scale;
    ``growth_interval`` finite steps in a row double it."""

    def __init__(self):
        c = LOSS_SCALE
        self.c = c
        # plain variables (unique names): several trainers may train one model in turn
        self.scale = _V1.Variable(float(c["init"]), trainable=False, name="loss_scale", use_resource=True)
        self.good = _V1.Variable(0.0, trainable=False, name="good_steps", use_resource=True)
        self.variables = {"loss_scale/scale": self.scale, "loss_scale/good_steps": self.good}
        self.finite = None

    def gradients(self, opt, total, var_list) -> list:
        scaled = opt.compute_gradients(total * self.scale, var_list)
        grads = [(g / self.scale if g is not None else None, v) for g, v in scaled]
        self.finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads if g is not None])
        return grads

    def apply(self, grads, apply_all):
        """The update when every gradient is finite (else nothing), then the scale's update."""
        c = self.c
        step = tf.cond(self.finite, apply_all, tf.no_op)
        with tf.control_dependencies([step]):
            good = tf.where(self.finite, self.good + 1.0, 0.0)
            grow = good >= float(c["growth_interval"])
            scale = tf.where(self.finite, tf.where(grow, self.scale * c["growth"], self.scale),
                             self.scale * c["backoff"])
            return tf.group(self.scale.assign(scale), self.good.assign(tf.where(grow, 0.0, good)))


class TFBackend(Backend):
    name = "tf"

    def __init__(self, intra_threads: int | None = None, inter_threads: int = 2, fused_bn: bool = False):
        """``fused_bn``: training-pass BatchNorm as one fused op (faster, less exact; see :func:`_bn`)."""
        self.intra_threads = int(intra_threads or os.cpu_count() or 1)
        self.gpu = ""  # in a data-parallel run on GPUs: this process's (torchrun's LOCAL_RANK)
        self.inter_threads = int(inter_threads)
        self.fused_bn = bool(fused_bn)

    def build(self, graph: Graph, params: Mapping[str, np.ndarray] | None = None) -> TFModel:
        params = init_params(graph) if params is None else params
        check_params(graph, params)
        tf_values = {k: layout.to_tf(k, np.asarray(params[k], np.float32)) for k in graph.param_shapes()}
        tf_graph = tf.Graph()
        with tf_graph.as_default():
            variables, taken = {}, set()
            with _V1.variable_scope("params"):
                for k, v in tf_values.items():
                    variables[k] = _V1.get_variable(
                        _tf_name(k, taken), shape=v.shape, dtype=tf.float32,
                        initializer=_V1.zeros_initializer(), trainable=not Graph.is_buffer(k),
                        use_resource=True)
            x = _V1.placeholder(tf.float32, [None, *graph.input_shape], name="input")
            x_nhwc = tf.transpose(x, layout.NCHW_TO_NHWC) if len(graph.input_shape) == 3 else x
            with tf.name_scope("infer"):
                infer = _forward_pass(graph, x_nhwc, variables, "running", updates=[])
            assigner = _Assigner(variables)
        session = _V1.Session(graph=tf_graph, config=session_config(self.intra_threads, self.inter_threads, self.gpu))
        assigner.run(session, tf_values)  # assigning a resource variable also initialises it
        model = TFModel(graph, tf_graph, session, x, x_nhwc, infer, variables, assigner)
        model.fused_bn = self.fused_bn
        return model

    def get_weights(self, model: TFModel, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All parameters and buffers, or only those in ``names`` (a proximal step reads a few per step)."""
        values = model.session.run(pick(model.variables, names, model.graph.arch))
        return {k: layout.from_tf(k, v).astype(np.float32, copy=False) for k, v in values.items()}

    def set_weights(self, model: TFModel, params: Mapping[str, np.ndarray], strict: bool = True) -> None:
        if strict:
            check_params(model.graph, params)
        else:
            shapes = model.graph.param_shapes()
            for k, v in params.items():
                if k not in shapes:
                    raise UserError(f"weights: model '{model.graph.arch}' has no parameter '{k}'")
                if tuple(np.shape(v)) != shapes[k]:
                    raise UserError(f"weights: '{k}' has shape {tuple(np.shape(v))}, "
                                    f"model '{model.graph.arch}' expects {shapes[k]}")
        model.assigner.run(model.session, {k: layout.to_tf(k, np.asarray(v, np.float32))
                                           for k, v in params.items()})

    def forward(self, model: TFModel, x: np.ndarray, taps: Sequence[str] = (),
                bn_batch_stats: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        tensors = model.train if bn_batch_stats else model.infer
        for n in taps:
            model.graph[n]
        fetch = {n: tensors[n] for n in taps}
        logits, out = model.session.run([tensors[model.graph.output], fetch],
                                        feed_dict={model.x: np.asarray(x, np.float32)})
        return layout.nhwc_to_nchw(logits), {n: layout.nhwc_to_nchw(v) for n, v in out.items()}

    def spatial_sums(self, model: TFModel, x: np.ndarray, taps: Sequence[str] = (), bn_batch_stats: bool = False):
        for n in taps:
            model.graph[n]
        if not taps:
            return {}
        sums, norms, widths, counts = model.sum_tensors(tuple(taps), bn_batch_stats)
        s, q = model.session.run([sums, norms], feed_dict={model.x: np.asarray(x, np.float32)})
        cuts = np.cumsum(widths)[:-1]
        return {n: (a, b, c) for n, a, b, c in zip(taps, np.split(s, cuts, 1), np.split(q, cuts, 1), counts)}

    def trainer(self, model: TFModel, loss: LossSpec, optim: OptimSpec | None = None) -> TFTrainer:
        return TFTrainer(model, loss, optim or OptimSpec(), self.collective)

    def init_distributed(self, rank: int, world: int, workers: Sequence[str] | None = None, joined=None):
        """A ``tf.distribute.Server`` of the cluster ``workers`` (``host:port`` of every rank, in rank
        order) and TensorFlow's collective ops over it; ``OMP_NUM_THREADS``, when set, bounds the
        threads of every session of this process (several processes share a machine)."""
        from backends.tf.distributed import TFCollective

        if not workers or len(workers) != world:
            raise UserError(f"a TensorFlow run of {world} processes needs the address of each (TF_CONFIG)")
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            self.intra_threads = int(threads)
        if "LOCAL_RANK" in os.environ and tf.config.list_physical_devices("GPU"):
            self.gpu = os.environ["LOCAL_RANK"]  # one GPU per process, as torchrun gives torch
        self.collective = joined or TFCollective(rank, world, list(workers),
                                                 session_config(self.intra_threads, 2, self.gpu))
        return self.collective

    export_formats = ("savedmodel", "tflite", "keras")

    def export(self, graph, params, path, fmt, quantize=None):
        """``savedmodel`` (a directory), ``tflite`` (``quantize="dynamic"``: dynamic-range int8 weights)
        or ``keras`` (a ``.keras`` file): NCHW input ``input``, output ``logits``, BatchNorm folded;
        see :mod:`backends.tf.export`."""
        if fmt not in self.export_formats:
            return super().export(graph, params, path, fmt)
        from backends.tf.export import export

        export(graph, params, path, fmt, quantize)

    def load_exported(self, path, fmt):
        if fmt not in self.export_formats:
            return super().load_exported(path, fmt)
        from backends.tf.export import load

        return load(path, fmt)
