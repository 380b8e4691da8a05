"""Import TensorFlow models as a :class:`~compress_core.ir.graph.Graph`: Keras 3 models
(:func:`from_keras`) and TF1 graphs (:func:`from_graph_def`, :func:`from_checkpoint`).

Every layer or op becomes graph nodes in the canonical layout (OIHW kernels, ``[out, in]``
dense weights, NCHW maps), and the result computes the same logits as the TensorFlow model:

* ``padding="same"`` pads bottom/right more at stride 2 in TensorFlow: the node gets that
  exact asymmetric ``pad=(top, left, bottom, right)``; ``ZeroPadding2D`` / ``Pad`` is folded
  into the conv or pool that reads it (a max-pool only when its input cannot be negative, where
  zeros and the max-pool's -inf padding give the same maximum), anything else reading it is an error;
* ``Flatten`` of an NHWC map orders values ``(h, w, c)``, the graph's flatten ``(c, h, w)``: the
  dense layer after it gets its weight columns permuted to match (as do BatchNorm entries
  and concatenations between them);
* input preprocessing (``Rescaling``, ``Normalization``: a per-channel affine map) is folded
  into the first conv when that is exact (a pure scale, or a conv without zero padding), and
  otherwise becomes a 1x1 depthwise conv with bias named after the layer (2 C parameters that
  replace Keras' non-trainable mean and variance);
* a softmax that produces the model's output is left out: graphs output logits (every method
  trains on softmax cross-entropy of the logits; the TensorFlow model's probabilities are their
  softmax, its predictions their argmax). A softmax anywhere else is an error.

Keras layers keep their names (``conv1_conv.weight``, ``conv1_bn.running_var``, ...); a
``SeparableConv2D`` ``s`` becomes the depthwise conv ``s.depthwise`` and the 1x1 conv ``s``;
an ``activation=`` argument becomes a node ``<layer>.<activation>``. In a TF1 graph a conv,
dense or BatchNorm node is named after the scope of its weight variable (``conv1/weights`` ->
``conv1``, with ``/`` written ``.``), other nodes after their op.

Anything not listed in the README's "Bring your own TensorFlow model" section is a one-line
:class:`UserError` naming the layer (or op) and its type.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core.errors import UserError
from compress_core.ir.graph import (
    BN_MOMENTUM,
    Graph,
    Node,
    drop_unused,
    fresh_name,
    pad_attr,
)

# ops whose output is never negative: a zero padding before a max-pool of them cannot win the max
_NONNEGATIVE = ("relu", "relu6", "sigmoid", "hardsigmoid")
# ops whose output is never negative when every input is not
_KEEPS_SIGN = ("maxpool", "avgpool", "gap", "dropout", "flatten", "concat", "add", "mul", "adaptive_avgpool")


@dataclass
class _Value:
    """A tensor of the imported model: the graph node holding it and what is still to be applied.

    ``pad``: zero padding ``(top, left, bottom, right)`` (``ZeroPadding2D`` / ``Pad``) that the
    conv or pool reading it takes into its own pad; ``affine``: per-channel ``(scale, offset)`` of
    input preprocessing, applied before ``pad``, folded into the conv reading it when exact;
    ``perm``: a vector flattened from an NHWC map holds framework entry ``i`` at graph entry
    ``perm[i]``; ``softmax``: the node's softmax (allowed only as the output); ``layout``: a TF1
    map's data format. ``made_by`` names the layer that left something pending (for errors),
    ``affine_by`` the (last) preprocessing layer, whose name a materialised affine map takes.
    """

    node: str
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    affine: tuple[np.ndarray, np.ndarray] | None = None
    affine_by: str = ""
    perm: np.ndarray | None = None
    softmax: bool = False
    layout: str = "NHWC"
    made_by: str = ""

    def but(self, **changes) -> _Value:
        return _Value(**{**self.__dict__, **changes})


def _same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'SAME': ``ceil(size / stride)`` outputs, the extra pixel of an odd total at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v) -> tuple[int, int]:
    v = tuple(int(x) for x in (v if isinstance(v, list | tuple) else (v, v)))
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


class _Builder:
    """Graph nodes and canonical parameters of an imported model, built value by value."""

    def __init__(self, input_shape: tuple[int, int, int], what: str):
        self.input_shape, self.what = input_shape, what
        self.nodes: list[Node] = [Node("input", "input")]
        self.params: dict[str, np.ndarray] = {}
        self.taken = {"input"}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._affine_nodes: dict[str, str] = {}  # preprocessing already applied: "<node>|<layer>" -> its node

    # -- bookkeeping ----------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        return fresh_name(name, self.taken)

    def add(self, op: str, name: str, inputs: Sequence[str], **attrs) -> str:
        name = self.unique(name)
        self.nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    def param(self, name: str, value) -> None:
        self.params[name] = np.ascontiguousarray(value, np.float32)

    def shape(self, node: str) -> tuple[int, ...]:
        if node not in self._shapes:
            self._shapes = Graph("probe", self.input_shape, list(self.nodes), node).shapes()
        return self._shapes[node]

    def node_of(self, name: str) -> Node:
        return next(n for n in reversed(self.nodes) if n.name == name)

    def nonnegative(self, node: str) -> bool:
        n = self.node_of(node)
        if n.op in _NONNEGATIVE:
            return True
        return n.op in _KEEPS_SIGN and all(self.nonnegative(i) for i in n.inputs)

    def fail(self, layer: str, kind: str, why: str):
        raise UserError(f"cannot import {self.what} '{layer}' ({kind}): {why}")

    # -- what a reader needs ----------------------------------------------------------------------
    def plain(self, v: _Value, layer: str, kind: str, vector_ok: bool = False) -> str:
        """The node of ``v`` for a reader that takes nothing pending (no padding, no softmax)."""
        if v.softmax:
            self.fail(layer, kind, "reads a softmax; only the model's output may be a softmax")
        if any(v.pad):
            self.fail(layer, kind, f"reads the zero padding of '{v.made_by}'; only a convolution or a pool can "
                                   f"take it")
        if v.perm is not None and not vector_ok:
            self.fail(layer, kind, f"reads the flattened NHWC map of '{v.made_by}' (only dense, BatchNorm, "
                                   f"dropout, activations and concatenations can)")
        return self.apply_affine(v) if v.affine is not None else v.node

    def apply_affine(self, v: _Value) -> str:
        """The preprocessing of ``v`` as a 1x1 depthwise conv with bias (exact, where folding is not)."""
        key = f"{v.node}|{v.affine_by}"
        if key not in self._affine_nodes:
            scale, offset = v.affine
            c = len(scale)
            name = self.add("conv", v.affine_by, [v.node], out=c, k=(1, 1), stride=(1, 1), pad=(0, 0),
                            dilation=(1, 1), groups=c, bias=True)
            self.param(f"{name}.weight", scale.reshape(c, 1, 1, 1))
            self.param(f"{name}.bias", offset)
            self._affine_nodes[key] = name
        return self._affine_nodes[key]

    # -- operators ---------------------------------------------------------------------------------
    def conv(self, layer: str, kind: str, v: _Value, weight: np.ndarray, bias: np.ndarray | None, stride,
             padding, dilation=(1, 1), groups: int = 1) -> str:
        """A conv of OIHW ``weight``; ``padding``: ``"valid"``, ``"same"`` or ``(top, left, bottom, right)``."""
        stride, dilation = _pair(stride), _pair(dilation)
        weight = np.asarray(weight)
        k = tuple(int(s) for s in weight.shape[2:])
        x = v.node
        if v.softmax or v.perm is not None:
            self.plain(v, layer, kind)
        if v.affine is not None:
            own_pad = padding if isinstance(padding, tuple) else (0,) * 4 if padding == "valid" else None
            scale, offset = v.affine
            exact = not offset.any() or (not any(v.pad) and own_pad == (0, 0, 0, 0))
            if exact:  # W * scale on the input channels; the offset through the kernel into the bias
                cin = weight.shape[1]
                channel = (np.arange(weight.shape[0])[:, None] // (weight.shape[0] // groups)) * cin + np.arange(cin)
                out = weight.astype(np.float64)
                shift = (out * offset[channel][:, :, None, None]).sum(axis=(1, 2, 3))
                weight = out * scale[channel][:, :, None, None]
                if offset.any():
                    bias = (np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)) + shift
            else:
                x = self.apply_affine(v)
        c, h, w = self.shape(x)
        if c != weight.shape[1] * groups:
            self.fail(layer, kind, f"has {weight.shape[1] * groups} input channels, its input {c}")
        t, left, b, r = v.pad
        h, w = h + t + b, w + left + r
        if padding == "same":
            (pt, pb), (pl, pr) = (_same_pads(s, kk, st, d) for s, kk, st, d in zip((h, w), k, stride, dilation))
        elif padding == "valid":
            pt = pl = pb = pr = 0
        else:
            pt, pl, pb, pr = padding
        name = self.add("conv", layer, [x], out=int(weight.shape[0]), k=k, stride=stride,
                        pad=pad_attr((t + pt, left + pl, b + pb, r + pr)), dilation=dilation, groups=int(groups),
                        bias=bias is not None)
        self.param(f"{name}.weight", weight)
        if bias is not None:
            self.param(f"{name}.bias", bias)
        return name

    def pool(self, layer: str, kind: str, op: str, v: _Value, k, stride, padding) -> str:
        """A max- or average pool; ``padding``: ``"valid"`` or ``"same"`` (TensorFlow's: the average
        leaves its padding out of the count, which only a pool that needs none can do here)."""
        k, stride = _pair(k), _pair(stride)
        x = self.plain(v.but(pad=(0, 0, 0, 0)), layer, kind)
        if any(v.pad) and op == "maxpool" and not self.nonnegative(x):
            self.fail(layer, kind, f"max-pools the zero padding of '{v.made_by}' over values that can be negative "
                                   f"(the zeros could win the max)")
        _, h, w = self.shape(x)
        t, left, b, r = v.pad
        same = [(0, 0), (0, 0)]
        if padding == "same":
            same = [_same_pads(s, kk, st) for s, kk, st in zip((h + t + b, w + left + r), k, stride)]
            if op == "avgpool" and any(sum(same, ())):
                self.fail(layer, kind, "averages with padding='same' on a map that needs padding (TensorFlow leaves "
                                       "the padding out of the count); pad with ZeroPadding2D and use 'valid'")
        pad = (t + same[0][0], left + same[1][0], b + same[0][1], r + same[1][1])
        if max(2 * p - k[i % 2] for i, p in enumerate(pad)) > 0:
            self.fail(layer, kind, f"pads {pad} more than half its window {k}")
        return self.add(op, layer, [x], k=k, stride=stride, pad=pad_attr(pad))

    def flatten(self, layer: str, kind: str, v: _Value) -> _Value:
        x = self.plain(v, layer, kind)
        shape = self.shape(x)
        name = self.add("flatten", layer, [x])
        if len(shape) != 3 or v.layout == "NCHW" or shape[1] * shape[2] == 1:
            return _Value(name, made_by=layer)
        c, h, w = shape
        perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()  # NHWC entry i -> graph entry
        return _Value(name, perm=perm, made_by=layer)

    def dense(self, layer: str, kind: str, v: _Value, weight: np.ndarray, bias: np.ndarray | None) -> str:
        """A dense layer of ``[out, in]`` ``weight`` in the framework's input order."""
        x = self.plain(v, layer, kind, vector_ok=True)
        if len(self.shape(x)) != 1:
            self.fail(layer, kind, f"reads a map of shape {self.shape(x)}; only vectors (after a Flatten or a "
                                   f"global pool) are supported")
        if weight.shape[1] != self.shape(x)[0]:
            self.fail(layer, kind, f"has {weight.shape[1]} inputs, its input {self.shape(x)[0]}")
        if v.perm is not None:
            w = np.empty_like(weight)
            w[:, v.perm] = weight
            weight = w
        name = self.add("dense", layer, [x], out=int(weight.shape[0]), bias=bias is not None)
        self.param(f"{name}.weight", weight)
        if bias is not None:
            self.param(f"{name}.bias", bias)
        return name

    def bn(self, layer: str, kind: str, v: _Value, gamma, beta, mean, var, eps: float, momentum: float) -> _Value:
        x = self.plain(v, layer, kind, vector_ok=True)
        name = self.add("bn", layer, [x], eps=float(eps), momentum=float(momentum))
        for p, value in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var)):
            value = np.asarray(value)
            if v.perm is not None:
                value = value[np.argsort(v.perm)]
            self.param(f"{name}.{p}", value)
        return _Value(name, perm=v.perm, layout=v.layout, made_by=v.made_by)

    def elementwise(self, layer: str, kind: str, op: str, v: _Value, **attrs) -> _Value:
        if op == "softmax":
            self.plain(v, layer, kind, vector_ok=True)
            return v.but(softmax=True, made_by=layer)
        name = self.add(op, layer, [self.plain(v, layer, kind, vector_ok=True)], **attrs)
        return _Value(name, perm=v.perm, layout=v.layout, made_by=v.made_by)

    def merge(self, layer: str, kind: str, op: str, vs: Sequence[_Value]) -> _Value:
        """``add``, ``mul`` or ``concat`` (along channels) of ``vs``."""
        xs = [self.plain(v, layer, kind, vector_ok=True) for v in vs]
        perms = [v.perm for v in vs]
        perm = None
        if op == "concat" and any(p is not None for p in perms):
            sizes = [self.shape(x)[0] for x in xs]
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            perm = np.concatenate([(np.arange(n) if p is None else p) + o for p, n, o in zip(perms, sizes, offsets)])
        elif op != "concat" and any(p is not None for p in perms):
            if any(p is None or not np.array_equal(p, perms[0]) for p in perms):
                self.fail(layer, kind, "combines flattened NHWC maps with other vectors")
            perm = perms[0]
        if len({len(self.shape(x)) for x in xs}) > 1 and op != "mul":
            self.fail(layer, kind, f"combines inputs of shapes {[self.shape(x) for x in xs]}")
        name = self.add(op, layer, xs)
        self.shape(name)  # the graph's shape rule names what does not fit
        return _Value(name, perm=perm, layout=vs[0].layout, made_by=vs[0].made_by)

    def to_map(self, layer: str, kind: str, v: _Value) -> _Value:
        """A vector ``(C,)`` as the map ``(C, 1, 1)`` (the squeeze-and-excitation reshape): the global
        pool that made it, keeping its dimensions."""
        x = self.plain(v, layer, kind)
        n = self.node_of(x)
        if n.op != "gap":
            self.fail(layer, kind, "reshapes a vector into a 1x1 map, supported only right after a global average "
                                   "pool")
        return _Value(self.add("gap", layer, n.inputs, keep=True), made_by=layer)

    def finish(self, out: _Value, arch: str, want: tuple[int, ...] | None) -> tuple[Graph, dict[str, np.ndarray]]:
        x = self.plain(out.but(softmax=False), "output", "of the model")
        graph = drop_unused(Graph(arch, self.input_shape, self.nodes, x,
                                  {"dropped_output_softmax": True} if out.softmax else {}))
        have = graph.shapes()[graph.output]
        if want is not None and have != want:
            raise UserError(f"the imported {self.what} gives outputs of shape {have}, the model {want}")
        return graph, {k: self.params[k] for k in graph.param_shapes()}


