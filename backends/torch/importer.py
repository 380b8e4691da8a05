"""Import an ``nn.Module`` as a :class:`~compress_core.ir.graph.Graph` (``from_module``).

The module is traced symbolically with ``torch.fx`` (nothing is pickled, nothing runs
but one check forward pass) and every node is mapped to a graph operator. Layers keep
the module's own qualified names, so the graph's canonical parameter names are the
module's ``state_dict`` keys (a torchvision ResNet-50 imports as
``layer1.0.conv1.weight``, its own checkpoint loads as it is). What torchvision's
classification families need is covered:

* modules: ``Conv2d`` (groups, dilation, bias, zero padding), ``BatchNorm1d/2d``,
  ``Linear``, ``ReLU``, ``ReLU6`` (and ``Hardtanh(0, 6)``), ``Hardswish``,
  ``Hardsigmoid``, ``SiLU``, ``Sigmoid``, ``MaxPool2d`` (padding, ``ceil_mode``),
  ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``Dropout``, ``Identity``;
* functions and methods: ``+`` / ``torch.add``, ``*`` / ``torch.mul`` (a
  squeeze-and-excitation scale), ``torch.cat`` along channels, ``torch.flatten`` /
  ``.flatten(1)`` / ``.view(n, -1)``, ``.mean((2, 3))``, the functional forms of the
  activations and pools, ``F.dropout`` and torchvision's ``stochastic_depth`` (the
  identity at inference, dropout in training).

Anything else is a one-line :class:`UserError` naming the operation and the module
path where it occurs.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from backends.torch.export import Diagonal, Select, StochasticDepth
from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node, drop_unused, fresh_name

_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
                nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                  F.hardsigmoid: "hardsigmoid", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), "") if stack else (node.target if node.op == "call_module" else "")


class _Importer:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]):
        self.module, self.input_shape = module, input_shape
        self.nodes: list[Node] = [Node("input", "input")]
        self.params: dict[str, np.ndarray] = {}
        self.names: dict[fx.Node, str] = {}        # fx node -> graph node name (tensors only)
        self.values: dict[fx.Node, object] = {}    # fx node -> python value (sizes, constants)
        self.taken = {"input"}
        self.used_modules: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------------
    def fail(self, node: fx.Node, what: str):
        where = _where(node)
        raise UserError(f"cannot import {what}" + (f" at '{where}'" if where else "") + f" (fx node '{node.name}')")

    def unique(self, name: str) -> str:
        return fresh_name(name, self.taken)

    def add(self, node: fx.Node, op: str, inputs: Sequence[str], name: str | None = None, **attrs) -> str:
        gname = self.unique(name or node.name)
        self.nodes.append(Node(gname, op, tuple(inputs), attrs))
        self.names[node] = gname
        return gname

    def tensor(self, node: fx.Node, arg) -> str:
        if isinstance(arg, fx.Node) and arg in self.names:
            return self.names[arg]
        self.fail(node, f"'{node.target}' with a non-tensor operand {arg!r}")

    def weight(self, name: str, t: torch.Tensor | None) -> None:
        if t is not None:
            self.params[name] = t.detach().to("cpu", torch.float32).numpy().copy()

    # -- modules -----------------------------------------------------------------------------------
    def call_module(self, node: fx.Node) -> None:
        target = str(node.target)
        m = self.module.get_submodule(target)
        x = self.tensor(node, node.args[0]) if node.args else self.fail(node, f"module '{target}' without input")
        has_params = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if has_params and target in self.used_modules:
            self.fail(node, f"a second call of '{target}' (shared weights)")
        self.used_modules.add(target)
        name = target if has_params else None
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                self.fail(node, f"Conv2d with padding_mode='{m.padding_mode}'")
            pad = m.padding
            if isinstance(pad, str):
                k, d = _pair(m.kernel_size), _pair(m.dilation)
                if pad == "valid":
                    pad = (0, 0)
                elif all(dd * (kk - 1) % 2 == 0 for kk, dd in zip(k, d)) and _pair(m.stride) == (1, 1):
                    pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
                else:
                    self.fail(node, "Conv2d padding='same' that pads asymmetrically")
            self.add(node, "conv", [x], name, out=int(m.out_channels), k=_pair(m.kernel_size),
                     stride=_pair(m.stride), pad=_pair(pad), dilation=_pair(m.dilation), groups=int(m.groups),
                     bias=m.bias is not None)
            self.weight(f"{target}.weight", m.weight)
            self.weight(f"{target}.bias", m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            if not m.affine or not m.track_running_stats or m.momentum is None:
                self.fail(node, f"{type(m).__name__} without affine parameters, running statistics or a momentum")
            self.add(node, "bn", [x], name, eps=float(m.eps), momentum=float(m.momentum))
            for p in ("weight", "bias", "running_mean", "running_var"):
                self.weight(f"{target}.{p}", getattr(m, p))
        elif isinstance(m, nn.Linear):
            self.add(node, "dense", [x], name, out=int(m.out_features), bias=m.bias is not None)
            self.weight(f"{target}.weight", m.weight)
            self.weight(f"{target}.bias", m.bias)
        elif type(m) in _ACT_MODULES:
            self.add(node, _ACT_MODULES[type(m)], [x], target)
        elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
            self.add(node, "relu6", [x], target)
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            self.pool(node, "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool", x, m.kernel_size, m.stride,
                      m.padding, getattr(m, "dilation", 1), m.ceil_mode, getattr(m, "count_include_pad", True),
                      getattr(m, "divisor_override", None), target)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive(node, x, m.output_size, target)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                self.fail(node, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})")
            self.add(node, "flatten", [x], target)
        elif isinstance(m, nn.Dropout | nn.Dropout2d):
            self.add(node, "dropout", [x], target, p=float(m.p), mode="element")
        elif isinstance(m, nn.Identity):
            self.names[node] = x
        # the layers of our own exported modules (backends.torch.export), so an exported and then
        # re-pruned (e.g. by another tool) module comes back
        elif isinstance(m, Select):
            cin = self.shape_of(x)[0]
            self.add(node, "select", [x], target, src=tuple(int(j) if j < cin else -1 for j in m.src.tolist()),
                     stride=int(m.stride))
        elif isinstance(m, Diagonal):
            self.add(node, "diagonal", [x], name, out=int(m.out), bias=m.bias is not None)
            self.weight(f"{target}.weight", m.weight)
            self.weight(f"{target}.bias", m.bias)
        elif isinstance(m, StochasticDepth):
            self.add(node, "dropout", [x], target, p=float(m.p), mode="row")
        else:
            self.fail(node, f"module {type(m).__name__} '{target}'")

    def pool(self, node, op, x, k, stride, pad, dilation, ceil, count_pad, divisor, name=None) -> None:
        k = _pair(k)
        stride = _pair(stride if stride not in (None, ()) else k)
        pad, dilation = _pair(pad), _pair(dilation)
        if dilation != (1, 1) or divisor is not None:
            self.fail(node, f"{op} with dilation {dilation} or a divisor override")
        if op == "avgpool" and not count_pad and pad != (0, 0):
            self.fail(node, "AvgPool2d(count_include_pad=False) with padding")
        if op == "avgpool" and ceil:
            h, w = self.shape_of(x)[1:]
            floor_out = [(s + 2 * p - kk) // st + 1 for s, p, kk, st in zip((h, w), pad, k, stride)]
            ceil_out = [-(-(s + 2 * p - kk) // st) + 1 for s, p, kk, st in zip((h, w), pad, k, stride)]
            if floor_out != ceil_out:
                self.fail(node, "AvgPool2d(ceil_mode=True) whose last window runs past the input")
            ceil = False
        attrs = {"k": k, "stride": stride, "pad": pad}
        if ceil:
            attrs["ceil"] = True
        self.add(node, op, [x], name, **attrs)

    def adaptive(self, node, x, size, name=None) -> None:
        _, h, w = self.shape_of(x)
        size = _pair(size if size is not None else (h, w))
        size = (size[0] or h, size[1] or w)
        if size == (1, 1):
            self.add(node, "gap", [x], name, keep=True)
        else:
            self.add(node, "adaptive_avgpool", [x], name, out=size)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return Graph("probe", self.input_shape, list(self.nodes), name).shapes()[name]

    # -- functions and methods -----------------------------------------------------------------------
    def call_function(self, node: fx.Node) -> None:
        f, args, kw = node.target, node.args, node.kwargs
        if f in (operator.add, torch.add, operator.mul, torch.mul):
            if len(args) != 2 or kw.get("alpha", 1) != 1:
                self.fail(node, f"'{getattr(f, '__name__', f)}' with {len(args)} operands")
            op = "add" if f in (operator.add, torch.add) else "mul"
            self.add(node, op, [self.tensor(node, a) for a in args])
        elif f is torch.cat:
            tensors = args[0] if args else kw["tensors"]
            dim = args[1] if len(args) > 1 else kw.get("dim", 0)
            if dim not in (1, -3) or not isinstance(tensors, list | tuple):
                self.fail(node, f"torch.cat along dim {dim}")
            self.add(node, "concat", [self.tensor(node, t) for t in tensors])
        elif f is torch.flatten:
            start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
            if start != 1 or end != -1:
                self.fail(node, f"torch.flatten(start_dim={start}, end_dim={end})")
            self.add(node, "flatten", [self.tensor(node, args[0])])
        elif f in _ACT_FUNCTIONS:
            self.add(node, _ACT_FUNCTIONS[f], [self.tensor(node, args[0])])
        elif f is F.adaptive_avg_pool2d:
            self.adaptive(node, self.tensor(node, args[0]), args[1] if len(args) > 1 else kw["output_size"])
        elif f in (F.max_pool2d, F.avg_pool2d):
            names = ("kernel_size", "stride", "padding", "dilation" if f is F.max_pool2d else "ceil_mode",
                     "ceil_mode" if f is F.max_pool2d else "count_include_pad")
            v = dict(zip(names, args[1:]), **kw)
            self.pool(node, "maxpool" if f is F.max_pool2d else "avgpool", self.tensor(node, args[0]),
                      v["kernel_size"], v.get("stride"), v.get("padding", 0), v.get("dilation", 1),
                      v.get("ceil_mode", False), v.get("count_include_pad", True), v.get("divisor_override"))
        elif f is F.dropout:
            p = args[1] if len(args) > 1 else kw.get("p", 0.5)
            self.add(node, "dropout", [self.tensor(node, args[0])], p=float(p), mode="element")
        elif getattr(f, "__name__", "") == "stochastic_depth":  # torchvision.ops.stochastic_depth
            p = args[1] if len(args) > 1 else kw["p"]
            mode = args[2] if len(args) > 2 else kw["mode"]
            if mode != "row":
                self.fail(node, f"stochastic_depth(mode='{mode}')")
            self.add(node, "dropout", [self.tensor(node, args[0])], p=float(p), mode="row")
        elif f is torch.mean:
            self.mean(node, args[0], args[1] if len(args) > 1 else kw.get("dim"),
                      kw.get("keepdim", args[2] if len(args) > 2 else False))
        elif f is getattr:
            self.values[node] = None  # an attribute of a tensor (e.g. its shape): only ever a size
        elif f is operator.getitem and args[0] in self.values:
            self.values[node] = None
        else:
            self.fail(node, f"function '{getattr(f, '__name__', f)}'")

    def mean(self, node, x, dim, keepdim) -> None:
        if dim is None or sorted(d % 4 for d in (dim if isinstance(dim, list | tuple) else [dim])) != [2, 3]:
            self.fail(node, f"mean over dims {dim} (only the spatial dims (2, 3) are supported)")
        self.add(node, "gap", [self.tensor(node, x)], keep=bool(keepdim))

    def call_method(self, node: fx.Node) -> None:
        name, args, kw = node.target, node.args, node.kwargs
        if name in _ACT_METHODS:
            self.add(node, _ACT_METHODS[name], [self.tensor(node, args[0])])
        elif name == "flatten":
            start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
            if start != 1 or (args[2] if len(args) > 2 else kw.get("end_dim", -1)) != -1:
                self.fail(node, f"Tensor.flatten(start_dim={start})")
            self.add(node, "flatten", [self.tensor(node, args[0])])
        elif name in ("view", "reshape"):
            shape = args[1:] if len(args) > 2 or not isinstance(args[1], list | tuple) else args[1]
            if len(shape) == 2 and (shape[1] == -1) and (shape[0] in self.values or shape[0] == -1):
                self.add(node, "flatten", [self.tensor(node, args[0])])
            else:
                self.fail(node, f"Tensor.{name}{tuple(shape)} (only flattening to (N, -1) is supported)")
        elif name == "size":
            self.values[node] = None
        elif name == "mean":
            self.mean(node, args[0], args[1] if len(args) > 1 else kw.get("dim"), kw.get("keepdim", False))
        elif name in ("contiguous", "clone"):
            self.names[node] = self.tensor(node, args[0])
        elif name in ("add", "mul", "__add__", "__mul__") and len(args) == 2:
            self.add(node, "add" if "add" in name else "mul", [self.tensor(node, a) for a in args])
        else:
            self.fail(node, f"method 'Tensor.{name}'")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with our exported layers as leaves (their forward is not graph ops)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Select | Diagonal | StochasticDepth) or super().is_leaf_module(m, qualname)


def from_module(module: nn.Module, input_shape: Sequence[int], arch: str | None = None
                ) -> tuple[Graph, dict[str, np.ndarray]]:
    """``(graph, params)`` of ``module`` (in eval mode) for inputs of ``input_shape`` ``(C, H, W)``.

    Canonical parameter names are the module's own ``state_dict`` keys. ``arch`` names the
    architecture (default: the module's class name). Raises a one-line :class:`UserError`
    for an unsupported operation (naming it and its module path), a module that is not an
    ``nn.Module``, or an input shape the module rejects.
    """
    if not isinstance(module, nn.Module):
        raise UserError(f"expected a torch.nn.Module, got {type(module).__name__}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise UserError(f"input_shape must be (C, H, W), got {input_shape}")
    module = module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    except Exception as e:  # noqa: BLE001 - the user's model rejects the shape: say so in one line
        raise UserError(f"the model rejects inputs of shape {input_shape}: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model returns {type(out).__name__}, not one tensor of logits")
    try:
        traced = fx.GraphModule(module, _Tracer().trace(module))
    except Exception as e:  # noqa: BLE001 - tracing a user's model fails in many ways
        raise UserError(f"torch.fx cannot trace the model: {type(e).__name__}: {' '.join(str(e).split())[:200]}") \
            from None
    imp = _Importer(module, input_shape)
    output = None
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if imp.names:
                imp.fail(node, "a second input")
            imp.names[node] = "input"
        elif node.op == "call_module":
            imp.call_module(node)
        elif node.op == "call_function":
            imp.call_function(node)
        elif node.op == "call_method":
            imp.call_method(node)
        elif node.op == "get_attr":
            imp.fail(node, f"a direct use of the tensor '{node.target}'")
        elif node.op == "output":
            output = imp.tensor(node, node.args[0])
    graph = Graph(arch or type(module).__name__, input_shape, imp.nodes, output)
    graph = drop_unused(graph)  # branches only taken in training
    shape = tuple(out.shape[1:])
    if graph.shapes()[graph.output] != shape:
        raise UserError(f"the imported graph gives outputs of shape {graph.shapes()[graph.output]}, the model "
                        f"{shape}")
    params = {k: imp.params[k] for k in graph.param_shapes()}
    return graph, params



def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state_dict file loaded with ``weights_only=True`` (no code runs), as float32 numpy arrays
    (BatchNorm's ``num_batches_tracked`` counters dropped); a bad file is a one-line error."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a user's file fails in many ways
        raise UserError(f"cannot read the state_dict {path}: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state_dict (a dict of tensors)")
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in sd.items()
            if not k.endswith("num_batches_tracked")}


def load_module_source(source: str, input_shape: Sequence[int], weights: str = "", arch: str | None = None,
                       kwargs: dict | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """Import ``module:package.path:callable``: call it (with ``kwargs``) for the ``nn.Module``, load the
    state_dict file ``weights`` into it (``strict``: every key and shape must match), then
    :func:`from_module`. Every failure is a one-line :class:`UserError`."""
    import importlib

    _, path, name = source.split(":")
    try:
        if path.split(".")[0] == "torchvision":  # a torchvision built for another torch (backends.torch.compat)
            from backends.torch.compat import torchvision_models

            torchvision_models()
        owner = importlib.import_module(path)
    except Exception as e:  # noqa: BLE001 - the user's package
        raise UserError(f"model.source {source}: cannot import {path} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None
    make = getattr(owner, name, None)
    if not callable(make):
        raise UserError(f"model.source {source}: {path} has no callable '{name}'")
    try:
        module = make(**(kwargs or {}))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"model.source {source}: calling {name}() failed ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"model.source {source}: {name}() returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        sd = {k: torch.as_tensor(v) for k, v in read_state_dict(weights).items()}
        own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                      else f"'{wrong[0]}' has shape {tuple(sd[wrong[0]].shape)}, the model {tuple(own[wrong[0]].shape)}")
            raise UserError(f"model.weights {weights} does not fit {source}: {detail}")
        module.load_state_dict(sd, strict=False)
    return from_module(module, input_shape, arch)
