"""TensorFlow files from a graph: a SavedModel, a TFLite flatbuffer, a Keras 3 ``.keras`` file.

Every file runs with TensorFlow (and Keras) alone, without this library, and has the
interface of the ONNX and ``torch.export`` files: input ``input``, float32 ``[N, C, H, W]``
(NCHW, any batch size; the layout of this library's data), output ``logits`` ``[N, classes]``.
The first op transposes to NHWC and everything after it runs in NHWC (TensorFlow's fast
layout on CPU). Before writing, DCFF fused convs become the plain convs they compute
(:func:`compress_core.recipes.dcff.export`) and every BatchNorm that follows a conv or dense
layer read by it alone is folded into that layer (:func:`compress_core.ir.fold.fold_bn`).

* ``savedmodel`` (a directory): a ``tf.Module`` whose forward pass is the TF backend's own
  inference pass (the same kernels and the same oneDNN-independent forms of grouped, dilated
  and unequal-stride depthwise convs), weights as non-trainable variables ``m.params[name]``
  under the canonical names of the folded graph, in TF layouts (HWIO kernels, ``[in, out]``
  dense). ``m = tf.saved_model.load(path)``; ``m(x)`` returns the logits and
  ``m.signatures["serving_default"](input=x)["logits"]`` the same.
* ``tflite``: that SavedModel's serving function converted by ``tf.lite.TFLiteConverter``
  (float32; signature ``serving_default``, input ``input``, output ``logits``), or with
  ``quantize="dynamic"`` post-training dynamic-range quantisation (int8 weights, float
  activations; no calibration data). The input's batch size is 1 until
  ``Interpreter.resize_tensor_input`` sets another.
* ``keras``: a functional ``keras.Model`` of standard layers only (``keras.models.load_model``
  loads it in safe mode, no custom objects): see :func:`to_keras` for the mapping and its limits.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from backends.tf.model import TFBackend, _forward_pass, _tf_name
from compress_core.errors import UserError
from compress_core.ir import layout
from compress_core.ir.checkpoint import check_params
from compress_core.ir.fold import fold_bn
from compress_core.ir.graph import Graph, _pair, pads
from compress_core.recipes.dcff import export as plain_convs

FORMATS = TFBackend.export_formats
QUANTIZE = ("dynamic",)
#: ops whose output is never negative: a max-pool may pad it with zeros instead of -inf
_NONNEGATIVE = ("relu", "relu6", "hardsigmoid", "sigmoid")


def inference_graph(graph: Graph, params: Mapping[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph an exported file computes: plain convs, BatchNorms folded where they can be."""
    check_params(graph, params)
    return fold_bn(*plain_convs(graph, params))


def _identifier(arch: str) -> str:
    """A Python identifier for an architecture name (tf.Module and Keras model names)."""
    name = re.sub(r"\W", "_", arch)
    return name if name[:1].isalpha() else f"net_{name}"


class _Net(tf.Module):
    """The SavedModel's root object: ``__call__(input NCHW) -> logits`` and the weights."""

    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray]):
        super().__init__(name=_identifier(graph.arch))
        taken: set[str] = set()
        self.params = {k: tf.Variable(layout.to_tf(k, np.asarray(v, np.float32)), trainable=False,
                                       name=_tf_name(k, taken)) for k, v in params.items()}
        self._graph = graph
        spec = tf.TensorSpec([None, *graph.input_shape], tf.float32, name="input")
        # no autograph: the pass is straight-line Python over the nodes, and converting it costs seconds
        self.__call__ = tf.function(self._logits, input_signature=[spec], autograph=False)
        self.serve = tf.function(lambda input: {"logits": self.__call__(input)}, input_signature=[spec],
                                 autograph=False)

    def _logits(self, x):
        g = self._graph
        x = tf.transpose(x, layout.NCHW_TO_NHWC) if x.shape.rank == 4 else x
        y = _forward_pass(g, x, self.params, "running", updates=[])[g.output]
        return tf.transpose(y, layout.NHWC_TO_NCHW) if y.shape.rank == 4 else y


def _write_savedmodel(graph: Graph, params: Mapping[str, np.ndarray], directory: str) -> None:
    net = _Net(*inference_graph(graph, params))
    tf.saved_model.save(net, directory, signatures={"serving_default": net.serve.get_concrete_function()})