# ===================================================================================================
# Keras 3
# ===================================================================================================
_KERAS_ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "hard_sigmoid": "hardsigmoid",
                      "hard_silu": "hardswish", "hard_swish": "hardswish", "silu": "silu", "swish": "silu",
                      "softmax": "softmax", "linear": None}


def _keras():
    import keras  # after TensorFlow's quiet import in backends/tf/__init__.py

    return keras


def _np(v) -> np.ndarray | None:
    if v is None:
        return None
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v), np.float32)


class _KerasImporter:
    def __init__(self, keras, builder: _Builder):
        self.keras, self.b = keras, builder
        self.used: set[int] = set()

    def fail(self, layer, why: str):
        self.b.fail(layer.name, type(layer).__name__, why)

    def walk(self, fn, inputs: Sequence[_Value]) -> list[_Value]:
        """Run the layer graph of a functional model on ``inputs``; its output values."""
        values = {id(t): v for t, v in zip(fn.inputs, inputs)}
        for depth in sorted(fn._nodes_by_depth, reverse=True):
            for node in fn._nodes_by_depth[depth]:
                layer = node.operation
                if node.is_input:
                    continue
                missing = [t for t in node.input_tensors if id(t) not in values]
                if missing:
                    self.fail(layer, "reads a tensor that is not computed from the model's input (a constant or a "
                                     "second input)")
                ins = [values[id(t)] for t in node.input_tensors]
                outs = self.layer(layer, ins)
                if len(outs) != len(node.output_tensors):
                    self.fail(layer, f"has {len(node.output_tensors)} outputs")
                values.update({id(t): v for t, v in zip(node.output_tensors, outs)})
        return [values[id(t)] for t in fn.outputs]

    def activation(self, layer, v: _Value, fn, name: str | None = None) -> _Value:
        key = getattr(fn, "__name__", str(fn))
        if key not in _KERAS_ACTIVATIONS:
            self.fail(layer, f"has activation '{key}' (supported: {', '.join(sorted(_KERAS_ACTIVATIONS))})")
        op = _KERAS_ACTIVATIONS[key]
        if op is None:
            return v
        return self.b.elementwise(layer.name, type(layer).__name__, op, v) if name is None else \
            self.b.elementwise(name, type(layer).__name__, op, v)

    def layer(self, layer, ins: list[_Value]) -> list[_Value]:
        k, L = self.keras, self.keras.layers
        kind, name = type(layer).__name__, layer.name
        if isinstance(layer, k.Model):  # a model used as a layer (a backbone): its layers, inline
            fn = getattr(layer, "_functional", None) if isinstance(layer, k.Sequential) else layer
            if fn is None or not hasattr(fn, "_nodes_by_depth"):
                self.fail(layer, "is a model without a layer graph (a subclassed or unbuilt model)")
            return self.walk(fn, ins)
        if layer.weights:
            if id(layer) in self.used:
                self.fail(layer, "is called a second time (shared weights)")
            self.used.add(id(layer))
        fmt = getattr(layer, "data_format", "channels_last")
        if fmt not in (None, "channels_last"):
            self.fail(layer, f"has data_format='{fmt}' (channels_last only)")
        if len(ins) != 1 and not isinstance(layer, L.Add | L.Multiply | L.Concatenate):
            self.fail(layer, f"has {len(ins)} inputs")
        v = ins[0]
        b = self.b
        if isinstance(layer, L.SeparableConv2D | L.DepthwiseConv2D | L.Conv2D):
            if isinstance(layer, L.SeparableConv2D | L.DepthwiseConv2D):
                kernel = _np(layer.depthwise_kernel if isinstance(layer, L.SeparableConv2D) else layer.kernel)
                kh, kw, c, m = kernel.shape
                dw = kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
                if isinstance(layer, L.DepthwiseConv2D):
                    y = b.conv(name, kind, v, dw, _np(layer.bias) if layer.use_bias else None, layer.strides,
                               layer.padding, layer.dilation_rate, c)
                else:
                    y = b.conv(f"{name}.depthwise", kind, v, dw, None, layer.strides, layer.padding,
                               layer.dilation_rate, c)
                    y = b.conv(name, kind, _Value(y), _np(layer.pointwise_kernel).transpose(3, 2, 0, 1),
                               _np(layer.bias) if layer.use_bias else None, 1, "valid")
            else:
                if layer.padding not in ("valid", "same"):
                    self.fail(layer, f"has padding='{layer.padding}'")
                y = b.conv(name, kind, v, _np(layer.kernel).transpose(3, 2, 0, 1),
                           _np(layer.bias) if layer.use_bias else None, layer.strides, layer.padding,
                           layer.dilation_rate, int(layer.groups))
            return [self.activation(layer, _Value(y), layer.activation, f"{name}.{layer.activation.__name__}")]
        if isinstance(layer, L.Dense):
            y = b.dense(name, kind, v, _np(layer.kernel).T, _np(layer.bias) if layer.use_bias else None)
            return [self.activation(layer, _Value(y), layer.activation, f"{name}.{layer.activation.__name__}")]
        if isinstance(layer, L.BatchNormalization):
            axis = layer.axis if isinstance(layer.axis, int) else (list(layer.axis) + [None])[0]
            rank = len(b.shape(v.node))
            if axis not in (-1, rank) or getattr(layer, "renorm", False) or getattr(layer, "synchronized", False):
                self.fail(layer, f"normalises axis {layer.axis} (the channel axis -1 only, no renorm)")
            c = int(layer.moving_mean.shape[0])
            gamma = _np(layer.gamma) if layer.scale else np.ones(c, np.float32)
            beta = _np(layer.beta) if layer.center else np.zeros(c, np.float32)
            return [b.bn(name, kind, v, gamma, beta, _np(layer.moving_mean), _np(layer.moving_variance),
                         layer.epsilon, 1.0 - float(layer.momentum))]
        if isinstance(layer, L.Activation):
            return [self.activation(layer, v, layer.activation)]
        if isinstance(layer, L.ReLU):
            mx = None if layer.max_value is None else float(layer.max_value)
            if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0 or mx not in (None, 6.0):
                self.fail(layer, f"has max_value={layer.max_value}, negative_slope={layer.negative_slope}, "
                                 f"threshold={layer.threshold} (ReLU and ReLU6 only)")
            return [b.elementwise(name, kind, "relu" if mx is None else "relu6", v)]
        if isinstance(layer, L.Softmax):
            return [b.elementwise(name, kind, "softmax", v)]
        if isinstance(layer, L.Add | L.Multiply):
            return [b.merge(name, kind, "add" if isinstance(layer, L.Add) else "mul", ins)]
        if isinstance(layer, L.Concatenate):
            rank = len(b.shape(ins[0].node))
            if layer.axis not in (-1, rank):
                self.fail(layer, f"concatenates along axis {layer.axis} (the channel axis -1 only)")
            return [b.merge(name, kind, "concat", ins)]
        if isinstance(layer, L.MaxPooling2D | L.AveragePooling2D):
            op = "maxpool" if isinstance(layer, L.MaxPooling2D) else "avgpool"
            return [_Value(b.pool(name, kind, op, v, layer.pool_size, layer.strides, layer.padding))]
        if isinstance(layer, L.GlobalAveragePooling2D):
            return [_Value(b.add("gap", name, [b.plain(v, name, kind)], keep=bool(layer.keepdims)))]
        if isinstance(layer, L.GlobalMaxPooling2D):  # a max-pool over the whole map
            x = b.plain(v, name, kind)
            _, h, w = b.shape(x)
            y = b.add("maxpool", name, [x], k=(h, w), stride=(h, w), pad=(0, 0))
            return [_Value(y) if layer.keepdims else b.flatten(f"{name}.flatten", kind, _Value(y))]
        if isinstance(layer, L.ZeroPadding2D):
            (t, bottom), (left, r) = (_pair(p) for p in layer.padding)
            p = v.pad
            return [v.but(pad=(p[0] + t, p[1] + left, p[2] + bottom, p[3] + r), made_by=name)]
        if isinstance(layer, L.Flatten):
            return [b.flatten(name, kind, v)]
        if isinstance(layer, L.Reshape):
            return [self.reshape(layer, v)]
        if isinstance(layer, L.Dropout) and not isinstance(layer, L.SpatialDropout2D | L.SpatialDropout1D):
            shape = tuple(layer.noise_shape) if layer.noise_shape is not None else None
            rank = len(b.shape(v.node)) + 1
            if shape not in (None, (None,) + (1,) * (rank - 1)):
                self.fail(layer, f"has noise_shape={layer.noise_shape} (None, or one draw per sample)")
            return [b.elementwise(name, kind, "dropout", v, p=float(layer.rate),
                                  mode="element" if shape is None else "row")]
        if isinstance(layer, L.Rescaling | L.Normalization):
            return [self.preprocessing(layer, v)]
        if isinstance(layer, L.Identity) or type(layer).__name__ == "InputLayer":
            return [v]
        self.fail(layer, "is not supported")

    def reshape(self, layer, v: _Value) -> _Value:
        shape = self.b.shape(self.b.plain(v, layer.name, "Reshape", vector_ok=True))
        target = tuple(-1 if s is None else int(s) for s in layer.target_shape)
        size = int(np.prod(shape))
        if len(target) == 1 and target[0] in (-1, size):
            return v if len(shape) == 1 else self.b.flatten(layer.name, "Reshape", v)
        if len(shape) == 1 and target in ((1, 1, size), (1, 1, -1)):
            return self.b.to_map(layer.name, "Reshape", v)
        self.fail(layer, f"reshapes {shape[1:] + shape[:1] if len(shape) == 3 else shape} to {target} (supported: a "
                         f"flatten, or a vector to (1, 1, C))")

    def preprocessing(self, layer, v: _Value) -> _Value:
        """``Rescaling`` / ``Normalization`` as a per-channel affine map, composed with any before it."""
        if v.node != "input" and v.affine is None:
            self.fail(layer, "is not at the model's input (preprocessing is supported there only)")
        if any(v.pad):
            self.fail(layer, f"comes after the zero padding of '{v.made_by}'")
        c = self.b.input_shape[0]
        if isinstance(layer, self.keras.layers.Rescaling):
            scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (c,)).copy()
            offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (c,)).copy()
        else:
            axis = tuple(layer.axis) if isinstance(layer.axis, list | tuple) else (layer.axis,)
            if axis not in ((-1,), (3,)):
                self.fail(layer, f"normalises axis {layer.axis} (the channel axis -1 only)")
            mean = np.broadcast_to(_np(layer.mean).astype(np.float64).reshape(-1), (c,))
            std = np.maximum(np.sqrt(np.broadcast_to(_np(layer.variance).astype(np.float64).reshape(-1), (c,))),
                             self.keras.config.epsilon())
            scale, offset = (std, mean) if layer.invert else (1.0 / std, -mean / std)
        if v.affine is not None:
            s0, o0 = v.affine
            scale, offset = s0 * scale, o0 * scale + offset
        return v.but(affine=(scale, offset), affine_by=layer.name, made_by=layer.name)


