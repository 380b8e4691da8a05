"""A framework-neutral description of a CNN: the one model format of the library.

Both backends build their live models by interpreting a :class:`Graph`, so a
network is defined once (in :mod:`compress_core.ir.zoo` or by a compression method
editing a graph) and is the same network in TensorFlow and in PyTorch. FLOPs,
parameter counts, canonical parameter names and checkpoint compatibility are all
derived from the graph, never from a framework object.

Tensors are described in the canonical layout: feature maps ``(C, H, W)`` (the
batch axis is implicit, NCHW), vectors ``(C,)``.

Operators (``Node.op``) and their attributes:

``input``
    the network input; ``Graph.input_shape`` gives its shape.
``conv``
    ``out`` channels, ``k=(kh, kw)``, ``stride``, ``pad`` (explicit, never 'SAME', whose
    stride-2 split differs between frameworks: ``(ph, pw)`` symmetric, or
    ``(top, left, bottom, right)`` for the asymmetric padding of an imported TensorFlow
    'SAME' or ``ZeroPadding2D``; :func:`pads` reads either),
    ``dilation``, ``groups``, ``bias``. Parameters ``weight [out, in/groups, kh, kw]``
    and optionally ``bias [out]``. A *fused* conv (DCFF) also has ``fused_from=n``
    (``groups`` 1): it keeps ``n`` raw filters ``weight [n, in, kh, kw]`` (and
    ``bias [n]``) and a buffer ``fusion [out, n]``, and computes a plain conv with
    ``fusion @ weight`` and ``fusion @ bias`` (gradients reach all ``n`` filters).
``dense``
    ``out``, ``bias``; input must be a vector. ``weight [out, in]``, ``bias [out]``.
``diagonal``
    a dense layer whose ``[out, in]`` weight is zero off its diagonal, stored
    compactly: ``out``, ``bias``; input a vector ``x`` of ``in`` values;
    ``y_j = weight_j x_j (+ bias_j)`` for ``j < n = min(out, in)``, ``y_j = 0 (+ bias_j)``
    beyond. ``weight [n]``, ``bias [out]``.
``bn``
    batch normalisation over channels of a map or a vector; ``eps`` and
    ``momentum`` (PyTorch convention: ``running = (1-m) running + m batch``;
    running variance uses the unbiased batch variance, as PyTorch does).
    Parameters ``weight`` (gamma), ``bias`` (beta); buffers ``running_mean``,
    ``running_var``.
``relu``, ``relu6``, ``hardswish`` (``x relu6(x + 3) / 6``), ``hardsigmoid``
(``relu6(x + 3) / 6``), ``silu`` (``x sigmoid(x)``), ``sigmoid``: elementwise.
``add`` (elementwise sum of equally shaped inputs), ``mul`` (elementwise product of two
inputs of one shape, or a map ``(C, H, W)`` times a per-channel scale ``(C, 1, 1)`` or
``(C,)``: squeeze-and-excitation), ``concat`` (channels), ``gap`` (global average pool to
a vector; ``keep=True``: to a ``(C, 1, 1)`` map), ``adaptive_avgpool`` (``out=(oh, ow)``:
PyTorch's adaptive average pooling, window ``i`` over ``[floor(i H / oh), ceil((i + 1) H /
oh))``), ``flatten`` (NCHW order), ``maxpool`` / ``avgpool`` (``k``, ``stride``, optional
``pad`` as a conv's, default 0: a max-pool pads with -inf, so padding never wins the max;
an average pool pads with zeros that count in the mean, PyTorch's
``count_include_pad=True``; ``ceil=True``, max-pool with a symmetric pad only: PyTorch's
``ceil_mode``, the last window may run past the input, never starting in the right padding).
``dropout``
    ``p`` and ``mode``: ``element`` (dropout) or ``row`` (stochastic depth: a whole
    sample's value dropped); the identity at inference, scaled by ``1 / (1 - p)`` when kept
    in training.
``select``
    parameter-free channel map with spatial subsampling, the option-A shortcut of
    CIFAR ResNets and every gather a pruned model needs:
    ``y[:, j] = x[:, src[j], ::stride, ::stride]`` and ``y[:, j] = 0`` where
    ``src[j] == -1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress_core.errors import UserError

OPS = ("input", "conv", "dense", "bn", "relu", "add", "concat", "gap", "flatten",
       "maxpool", "avgpool", "select", "diagonal", "relu6", "hardswish", "hardsigmoid", "silu", "sigmoid",
       "mul", "dropout", "adaptive_avgpool")
#: the widest input a ``select`` is run (TF backend) and exported (ONNX) as a 1x1 conv with a 0/1 matrix for:
#: the conv costs ``cin`` MACs per value it picks. On ResNet-56's 16-64-wide streams it is faster than a gather
#: (which in ONNX Runtime leaves the blocked layout, in TF gathers along NHWC's innermost axis); on ResNet-50's
#: 256-2048-wide streams a gather is faster (the reference CDC form at batch 16: TF 522 vs 651 ms, ORT 535 vs 808).
SELECT_CONV_MAX_IN = 64


def select_matrix(src, cin: int):
    """The ``[len(src), cin]`` 0/1 matrix of a ``select`` with sources ``src`` over ``cin`` channels
    (row ``j`` picks channel ``src[j]``; all zeros for ``-1``): the select as a 1x1 conv's weights."""
    src = np.asarray(src, np.int64)
    pick = np.zeros((len(src), cin), np.float32)
    kept = np.flatnonzero(src >= 0)
    pick[kept, src[kept]] = 1.0
    return pick