def _tflite_bytes(graph: Graph, params: Mapping[str, np.ndarray], quantize: str | None) -> bytes:
    net = _Net(*inference_graph(graph, params))
    # the SavedModel's serving function, converted without writing it (same file, a second faster)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.serve.get_concrete_function()], net)
    if quantize == "dynamic":  # no representative data set: weights int8, activations float
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _keras_bytes(graph: Graph, params: Mapping[str, np.ndarray]) -> bytes:
    model = to_keras(graph, params)
    with tempfile.TemporaryDirectory(prefix="cnn-compress-keras-") as tmp:
        path = os.path.join(tmp, "model.keras")  # Keras insists on the suffix
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def export(graph: Graph, params: Mapping[str, np.ndarray], path: str, fmt: str, quantize: str | None = None) -> None:
    """Write ``graph`` with ``params`` to ``path`` as ``fmt`` (module docstring), atomically: the
    file or directory appears complete or not at all. An existing ``path`` is an error."""
    from compress_core.fileio import atomic_write_bytes, atomic_write_dir

    if fmt not in FORMATS:
        raise UserError(f"unknown TensorFlow export format '{fmt}' (choose from: {', '.join(FORMATS)})")
    if quantize is not None and (fmt != "tflite" or quantize not in QUANTIZE):
        raise UserError(f"quantize='{quantize}': only tflite files are quantised, with one of: {', '.join(QUANTIZE)}")
    if fmt == "keras" and not path.endswith(".keras"):
        raise UserError(f"a Keras file must end in .keras (keras.models.load_model refuses others): {path}")
    if os.path.lexists(path):
        raise UserError(f"{path} exists; an export never overwrites")
    if fmt == "savedmodel":
        atomic_write_dir(path, lambda tmp: _write_savedmodel(graph, params, tmp))
    elif fmt == "tflite":
        atomic_write_bytes(path, _tflite_bytes(graph, params, quantize))
    else:
        atomic_write_bytes(path, _keras_bytes(graph, params))


def load(path: str, fmt: str):
    """A callable ``f(x NCHW float32) -> logits`` running the file with TensorFlow's own loaders."""
    if fmt == "savedmodel":
        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda x: serve(input=tf.constant(np.asarray(x, np.float32)))["logits"].numpy()
    if fmt == "tflite":
        return _TFLiteRunner(path)
    if fmt == "keras":
        import keras

        model = keras.models.load_model(path)
        return lambda x: np.asarray(model.predict_on_batch(np.asarray(x, np.float32)))
    raise UserError(f"unknown TensorFlow export format '{fmt}' (choose from: {', '.join(FORMATS)})")


class _TFLiteRunner:
    """``tf.lite.Interpreter`` on a file, its input resized when the batch size changes."""

    def __init__(self, path: str):
        with warnings.catch_warnings():  # "deprecated" since TF 2.18 in favour of ai_edge_litert, same file format
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            self.interpreter = tf.lite.Interpreter(model_path=path, num_threads=os.cpu_count() or 1)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.shape = None

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        if x.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input, list(x.shape))
            self.interpreter.allocate_tensors()
            self.shape = x.shape
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


# -- Keras ----------------------------------------------------------------------------------------------
def to_keras(graph: Graph, params: Mapping[str, np.ndarray]):
    """A functional ``keras.Model`` of standard Keras 3 layers computing ``graph`` (NCHW input ``input``).

    Layers keep the canonical node names. conv: ``Conv2D`` (``groups``), ``DepthwiseConv2D``
    when every input channel is its own group, explicit padding as ``ZeroPadding2D``; a stride
    together with a dilation, or a depthwise conv's unequal strides (no kernel without oneDNN),
    as the stride-1 (common-stride) conv subsampled by a 1x1 ``MaxPooling2D``. bn:
    ``BatchNormalization`` (the ones not folded); dense: ``Dense``; diagonal: a ``Dense`` holding
    the diagonal matrix; mul: ``Multiply`` (a per-channel scale reshaped to ``[N, 1, 1, C]``);
    select: a frozen 1x1 ``Conv2D`` of a 0/1 matrix (strided for a strided select); flatten:
    ``Flatten`` of the NHWC map with the rows of every dense reader permuted to match (a
    ``Permute`` to NCHW first when another op reads it); pools with ``ZeroPadding2D``;
    dropout: ``Dropout`` (identity at inference). Not expressible, a one-line error naming
    the node: an adaptive average pool with unequal windows, and a padded or ceil-mode
    max-pool of a map that may be negative (Keras cannot pad with -inf).
    """
    import keras

    if int(keras.__version__.split(".")[0]) < 3:
        raise UserError(f"the keras format needs Keras 3 (TensorFlow 2.16 or later); Keras {keras.__version__} is installed")
    graph, params = inference_graph(graph, params)
    return _KerasBuilder(graph, params, keras).model()