def from_keras(model, arch: str | None = None, input_shape: Sequence[int] | None = None
               ) -> tuple[Graph, dict[str, np.ndarray]]:
    """``(graph, params)`` of a Keras 3 functional or sequential ``model`` (channels_last).

    Parameter names are the Keras layer names (``conv1_conv.weight``); ``arch`` names the
    architecture (default: the model's name). ``input_shape`` ``(C, H, W)`` fills spatial sizes
    the model leaves open (an input of ``(None, None, 3)``); a size it fixes must agree. Raises a
    one-line :class:`UserError` naming the first layer that cannot be imported, and its type.
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise UserError(f"expected a Keras model, got {type(model).__name__}")
    fn = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if fn is None or not hasattr(fn, "_nodes_by_depth"):
        raise UserError(f"the Keras model '{model.name}' ({type(model).__name__}) has no layer graph: build it with "
                        f"the functional API or as a Sequential model that starts with keras.Input")
    if len(fn.inputs) != 1 or len(fn.outputs) != 1:
        raise UserError(f"the Keras model '{model.name}' has {len(fn.inputs)} inputs and {len(fn.outputs)} outputs "
                        f"(one of each is supported)")
    shape = tuple(fn.inputs[0].shape[1:])
    if len(shape) != 3:
        raise UserError(f"the Keras model '{model.name}' takes inputs of shape {shape}, not images (H, W, C)")
    chw = (shape[2], shape[0], shape[1])
    if input_shape is not None:
        given = tuple(int(s) for s in input_shape)
        if len(given) != 3 or any(s is not None and s != g for s, g in zip(chw, given)):
            raise UserError(f"the Keras model '{model.name}' takes inputs of shape {chw} (C, H, W), not {given}")
        chw = given
    if any(s is None for s in chw):
        raise UserError(f"the Keras model '{model.name}' takes inputs of shape {chw} (C, H, W): give the open sizes "
                        f"(input_shape)")
    b = _Builder(tuple(int(s) for s in chw), "Keras layer")
    out = _KerasImporter(keras, b).walk(fn, [_Value("input", made_by="input")])[0]
    want = tuple(fn.outputs[0].shape[1:])
    want = (want[2], want[0], want[1]) if len(want) == 3 else want
    return b.finish(out, arch or model.name, None if None in want else tuple(int(s) for s in want))


def load_keras(path: str):
    """A saved Keras model (``.keras`` or ``.h5``), loaded without compiling and in safe mode (no
    Python code in the file runs); a bad file is a one-line error."""
    if not os.path.isfile(path):
        raise UserError(f"Keras model file not found: {path}")
    keras = _keras()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - a user's file fails in many ways
        raise UserError(f"cannot load the Keras model {path}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") \
            from None


# ===================================================================================================
# TF1 graphs
# ===================================================================================================
@dataclass
class _Array:
    """A constant or variable of a TF1 graph, and the variable (or const) it comes from."""

    value: np.ndarray
    src: str


_TF_ELEMENTWISE = {"Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Softmax": "softmax"}
# ops on constants and variables only (e.g. ``sqrt(variance + eps)`` written into the graph): computed here
_TF_FOLD = {"Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply, "RealDiv": np.divide,
            "Maximum": np.maximum, "Minimum": np.minimum, "Abs": np.abs, "Neg": np.negative, "Sqrt": np.sqrt,
            "Rsqrt": lambda v: 1.0 / np.sqrt(v), "Square": np.square}
_PASS = ("Identity", "StopGradient", "Snapshot", "ReadVariableOp", "PreventGradient")


def _op_name(ref: str) -> str:
    """The op of a tensor reference (``name``, ``name:0``; a control input ``^name``)."""
    return ref.lstrip("^").split(":")[0]


class _TF1Importer:
    def __init__(self, graph_def, input_name: str, variables: Callable[[str, Node], np.ndarray]):
        from tensorflow.python.framework import tensor_util

        self.make_ndarray = tensor_util.MakeNdarray
        self.defs = {n.name: n for n in graph_def.node}
        self.input_name, self.variables = input_name, variables
        self.b: _Builder | None = None
        self.weights_used: set[str] = set()
        self.readers: dict[str, int] = {}
        for n in graph_def.node:
            for ref in n.input:
                if not ref.startswith("^"):
                    self.readers[_op_name(ref)] = self.readers.get(_op_name(ref), 0) + 1

    def fail(self, n, why: str):
        raise UserError(f"cannot import TF1 op '{n.name}' ({n.op}): {why}")

    def order(self, output: str) -> list:
        """The ops ``output`` depends on (data inputs only), inputs first."""
        if output not in self.defs:
            raise UserError(f"the TF1 graph has no op '{output}' (outputs)")
        done, order, stack = set(), [], [(output, False)]
        while stack:
            name, expanded = stack.pop()
            if name in done:
                continue
            if expanded:
                done.add(name)
                order.append(self.defs[name])
                continue
            stack.append((name, True))
            if name == self.input_name:
                continue
            for ref in self.defs[name].input:
                if not ref.startswith("^"):
                    if _op_name(ref) not in self.defs:
                        raise UserError(f"the TF1 graph's op '{name}' reads '{ref}', which is not in the graph")
                    stack.append((_op_name(ref), False))
        return order

    def scope(self, n, weight: _Array | None = None) -> str:
        """The node name of op ``n``: its weight variable's scope (``conv1/weights`` -> ``conv1``), else its own."""
        if weight is not None:
            if weight.src in self.weights_used:
                self.fail(n, f"uses the weights '{weight.src}' a second time (shared weights)")
            self.weights_used.add(weight.src)
        src = weight.src if weight is not None else n.name
        name = src.rsplit("/", 1)[0] if "/" in src else src
        return name.replace("/", ".")

    def run(self, output: str, input_shape: Sequence[int] | None, data_format: str) -> tuple[_Builder, _Value]:
        if self.input_name not in self.defs:
            raise UserError(f"the TF1 graph has no op '{self.input_name}' (inputs)")
        ph = self.defs[self.input_name]
        dims = [d.size for d in ph.attr["shape"].shape.dim] if "shape" in ph.attr else []
        if len(dims) == 4:
            shape = (dims[3], dims[1], dims[2]) if data_format == "NHWC" else tuple(dims[1:])
        else:
            shape = (-1, -1, -1)
        if input_shape is not None:
            given = tuple(int(s) for s in input_shape)
            if len(given) != 3 or any(s not in (-1, g) for s, g in zip(shape, given)):
                raise UserError(f"the TF1 input '{self.input_name}' has shape {shape} (C, H, W), not {given}")
            shape = given
        if min(shape) < 1:
            raise UserError(f"the TF1 input '{self.input_name}' has shape {tuple(dims) or 'unknown'}: give "
                            f"input_shape (C, H, W)")
        self.b = _Builder(tuple(shape), "TF1 op")
        values: dict[str, object] = {self.input_name: _Value("input", layout=data_format, made_by="input")}
        for n in self.order(output):
            if n.name not in values:
                values[n.name] = self.op(n, [values[_op_name(r)] for r in n.input if not r.startswith("^")])
        out = values[output]
        if not isinstance(out, _Value):
            raise UserError(f"the TF1 output '{output}' is a constant, not computed from the input")
        return self.b, out

    # -- ops ---------------------------------------------------------------------------------------
    def arr(self, n, v, what: str) -> _Array:
        if not isinstance(v, _Array):
            self.fail(n, f"takes its {what} from the input's computation (a constant or a variable is supported)")
        return v

    def val(self, n, v) -> _Value:
        if not isinstance(v, _Value):
            self.fail(n, "computes on constants only")
        return v

    def layout(self, n, v: _Value) -> str:
        fmt = n.attr["data_format"].s.decode() if "data_format" in n.attr else "NHWC"
        if fmt not in ("NHWC", "NCHW"):
            self.fail(n, f"has data_format {fmt}")
        if fmt != v.layout:
            self.fail(n, f"reads an {v.layout} map with data_format {fmt}")
        return fmt

    def hw(self, n, key: str, fmt: str) -> tuple[int, int]:
        v = list(n.attr[key].list.i) or [1, 1, 1, 1]
        h, w = (v[1], v[2]) if fmt == "NHWC" else (v[2], v[3])
        if (v[0], v[3] if fmt == "NHWC" else v[1]) != (1, 1):
            self.fail(n, f"has {key} {v} over the batch or channels")
        return h, w

    def padding(self, n, fmt: str):
        mode = n.attr["padding"].s.decode()
        if mode == "EXPLICIT":
            p = list(n.attr["explicit_paddings"].list.i)
            (t, bottom), (left, r) = ((p[2], p[3]), (p[4], p[5])) if fmt == "NHWC" else ((p[4], p[5]), (p[6], p[7]))
            return (t, left, bottom, r)
        return mode.lower()

    def op(self, n, ins: list):
        b, op = self.b, n.op
        if op in ("Placeholder", "PlaceholderWithDefault"):
            self.fail(n, "is a second placeholder (one input only)")
        if op == "Const":
            return _Array(self.make_ndarray(n.attr["value"].tensor), n.name)
        if op in ("VariableV2", "Variable", "VarHandleOp"):
            return _Array(self.variables(n.attr["shared_name"].s.decode() if op == "VarHandleOp" and
                                         n.attr["shared_name"].s else n.name, n), n.name)
        if op in _PASS:
            return ins[0]
        if op in _TF_FOLD and ins and all(isinstance(v, _Array) for v in ins):
            return _Array(np.asarray(_TF_FOLD[op](*(v.value for v in ins)), np.float32), ins[0].src)
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            x, w = self.val(n, ins[0]), self.arr(n, ins[1], "filter")
            fmt = self.layout(n, x)
            cin = b.shape(b.plain(x.but(pad=(0, 0, 0, 0)), n.name, op))[0]
            k = w.value
            if op == "Conv2D":
                weight, groups = k.transpose(3, 2, 0, 1), cin // max(k.shape[2], 1)
            else:
                kh, kw, c, m = k.shape
                weight, groups = k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c
            y = b.conv(self.scope(n, w), op, x, weight, None, self.hw(n, "strides", fmt), self.padding(n, fmt),
                       self.hw(n, "dilations", fmt), groups)
            return _Value(y, layout=fmt)
        if op in ("BiasAdd", "Add", "AddV2"):
            arrays = [v for v in ins if isinstance(v, _Array)]
            if not arrays:
                return b.merge(n.name.replace("/", "."), op, "add", [self.val(n, v) for v in ins])
            x = self.val(n, next(v for v in ins if isinstance(v, _Value)))
            if op == "BiasAdd":
                self.layout(n, x)
            producer = next(_op_name(r) for r, v in zip([r for r in n.input if not r.startswith("^")], ins)
                            if isinstance(v, _Value))
            return self.bias(n, x, arrays[0], producer)
        if op == "AddN":
            return b.merge(n.name.replace("/", "."), op, "add", [self.val(n, v) for v in ins])
        if op in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"):
            x = self.val(n, ins[0])
            self.layout(n, x)
            if n.attr["is_training"].b:
                self.fail(n, "normalises with batch statistics (is_training=True): import the inference graph")
            gamma, beta, mean, var = (self.arr(n, v, "statistics").value for v in ins[1:5])
            return b.bn(self.scope(n, ins[1]), op, x, gamma, beta, mean, var, n.attr["epsilon"].f, BN_MOMENTUM)
        if op in _TF_ELEMENTWISE:
            return b.elementwise(n.name.replace("/", "."), op, _TF_ELEMENTWISE[op], self.val(n, ins[0]))
        if op == "Mul":
            return b.merge(n.name.replace("/", "."), op, "mul", [self.val(n, v) for v in ins])
        if op == "ConcatV2":
            xs, axis = [self.val(n, v) for v in ins[:-1]], int(self.arr(n, ins[-1], "axis").value)
            rank = len(b.shape(xs[0].node)) + 1
            channel = (3 if xs[0].layout == "NHWC" else 1) if rank == 4 else 1
            if axis % rank != channel:
                self.fail(n, f"concatenates along axis {axis} (channels only)")
            return b.merge(n.name.replace("/", "."), op, "concat", xs)
        if op in ("MaxPool", "AvgPool"):
            x = self.val(n, ins[0])
            fmt = self.layout(n, x)
            mode = self.padding(n, fmt)
            y = b.pool(n.name.replace("/", "."), op, "maxpool" if op == "MaxPool" else "avgpool", x,
                       self.hw(n, "ksize", fmt), self.hw(n, "strides", fmt), mode)
            return _Value(y, layout=fmt)
        if op == "Mean":
            x, axes = self.val(n, ins[0]), self.arr(n, ins[1], "axes").value
            spatial = [1, 2] if x.layout == "NHWC" else [2, 3]
            if sorted(int(a) % 4 for a in np.ravel(axes)) != spatial or len(b.shape(x.node)) != 3:
                self.fail(n, f"averages over axes {np.ravel(axes).tolist()} (the spatial axes {spatial} only)")
            keep = bool(n.attr["keep_dims"].b)
            return _Value(b.add("gap", n.name.replace("/", "."), [b.plain(x, n.name, op)], keep=keep),
                          layout=x.layout)
        if op == "MatMul":
            x, w = self.val(n, ins[0]), self.arr(n, ins[1], "weights")
            if n.attr["transpose_a"].b:
                self.fail(n, "has transpose_a")
            weight = w.value if n.attr["transpose_b"].b else w.value.T
            return _Value(b.dense(self.scope(n, w), op, x, weight, None))
        if op in ("Reshape", "Squeeze"):
            return self.reshape(n, self.val(n, ins[0]),
                                None if op == "Squeeze" else self.arr(n, ins[1], "shape").value)
        if op in ("Pad", "PadV2"):
            x, p = self.val(n, ins[0]), self.arr(n, ins[1], "paddings").value.astype(int)
            if op == "PadV2" and float(self.arr(n, ins[2], "value").value) != 0.0:
                self.fail(n, "pads with a value other than zero")
            (t, bottom), (left, r) = (p[1], p[2]) if x.layout == "NHWC" else (p[2], p[3])
            if p.shape != (4, 2) or p[0].any() or (p[3] if x.layout == "NHWC" else p[1]).any():
                self.fail(n, f"pads {p.tolist()} (height and width only)")
            q = x.pad
            return x.but(pad=(q[0] + int(t), q[1] + int(left), q[2] + int(bottom), q[3] + int(r)), made_by=n.name)
        if op == "Transpose":
            x, perm = self.val(n, ins[0]), tuple(int(a) for a in self.arr(n, ins[1], "perm").value)
            if (x.layout, perm) in (("NHWC", (0, 3, 1, 2)), ("NCHW", (0, 2, 3, 1))):
                return x.but(layout="NCHW" if x.layout == "NHWC" else "NHWC")
            self.fail(n, f"transposes an {x.layout} map by {list(perm)} (only NHWC <-> NCHW)")
        self.fail(n, "is not supported")

    def bias(self, n, x: _Value, bias: _Array, producer: str) -> _Value:
        """A bias added to the output of a conv or matmul that nothing else reads: the layer's bias."""
        b = self.b
        i = next((i for i, m in enumerate(b.nodes) if m.name == x.node), 0)
        node = b.nodes[i]
        if (node.op not in ("conv", "dense") or node.attrs["bias"] or any(x.pad) or x.perm is not None
                or self.readers.get(producer, 0) != 1 or any(x.node in m.inputs for m in b.nodes)):
            self.fail(n, "adds a constant to something other than a convolution or matmul it alone reads")
        value = np.ravel(bias.value)
        if value.shape != (node.attrs["out"],):
            self.fail(n, f"adds {bias.value.shape} values to {node.attrs['out']} channels")
        b.nodes[i] = Node(node.name, node.op, node.inputs, {**node.attrs, "bias": True})
        b.param(f"{node.name}.bias", value)
        return x

    def reshape(self, n, x: _Value, target) -> _Value:
        b = self.b
        shape = b.shape(b.plain(x, n.name, n.op, vector_ok=True))
        size = int(np.prod(shape))
        t = None if target is None else tuple(int(s) for s in np.ravel(target))
        if len(shape) == 3 and (t is None or (len(t) == 2 and t[1] in (-1, size))):
            if t is None and (shape[1:] != (1, 1) or sorted(int(a) % 4 for a in n.attr["squeeze_dims"].list.i)
                              != ([1, 2] if x.layout == "NHWC" else [2, 3])):
                self.fail(n, f"squeezes a map of shape {shape}")
            return b.flatten(n.name.replace("/", "."), n.op, x)
        if len(shape) == 1 and t is not None and len(t) == 4 and x.layout == "NHWC" and t[1:3] == (1, 1) \
                and t[3] in (-1, size):
            return b.to_map(n.name.replace("/", "."), n.op, x)
        if len(shape) == 1 and t is not None and len(t) == 2 and t[1] in (-1, size):
            return x
        self.fail(n, f"reshapes {shape} to {t} (a flatten, or a vector to [N, 1, 1, C])")