#: elementwise operators of one input (the backends and the channel groups pass channels through them)
ELEMENTWISE = ("relu", "relu6", "hardswish", "hardsigmoid", "silu", "sigmoid", "dropout")

#: default BatchNorm settings, set explicitly in both backends (their defaults differ)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class Node:
    """One operator of a :class:`Graph`; ``inputs`` are names of earlier nodes."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "attrs": {k: _jsonable(v) for k, v in self.attrs.items()}}

    @staticmethod
    def from_dict(d: Mapping) -> Node:
        attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in d["attrs"].items()}
        return Node(d["name"], d["op"], tuple(d["inputs"]), attrs)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int,)) else (int(v[0]), int(v[1]))


def pads(attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of a conv's or pool's ``pad`` (an int, ``(ph, pw)`` or four values)."""
    p = attrs.get("pad", 0)
    p = (int(p),) * 2 if isinstance(p, int) else tuple(int(v) for v in p)
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    if len(p) != 4:
        raise UserError(f"pad {p} must be (ph, pw) or (top, left, bottom, right)")
    return p  # type: ignore[return-value]


def pad_attr(pad) -> tuple[int, ...]:
    """The canonical ``pad`` value: ``(ph, pw)`` when symmetric, else ``(top, left, bottom, right)``."""
    t, left, b, r = pads({"pad": pad})
    return (t, left) if (t, left) == (b, r) else (t, left, b, r)


