"""ONNX from a graph and its numpy weights, with the ``onnx`` package only (no framework).

:func:`to_onnx` writes an opset-17 model: input ``input`` ``[N, C, H, W]`` (float32, any
batch size), output ``logits``. Every graph operator maps to standard ONNX operators in
the graph's own NCHW layout; initializers carry the canonical parameter names. Choices:

* a DCFF fused conv is written as the plain conv it computes (``fusion @ W``);
* a channel ``select`` reading at most 64 channels is a 1x1 ``Conv`` (strided as the select)
  with a constant 0/1 matrix (an all-zero row for a zero channel, ``-1`` sources): ONNX Runtime
  runs it in its blocked layout, where a ``Gather`` broke the layout for the rest of the stage; a
  wider one is a constant-index ``Gather`` along the channels (a zero channel appended by a ``Pad``
  first for ``-1`` sources; a strided select slices the map first), where a conv would cost more;
* ``dropout`` is the identity (an exported model is for inference);
* ``adaptive_avgpool`` is an ``AveragePool`` when the windows are uniform, otherwise one
  ``ReduceMean`` per output cell.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compress_core.errors import UserError
from compress_core.ir.graph import SELECT_CONV_MAX_IN, Graph, _pair, pads, select_matrix

OPSET = 17


def _needs_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx") from None


class _Writer:
    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray]):
        import onnx
        from onnx import helper, numpy_helper

        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.graph, self.params, self.shapes = graph, params, graph.shapes()
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def tmp(self, base: str) -> str:
        self.count += 1
        return f"{base}/{self.count}"

    def op(self, kind: str, inputs, output: str, **attrs) -> str:
        if output == "logits":  # the model's output tensor (see model()): a node of that name writes another
            output = "logits/node"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [output], name=output, **attrs))
        return output

    def weight(self, name: str) -> str:
        return self.const(name, np.asarray(self.params[name], np.float32))

    # -- operators ------------------------------------------------------------------------------------
    def conv(self, n, x: str) -> str:
        a = n.attrs
        w = np.asarray(self.params[f"{n.name}.weight"], np.float64)
        b = self.params.get(f"{n.name}.bias")
        if "fused_from" in a:  # DCFF: the conv it computes, fusion @ W (and fusion @ b)
            f = np.asarray(self.params[f"{n.name}.fusion"], np.float64)
            w = (f @ w.reshape(w.shape[0], -1)).reshape(f.shape[0], *w.shape[1:])
            b = None if b is None else f @ np.asarray(b, np.float64)
        inputs = [x, self.const(f"{n.name}.weight", w.astype(np.float32))]
        if b is not None:
            inputs.append(self.const(f"{n.name}.bias", np.asarray(b, np.float32)))
        return self.op("Conv", inputs, n.name, kernel_shape=list(a["k"]), strides=list(a["stride"]),
                       pads=list(pads(a)), dilations=list(a["dilation"]), group=int(a["groups"]))

    def bn(self, n, x: str) -> str:
        inputs = [x] + [self.weight(f"{n.name}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", inputs, n.name, epsilon=float(n.attrs["eps"]))

    def dense(self, n, x: str) -> str:
        inputs = [x, self.weight(f"{n.name}.weight")]
        if n.attrs["bias"]:
            inputs.append(self.weight(f"{n.name}.bias"))
        return self.op("Gemm", inputs, n.name, transB=1)

    def diagonal(self, n, x: str) -> str:
        w = np.asarray(self.params[f"{n.name}.weight"], np.float32)
        out, k = int(n.attrs["out"]), len(w)
        y = self.op("Slice", [x, self.const(self.tmp("zero"), np.array([0])), self.const(self.tmp("k"), np.array([k])),
                              self.const(self.tmp("axis"), np.array([1]))], self.tmp(n.name))
        y = self.op("Mul", [y, self.const(f"{n.name}.weight", w)], self.tmp(n.name))
        if out > k:
            y = self.op("Pad", [y, self.const(self.tmp("pads"), np.array([0, 0, 0, out - k]))], self.tmp(n.name))
        if n.attrs["bias"]:
            y = self.op("Add", [y, self.weight(f"{n.name}.bias")], self.tmp(n.name))
        return self.op("Identity", [y], n.name)

    def pool(self, n, x: str) -> str:
        a = n.attrs
        k, s, p = _pair(a["k"]), _pair(a["stride"]), pads(a)
        attrs = {"kernel_shape": list(k), "strides": list(s), "pads": list(p)}
        if n.op == "maxpool":
            h, w = self.shapes[n.inputs[0]][1:]
            oh, ow = self.shapes[n.name][1:]
            # ceil mode as explicit bottom/right padding (ONNX's ceil_mode rule differs from PyTorch's
            # at the edge); MaxPool's padding never wins the max
            extra = [max(0, (oh - 1) * s[0] + k[0] - h - p[0] - p[2]), max(0, (ow - 1) * s[1] + k[1] - w - p[1] - p[3])]
            attrs["pads"] = [p[0], p[1], p[2] + extra[0], p[3] + extra[1]]
            return self.op("MaxPool", [x], n.name, **attrs)
        return self.op("AveragePool", [x], n.name, count_include_pad=1, **attrs)

    def adaptive(self, n, x: str) -> str:
        h, w = self.shapes[n.inputs[0]][1:]
        oh, ow = _pair(n.attrs["out"])
        if h % oh == 0 and w % ow == 0:
            kh, kw = h // oh, w // ow
            return self.op("AveragePool", [x], n.name, kernel_shape=[kh, kw], strides=[kh, kw])
        rows = []
        for i in range(oh):
            cells = []
            for j in range(ow):
                lo = np.array([(i * h) // oh, (j * w) // ow])
                hi = np.array([-(-((i + 1) * h) // oh), -(-((j + 1) * w) // ow)])
                part = self.op("Slice", [x, self.const(self.tmp("lo"), lo), self.const(self.tmp("hi"), hi),
                                         self.const(self.tmp("axes"), np.array([2, 3]))], self.tmp(n.name))
                cells.append(self.op("ReduceMean", [part], self.tmp(n.name), axes=[2, 3], keepdims=1))
            rows.append(self.op("Concat", cells, self.tmp(n.name), axis=3))
        return self.op("Concat", rows, n.name, axis=2)

    def select(self, n, x: str) -> str:
        # narrow selections as a 1x1 conv with a 0/1 matrix (strided: it subsamples too): ONNX Runtime
        # keeps a conv in its blocked NCHWc layout and fuses the residual add and ReLU after it, where a
        # Gather sent every later block of the stage through layout reorders and an unfused Add and Relu
        # (ResNet-56 at batch 64: ~14% of the original's time). The values are picked exactly (x * 1 plus
        # zeros), as the TF backend does. Wide ones as Slice + Pad + Gather (SELECT_CONV_MAX_IN).
        s, src = int(n.attrs["stride"]), np.array(n.attrs["src"], np.int64)
        cin = self.shapes[n.inputs[0]][0]
        if s == 1 and np.array_equal(src, np.arange(cin)):
            return self.op("Identity", [x], n.name)
        if cin <= SELECT_CONV_MAX_IN:
            pick = select_matrix(src, cin)[:, :, None, None]  # OIHW
            return self.op("Conv", [x, self.const(f"{n.name}.pick", pick)], n.name, kernel_shape=[1, 1],
                           strides=[s, s])
        if s > 1:
            x = self.op("Slice", [x, self.const(self.tmp("st"), np.array([0, 0])),
                                  self.const(self.tmp("end"), np.array([2 ** 31 - 1, 2 ** 31 - 1])),
                                  self.const(self.tmp("axes"), np.array([2, 3])),
                                  self.const(self.tmp("steps"), np.array([s, s]))], self.tmp(n.name))
        if (src < 0).any():
            x = self.op("Pad", [x, self.const(self.tmp("pads"), np.array([0, 0, 0, 0, 0, 1, 0, 0]))],
                        self.tmp(n.name))
            src = np.where(src < 0, cin, src)
        return self.op("Gather", [x, self.const(f"{n.name}.src", src)], n.name, axis=1)

    def mul(self, n, ins) -> str:
        ranks = [len(self.shapes[i]) for i in n.inputs]
        ins = list(ins)
        for k, r in enumerate(ranks):
            if r == 1 and max(ranks) == 3:  # a per-channel [N, C] scale of an NCHW map
                ins[k] = self.op("Unsqueeze", [ins[k], self.const(self.tmp("axes"), np.array([2, 3]))],
                                 self.tmp(n.name))
        return self.op("Mul", ins, n.name)

    def node(self, n, names: dict) -> str:
        ins = [names[i] for i in n.inputs]
        op = n.op
        if op == "conv":
            return self.conv(n, ins[0])
        if op == "bn":
            return self.bn(n, ins[0])
        if op == "dense":
            return self.dense(n, ins[0])
        if op == "diagonal":
            return self.diagonal(n, ins[0])
        if op in ("maxpool", "avgpool"):
            return self.pool(n, ins[0])
        if op == "adaptive_avgpool":
            return self.adaptive(n, ins[0])
        if op == "select":
            return self.select(n, ins[0])
        if op == "mul":
            return self.mul(n, ins)
        if op == "relu":
            return self.op("Relu", ins, n.name)
        if op == "relu6":
            return self.op("Clip", [ins[0], self.const(self.tmp("lo"), np.float32(0)),
                                    self.const(self.tmp("hi"), np.float32(6))], n.name)
        if op == "hardswish":
            return self.op("HardSwish", ins, n.name)
        if op == "hardsigmoid":
            return self.op("HardSigmoid", ins, n.name, alpha=1.0 / 6.0, beta=0.5)
        if op == "sigmoid":
            return self.op("Sigmoid", ins, n.name)
        if op == "silu":
            return self.op("Mul", [ins[0], self.op("Sigmoid", ins, self.tmp(n.name))], n.name)
        if op == "add":
            return self.op("Sum", ins, n.name) if len(ins) > 2 else self.op("Add", ins, n.name)
        if op == "concat":
            return self.op("Concat", ins, n.name, axis=1)
        if op == "gap":
            y = self.op("GlobalAveragePool", ins, n.name if n.attrs.get("keep") else self.tmp(n.name))
            return y if n.attrs.get("keep") else self.op("Flatten", [y], n.name, axis=1)
        if op == "flatten":
            return self.op("Flatten", ins, n.name, axis=1)
        if op == "dropout":
            return self.op("Identity", ins, n.name)
        raise UserError(f"ONNX export: no mapping for op '{op}' (node '{n.name}')")  # pragma: no cover

    def model(self):
        helper, onnx = self.helper, self.onnx
        names = {"input": "input"}
        for n in self.graph.nodes[1:]:
            names[n.name] = self.node(n, names)
        self.nodes.append(self.helper.make_node("Identity", [names[self.graph.output]], ["logits"], name="logits"))
        out_shape = ["N", *self.shapes[self.graph.output]]
        g = helper.make_graph(
            self.nodes, self.graph.arch,
            [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", *self.graph.input_shape])],
            [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnn-compress")
        model.ir_version = min(model.ir_version, 10)  # readable by the ONNX Runtime releases of 2024-2026
        return model


def to_onnx(graph: Graph, params: Mapping[str, np.ndarray], path: str | None = None):
    """The ONNX ``ModelProto`` of ``graph`` with ``params``, checked with ``onnx.checker``; written
    atomically to ``path`` when given."""
    _needs_onnx()
    import onnx

    from compress_core.fileio import atomic_write_bytes
    from compress_core.ir.checkpoint import check_params

    check_params(graph, params)
    model = _Writer(graph, params).model()
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        atomic_write_bytes(path, model.SerializeToString())
    return model