def _tensor_name(name: str) -> str:
    name = _op_name(name)
    if not name:
        raise UserError("empty TF1 input or output name")
    return name


def from_graph_def(graph_def, inputs, outputs, variables: Mapping[str, np.ndarray] | None = None,
                   input_shape: Sequence[int] | None = None, data_format: str = "NHWC", arch: str | None = None
                   ) -> tuple[Graph, dict[str, np.ndarray]]:
    """``(graph, params)`` of a TF1 ``GraphDef`` from op (or tensor) ``inputs`` to ``outputs`` (one each,
    a name or a one-element list), weights from its ``Const`` ops (a frozen graph) or ``variables``
    (variable name -> array, e.g. a checkpoint's). ``input_shape`` ``(C, H, W)`` fills what the
    placeholder leaves open; ``data_format`` is the input's layout (``NHWC`` or ``NCHW``; ``Transpose``
    ops between them are followed). Raises a one-line :class:`UserError` naming the first op that
    cannot be imported, a variable missing from ``variables``, or one of another shape.
    """
    input_name, output_name = (_tensor_name(_one(v, what)) for v, what in ((inputs, "inputs"), (outputs, "outputs")))
    if data_format not in ("NHWC", "NCHW"):
        raise UserError(f"data_format must be NHWC or NCHW, got {data_format!r}")
    variables = variables or {}

    def read(name: str, n) -> np.ndarray:
        if name not in variables:
            raise UserError(f"the TF1 variable '{name}' is not in the checkpoint")
        value = np.asarray(variables[name], np.float32)
        declared = [d.size for d in n.attr["shape"].shape.dim] if "shape" in n.attr else None
        if declared is not None and tuple(declared) != value.shape:
            raise UserError(f"the TF1 variable '{name}' has shape {value.shape} in the checkpoint, the graph "
                            f"{tuple(declared)}")
        return value

    b, out = _TF1Importer(graph_def, input_name, read).run(output_name, input_shape, data_format)
    return b.finish(out, arch or output_name, None)