def conv_node(name, x, out, k=3, stride=1, pad=None, dilation=1, groups=1, bias=False):
    """Convenience constructor; ``pad`` defaults to 'same' output size at stride 1."""
    k, dilation = _pair(k), _pair(dilation)
    if pad is None:
        pad = (dilation[0] * (k[0] - 1) // 2, dilation[1] * (k[1] - 1) // 2)
    return Node(name, "conv", (x,), {"out": int(out), "k": k, "stride": _pair(stride), "pad": pad_attr(pad),
                                        "dilation": dilation, "groups": int(groups), "bias": bool(bias)})


def bn_node(name, x, eps=BN_EPS, momentum=BN_MOMENTUM):
    return Node(name, "bn", (x,), {"eps": float(eps), "momentum": float(momentum)})


@dataclass
class Graph:
    """A network: nodes in topological order, one input, one output.

    ``arch`` names the architecture family (``resnet56``, ``vgg16``, ...); two
    graphs with the same parameter shapes but different ``arch`` are different
    models. ``meta`` carries free-form facts (number of classes, width plan).
    """

    arch: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    output: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self._index = {n.name: n for n in self.nodes}
        if len(self._index) != len(self.nodes):
            dup = [n.name for n in self.nodes if sum(m.name == n.name for m in self.nodes) > 1]
            raise UserError(f"graph '{self.arch}' has duplicate node names: {sorted(set(dup))}")
        self._shapes = None

    # -- access ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        try:
            return self._index[name]
        except KeyError:
            raise UserError(f"no layer named '{name}' in model '{self.arch}'") from None

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def of_op(self, *ops: str) -> list[Node]:
        """Nodes with one of ``ops``, in topological order."""
        return [n for n in self.nodes if n.op in ops]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    @property
    def num_classes(self) -> int:
        return self.shapes()[self.output][0]

    # -- shapes and parameters ---------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shape of every node (without the batch axis), checking the graph on the way."""
        if self._shapes is None:
            self._shapes = _infer_shapes(self)
        return self._shapes

    def in_channels(self, name: str) -> int:
        return self.shapes()[self[name].inputs[0]][0]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape of every parameter and buffer, in graph order.

        Names are ``<node>.weight``, ``<node>.bias``, ``<node>.running_mean`` and
        ``<node>.running_var``; layouts are canonical (OIHW, dense ``[out, in]``).
        """
        shapes = self.shapes()
        out: dict[str, tuple[int, ...]] = {}
        for n in self.nodes:
            a = n.attrs
            if n.op == "conv":
                cin = shapes[n.inputs[0]][0]
                raw = a.get("fused_from", a["out"])
                out[f"{n.name}.weight"] = (raw, cin // a["groups"], *a["k"])
                if a["bias"]:
                    out[f"{n.name}.bias"] = (raw,)
                if "fused_from" in a:
                    out[f"{n.name}.fusion"] = (a["out"], raw)
            elif n.op == "dense":
                out[f"{n.name}.weight"] = (a["out"], shapes[n.inputs[0]][0])
                if a["bias"]:
                    out[f"{n.name}.bias"] = (a["out"],)
            elif n.op == "diagonal":
                out[f"{n.name}.weight"] = (min(a["out"], shapes[n.inputs[0]][0]),)
                if a["bias"]:
                    out[f"{n.name}.bias"] = (a["out"],)
            elif n.op == "bn":
                c = shapes[n.inputs[0]][0]
                for p in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{n.name}.{p}"] = (c,)
        return out

    @staticmethod
    def is_buffer(param_name: str) -> bool:
        """Running statistics and fusion matrices are state, not trainable parameters."""
        return param_name.endswith((".running_mean", ".running_var", ".fusion"))

    # -- serialisation -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"arch": self.arch, "input_shape": list(self.input_shape),
                           "output": self.output, "meta": self.meta,
                           "nodes": [n.to_dict() for n in self.nodes]}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Graph:
        d = json.loads(text)
        return Graph(d["arch"], tuple(d["input_shape"]), [Node.from_dict(n) for n in d["nodes"]],
                     d["output"], d.get("meta", {}))

    def replace(self, nodes: Iterable[Node], **changes) -> Graph:
        """A new graph with other nodes (and optionally other arch/meta/output)."""
        kw = {"arch": self.arch, "input_shape": self.input_shape, "output": self.output,
                  "meta": dict(self.meta)}
        kw.update(changes)
        return Graph(nodes=list(nodes), **kw)


def fresh_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if it is in ``taken``; the result is added to ``taken``."""
    base, k = name, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def drop_unused(graph: Graph) -> Graph:
    """The graph without nodes nothing reads on the way to its output (training-only branches, the
    leftovers of an importer's rewrites)."""
    needed, keep = {graph.output}, []
    for n in reversed(graph.nodes):
        if n.name in needed or n.op == "input":
            keep.append(n)
            needed.update(n.inputs)
    return graph.replace(keep[::-1])


def _pool_out(size: int, k: int, s: int, p: int = 0, d: int = 1, ceil: bool = False, p_end: int | None = None) -> int:
    if not ceil:
        return (size + p + (p if p_end is None else p_end) - d * (k - 1) - 1) // s + 1
    out = -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
    return out - 1 if (out - 1) * s >= size + p else out  # PyTorch: no window starts in the right padding


def _infer_shapes(g: Graph) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for n in g.nodes:
        if n.op not in OPS:
            raise UserError(f"node '{n.name}' has unknown op '{n.op}' (known: {', '.join(OPS)})")
        for i in n.inputs:
            if i not in shapes:
                raise UserError(f"node '{n.name}' reads '{i}', which is not an earlier node")
        ins = [shapes[i] for i in n.inputs]
        a = n.attrs
        if n.op == "input":
            s = g.input_shape
        elif n.op == "conv":
            c, h, w = _map(n, ins[0])
            if c % a["groups"] or a["out"] % a["groups"]:
                raise UserError(f"conv '{n.name}': channels {c}->{a['out']} not divisible by groups {a['groups']}")
            if "fused_from" in a and (a["groups"] != 1 or not 1 <= a["out"] <= a["fused_from"]):
                raise UserError(f"fused conv '{n.name}': {a['out']} outputs from {a['fused_from']} filters "
                                f"with groups {a['groups']} (needs out <= fused_from, groups 1)")
            t, left, b, r = pads(a)
            s = (a["out"],) + tuple(_pool_out(sz, k, st, p, d, p_end=pe) for sz, k, st, p, d, pe in
                                    zip((h, w), a["k"], a["stride"], (t, left), a["dilation"], (b, r)))
        elif n.op in ("maxpool", "avgpool"):
            c, h, w = _map(n, ins[0])
            k, st, p = _pair(a["k"]), _pair(a["stride"]), pads(a)
            ceil = bool(a.get("ceil", False))
            if max(2 * v - k[i % 2] for i, v in enumerate(p)) > 0:
                raise UserError(f"{n.op} '{n.name}': pad {a['pad']} is more than half the window {k}")
            if ceil and (n.op == "avgpool" or p[:2] != p[2:]):
                raise UserError(f"{n.op} '{n.name}': ceil mode is supported for max-pools with a symmetric pad only")
            s = (c, _pool_out(h, k[0], st[0], p[0], ceil=ceil, p_end=p[2]),
                 _pool_out(w, k[1], st[1], p[1], ceil=ceil, p_end=p[3]))
        elif n.op == "adaptive_avgpool":
            c, h, w = _map(n, ins[0])
            s = (c, *_pair(a["out"]))
        elif n.op == "select":
            c, h, w = _map(n, ins[0])
            bad = [j for j in a["src"] if not -1 <= j < c]
            if bad:
                raise UserError(f"select '{n.name}': source channels {bad} outside [-1, {c})")
            st = int(a["stride"])
            s = (len(a["src"]), -(-h // st), -(-w // st))
        elif n.op == "dense":
            if len(ins[0]) != 1:
                raise UserError(f"dense '{n.name}' needs a vector input, got shape {ins[0]}")
            s = (a["out"],)
        elif n.op == "diagonal":
            if len(ins[0]) != 1:
                raise UserError(f"diagonal '{n.name}' needs a vector input, got shape {ins[0]}")
            s = (a["out"],)
        elif n.op == "bn" or n.op in ELEMENTWISE:
            s = ins[0]
        elif n.op == "mul":
            if len(ins) != 2:
                raise UserError(f"mul '{n.name}' needs two inputs, got {len(ins)}")
            s = _mul_shape(n, *ins)
        elif n.op == "add":
            if len(set(ins)) != 1:
                raise UserError(f"add '{n.name}' inputs have different shapes {ins}")
            s = ins[0]
        elif n.op == "concat":
            if len({x[1:] for x in ins}) != 1:
                raise UserError(f"concat '{n.name}' inputs have different spatial shapes {ins}")
            s = (sum(x[0] for x in ins),) + ins[0][1:]
        elif n.op == "gap":
            s = (_map(n, ins[0])[0], 1, 1) if a.get("keep") else (_map(n, ins[0])[0],)
        elif n.op == "flatten":
            s = (int(ins[0][0] * (ins[0][1] if len(ins[0]) > 1 else 1) *
                     (ins[0][2] if len(ins[0]) > 2 else 1)),)
        if min(s) <= 0:
            raise UserError(f"node '{n.name}' ({n.op}) would have an empty output {s}")
        shapes[n.name] = tuple(int(v) for v in s)
    if g.output not in shapes:
        raise UserError(f"graph output '{g.output}' is not a node")
    return shapes


def _mul_shape(n: Node, a: tuple, b: tuple) -> tuple:
    """The shape of ``a * b``: equal shapes, or a map and a per-channel scale of its channels."""
    if a == b:
        return a
    for x, scale in ((a, b), (b, a)):
        if len(x) == 3 and scale in ((x[0], 1, 1), (x[0],)):
            return x
    raise UserError(f"mul '{n.name}' inputs have shapes {a} and {b}: one must equal the other or be a "
                    f"per-channel scale (C, 1, 1) of it")


def _map(n: Node, shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise UserError(f"{n.op} '{n.name}' needs a feature map input, got shape {shape}")
    return shape