class _KerasBuilder:
    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray], keras):
        self.graph, self.params, self.keras, self.L = graph, params, keras, keras.layers
        self.shapes = graph.shapes()
        # flattens read only by dense layers flatten NHWC, and those layers' rows are permuted
        self.nhwc_flat = {n.name for n in graph.of_op("flatten")
                          if len(self.shapes[n.inputs[0]]) == 3 and n.name != graph.output
                          and all(c.op in ("dense", "diagonal") for c in graph.consumers(n.name))}

    def layer(self, layer, x, weights=None):
        y = layer(x)
        if weights is not None:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
        return y

    def model(self):
        g, L = self.graph, self.L
        inp = self.keras.Input(shape=g.input_shape, name="input")
        t = {"input": L.Permute((2, 3, 1), name="input.nhwc")(inp) if len(g.input_shape) == 3 else inp}
        for n in g.nodes[1:]:
            t[n.name] = self.node(n, [t[i] for i in n.inputs])
        y = t[g.output]
        if len(self.shapes[g.output]) == 3:
            y = L.Permute((3, 1, 2), name="logits.nchw")(y)
        return self.keras.Model(inp, y, name=_identifier(g.arch))

    def _subsample(self, n, x, sh: int, sw: int):
        return x if sh == sw == 1 else self.L.MaxPooling2D(1, (sh, sw), name=f"{n.name}.subsample")(x)

    def _pad(self, n, x, top_left, bottom_right=None):
        (ph, pw), (bh, bw) = top_left, bottom_right or top_left
        if not (ph or pw or bh or bw):
            return x
        return self.L.ZeroPadding2D(((ph, bh), (pw, bw)), name=f"{n.name}.pad")(x)

    def conv(self, n, x):
        a, L = n.attrs, self.L
        cin, out, g = self.shapes[n.inputs[0]][0], int(a["out"]), int(a["groups"])
        (sh, sw), (dh, dw) = a["stride"], a["dilation"]
        w = layout.oihw_to_hwio(np.asarray(self.params[f"{n.name}.weight"], np.float32))
        bias = [self.params[f"{n.name}.bias"]] if a["bias"] else []
        t, left, b, r = pads(a)  # imported TF graphs pad bottom/right more at stride 2
        x = self._pad(n, x, (t, left), (b, r))
        # Keras refuses a stride with a dilation; TF's CPU kernels without oneDNN refuse unequal
        # depthwise strides: run at the stride they allow, subsample the rest (exact)
        s = (1, 1) if max(dh, dw) > 1 else (sh, sw)
        common = {"kernel_size": tuple(a["k"]), "dilation_rate": (dh, dw), "use_bias": bool(a["bias"]), "name": n.name}
        if g == cin and g > 1:
            if s[0] != s[1]:
                s = (math.gcd(*s),) * 2
            layer = L.DepthwiseConv2D(strides=s, depth_multiplier=out // cin, **common)
            y = self.layer(layer, x, [w.reshape(*w.shape[:2], cin, out // cin), *bias])
        else:
            y = self.layer(L.Conv2D(out, strides=s, groups=g, **common), x, [w, *bias])
        return self._subsample(n, y, sh // s[0], sw // s[1])

    def dense(self, n, x, kernel):
        """``kernel`` canonical ``[out, in]``; rows permuted when ``x`` is an NHWC flatten."""
        src = n.inputs[0]
        if src in self.nhwc_flat:
            c, h, w = self.shapes[self.graph[src].inputs[0]]
            kernel = kernel[:, np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()]
        a = n.attrs
        bias = [self.params[f"{n.name}.bias"]] if a["bias"] else []
        return self.layer(self.L.Dense(int(a["out"]), use_bias=bool(a["bias"]), name=n.name), x, [kernel.T, *bias])

    def pool(self, n, x):
        a, op = n.attrs, n.op
        k, s = _pair(a["k"]), _pair(a["stride"])
        t, left, b, r = pads(a)
        (h, w), (oh, ow) = self.shapes[n.inputs[0]][1:], self.shapes[n.name][1:]
        extra = (max(0, (oh - 1) * s[0] + k[0] - h - t - b), max(0, (ow - 1) * s[1] + k[1] - w - left - r))
        padded = any((t, left, b, r)) or any(extra)
        if op == "maxpool" and padded and self.graph[n.inputs[0]].op not in _NONNEGATIVE:
            raise UserError(f"Keras export: maxpool '{n.name}' pads a map that may be negative (Keras pads "
                            f"with zeros, not -inf); only a padded max-pool after {'/'.join(_NONNEGATIVE)} exports")
        x = self._pad(n, x, (t, left), (b + extra[0], r + extra[1]))
        return (self.L.MaxPooling2D if op == "maxpool" else self.L.AveragePooling2D)(k, s, name=n.name)(x)

    def select(self, n, x):
        cin, src, s = self.shapes[n.inputs[0]][0], [int(j) for j in n.attrs["src"]], int(n.attrs["stride"])
        if s == 1 and src == list(range(cin)):
            return x
        pick = np.zeros((1, 1, cin, len(src)), np.float32)
        for k, j in enumerate(src):
            if j >= 0:
                pick[0, 0, j, k] = 1.0
        layer = self.L.Conv2D(len(src), 1, strides=s, use_bias=False, trainable=False, name=n.name)
        return self.layer(layer, x, [pick])

    def node(self, n, ins):
        a, op, L = n.attrs, n.op, self.L
        shapes = self.shapes
        if op == "conv":
            return self.conv(n, ins[0])
        if op == "dense":
            return self.dense(n, ins[0], np.asarray(self.params[f"{n.name}.weight"], np.float32))
        if op == "diagonal":
            d = np.asarray(self.params[f"{n.name}.weight"], np.float32)
            full = np.zeros((int(a["out"]), shapes[n.inputs[0]][0]), np.float32)
            full[np.arange(len(d)), np.arange(len(d))] = d
            return self.dense(n, ins[0], full)
        if op == "bn":
            layer = L.BatchNormalization(epsilon=float(a["eps"]), momentum=1.0 - float(a["momentum"]), name=n.name)
            return self.layer(layer, ins[0], [self.params[f"{n.name}.{k}"]
                                              for k in ("weight", "bias", "running_mean", "running_var")])
        if op in _KERAS_ACTIVATIONS:
            return L.Activation(_KERAS_ACTIVATIONS[op], name=n.name)(ins[0])
        if op in ("relu", "relu6"):
            return L.ReLU(max_value=6.0 if op == "relu6" else None, name=n.name)(ins[0])
        if op == "dropout":
            p = float(a["p"])
            if p <= 0.0:
                return ins[0]
            rank = len(shapes[n.name])
            noise = None if a.get("mode", "element") == "element" else (None, *[1] * rank)
            return L.Dropout(p, noise_shape=noise, name=n.name)(ins[0])
        if op in ("add", "concat") and len(ins) == 1:
            return ins[0]
        if op == "add":
            return L.Add(name=n.name)(ins)
        if op == "concat":
            return L.Concatenate(axis=-1, name=n.name)(ins)
        if op == "mul":
            ranks = [len(shapes[i]) for i in n.inputs]
            ins = [L.Reshape((1, 1, shapes[i][0]), name=f"{n.name}.scale{k}")(t) if r == 1 and max(ranks) == 3
                   else t for k, (i, r, t) in enumerate(zip(n.inputs, ranks, ins))]
            return L.Multiply(name=n.name)(ins)
        if op == "gap":
            return L.GlobalAveragePooling2D(keepdims=bool(a.get("keep", False)), name=n.name)(ins[0])
        if op == "flatten":
            if len(shapes[n.inputs[0]]) == 1:
                return ins[0]
            x = ins[0] if n.name in self.nhwc_flat else L.Permute((3, 1, 2), name=f"{n.name}.nchw")(ins[0])
            return L.Flatten(name=n.name)(x)
        if op in ("maxpool", "avgpool"):
            return self.pool(n, ins[0])
        if op == "adaptive_avgpool":
            (h, w), (oh, ow) = shapes[n.inputs[0]][1:], _pair(a["out"])
            if h % oh or w % ow:
                raise UserError(f"Keras export: adaptive_avgpool '{n.name}' has unequal windows ({h}x{w} to "
                                f"{oh}x{ow}); Keras has no layer for it")
            return L.AveragePooling2D((h // oh, w // ow), name=n.name)(ins[0])
        if op == "select":
            return self.select(n, ins[0])
        raise UserError(f"Keras export: no layer for op '{op}' (node '{n.name}')")  # pragma: no cover


_KERAS_ACTIVATIONS = {"hardswish": "hard_swish", "hardsigmoid": "hard_sigmoid", "silu": "silu",
                      "sigmoid": "sigmoid"}