def _one(v, what: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple) and len(v) == 1 and isinstance(v[0], str):
        return v[0]
    raise UserError(f"{what} must name one tensor, got {v!r}")


class _Checkpoint(Mapping):
    """The variables of a TF checkpoint, read on demand."""

    def __init__(self, prefix: str):
        import tensorflow as tf

        try:
            self.reader = tf.train.load_checkpoint(prefix)
        except Exception as e:  # noqa: BLE001 - missing, truncated or foreign files
            raise UserError(f"cannot read the TF checkpoint {prefix}: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}") from None
        self.names = self.reader.get_variable_to_shape_map()

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        return self.reader.get_tensor(name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def read_graph_def(path: str):
    """The ``GraphDef`` of a ``.pb`` file, or of the ``MetaGraphDef`` in a ``.meta`` file."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    if not os.path.isfile(path):
        raise UserError(f"TF1 graph file not found: {path}")
    proto = meta_graph_pb2.MetaGraphDef() if path.endswith(".meta") else graph_pb2.GraphDef()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as e:  # noqa: BLE001 - not a protobuf of that type
        raise UserError(f"{path} is not a TF1 {'meta graph' if path.endswith('.meta') else 'GraphDef'} "
                        f"({type(e).__name__})") from None
    graph_def = proto.graph_def if path.endswith(".meta") else proto
    if not graph_def.node:
        raise UserError(f"{path} holds no TF1 graph (no ops)")
    return graph_def


def from_checkpoint(meta_graph, checkpoint: str, inputs, outputs, input_shape: Sequence[int] | None = None,
                    data_format: str = "NHWC", arch: str | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """``(graph, params)`` of a TF1 model saved by ``tf.compat.v1.train.Saver``: its meta graph (a
    ``.meta`` path or a ``MetaGraphDef``) with the variables of ``checkpoint`` (the prefix,
    ``model.ckpt-1000``). See :func:`from_graph_def` for the rest."""
    graph_def = read_graph_def(meta_graph) if isinstance(meta_graph, str) else meta_graph.graph_def
    return from_graph_def(graph_def, inputs, outputs, _Checkpoint(checkpoint), input_shape, data_format, arch)


# ===================================================================================================
# model sources of the command line
# ===================================================================================================
def load_keras_source(path: str, input_shape: Sequence[int], weights: str = "", arch: str | None = None,
                      kwargs: Mapping | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """``model.source = keras:path``: the saved Keras model, ``weights`` (a ``.weights.h5`` file) loaded
    into it first, imported for inputs of ``input_shape``."""
    if kwargs:
        raise UserError(f"model.kwargs {dict(kwargs)} are not used by a keras: source; leave them empty")
    model = load_keras(path)
    if weights:
        try:
            model.load_weights(weights)
        except Exception as e:  # noqa: BLE001 - a user's file fails in many ways
            raise UserError(f"model.weights {weights} does not load into the Keras model {path}: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}") from None
    return from_keras(model, arch, input_shape)


def load_tf1_source(path: str, input_shape: Sequence[int], weights: str = "", arch: str | None = None,
                    kwargs: Mapping | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """``model.source = tf1:path``: a ``.meta`` graph with the checkpoint prefix ``weights``, or a frozen
    ``.pb``; ``kwargs`` name the ``inputs`` and ``outputs`` tensors (and optionally ``data_format``)."""
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - {"inputs", "outputs", "data_format"})
    if unknown or "inputs" not in kwargs or "outputs" not in kwargs:
        raise UserError(f"a tf1: source needs model.kwargs naming its tensors, e.g. \"{{'inputs': 'images', "
                        f"'outputs': 'logits'}}\" (got {sorted(kwargs)})")
    graph_def = read_graph_def(path)
    if path.endswith(".meta") and not weights:
        raise UserError(f"model.source tf1:{path} needs model.weights, the checkpoint prefix (e.g. model.ckpt-1000)")
    variables = _Checkpoint(weights) if weights else None
    return from_graph_def(graph_def, kwargs["inputs"], kwargs["outputs"], variables, input_shape,
                          kwargs.get("data_format", "NHWC"), arch)
