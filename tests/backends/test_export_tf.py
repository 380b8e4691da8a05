"""TensorFlow files (SavedModel, TFLite, Keras) from graphs: the files load and run in TensorFlow
without this library (a subprocess that never imports it) and give the TF backend's logits
within 1e-4; the Keras layer mapping's limits are one-line errors; writes are atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from compress_core.surgery import channel_groups, prune
from tests.conftest import close, tiny_graph, trained_like

tf = pytest.importorskip("tensorflow")

#: runs in a fresh interpreter: TensorFlow's and Keras's own loaders only
LOADER = """
import json, sys
import numpy as np, tensorflow as tf, keras
folder = sys.argv[1]
x = np.load(f"{folder}/x.npy")
out = {}
m = tf.saved_model.load(f"{folder}/net.savedmodel")
out["savedmodel_call"] = m(tf.constant(x)).numpy()
out["savedmodel_signature"] = m.signatures["serving_default"](input=tf.constant(x[:2]))["logits"].numpy()
for name in ("float", "dynamic"):
    runner = tf.lite.Interpreter(model_path=f"{folder}/{name}.tflite").get_signature_runner("serving_default")
    out[f"tflite_{name}"] = runner(input=x)["logits"]
out["keras"] = keras.models.load_model(f"{folder}/net.keras").predict(x, verbose=0)
np.savez(f"{folder}/out.npz", **out)
print(json.dumps(sorted({k.split(".")[0] for k in sys.modules} & {"compress_core", "backends", "methods", "tests"})))
"""


def _pruned_resnet20():
    """A digits ResNet-20 with a random channel cut of every cuttable group (option-A shortcuts
    become selects of the cut streams)."""
    g = zoo.build("resnet20", 10, (1, 8, 8))
    params = trained_like(g, seed=2)
    rng = np.random.default_rng(2)
    groups = channel_groups(g)
    keep = {c.id: np.sort(rng.choice(c.width, max(1, c.width // 2), replace=False)) for c in groups if c.cuttable}
    return prune(g, params, keep, groups)


def test_pruned_resnet20_files_run_in_tensorflow_alone(backends, tmp_path):
    be = backends["tf"]
    g, params = _pruned_resnet20()
    assert g.of_op("select")
    x = np.random.default_rng(0).normal(size=(5, *g.input_shape)).astype(np.float32)
    want = be.forward(be.build(g, params), x)[0]
    assert np.ptp(want, axis=0).max() > 0.05  # the images' logits differ: the comparisons below mean something
    be.export(g, params, str(tmp_path / "net.savedmodel"), "savedmodel")
    be.export(g, params, str(tmp_path / "float.tflite"), "tflite")
    be.export(g, params, str(tmp_path / "dynamic.tflite"), "tflite", quantize="dynamic")
    be.export(g, params, str(tmp_path / "net.keras"), "keras")
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # none of this library was imported
    got = dict(np.load(tmp_path / "out.npz"))
    for k in ("savedmodel_call", "tflite_float", "keras"):
        assert close(want, got[k]) < 1e-4, k
    assert close(want[:2], got["savedmodel_signature"]) < 1e-4
    # dynamic-range quantisation: int8 weights (a smaller file), logits near but not equal
    assert os.path.getsize(tmp_path / "dynamic.tflite") < 0.5 * os.path.getsize(tmp_path / "float.tflite")
    assert 0 < close(want, got["tflite_dynamic"]) < 0.1
    # nothing but the files: every export wrote through a temporary name renamed at the end
    assert sorted(os.listdir(tmp_path)) == ["dynamic.tflite", "float.tflite", "net.keras", "net.savedmodel", "out.npz",
                                            "x.npy"]


def _mobile_bits() -> Graph:
    """Depthwise (unequal strides, a multiplier), squeeze-and-excitation mul, hard-swish and
    hard-sigmoid, SiLU, a grouped conv with stride and dilation, concat, padded and ceil-mode
    max-pool after a ReLU, padded average pool, adaptive pool, stochastic depth, flatten before
    a dense layer and before a vector BatchNorm, a dense BatchNorm and a diagonal layer."""
    nodes = [
        Node("input", "input"),
        conv_node("stem", "input", 16, k=3, stride=2, pad=1), bn_node("stem_bn", "stem"),
        Node("hs", "hardswish", ("stem_bn",)),
        conv_node("dw", "hs", 16, k=3, stride=(1, 2), pad=1, groups=16), bn_node("dw_bn", "dw"),
        Node("dw_act", "relu6", ("dw_bn",)),
        Node("se_gap", "gap", ("dw_act",)), Node("se_fc1", "dense", ("se_gap",), {"out": 4, "bias": True}),
        Node("se_act", "silu", ("se_fc1",)), Node("se_fc2", "dense", ("se_act",), {"out": 16, "bias": True}),
        Node("se_gate", "hardsigmoid", ("se_fc2",)), Node("se", "mul", ("dw_act", "se_gate")),
        conv_node("gc", "se", 16, k=3, pad=2, dilation=2, stride=2, groups=4), bn_node("gc_bn", "gc"),
        Node("gc_act", "relu", ("gc_bn",)),
        conv_node("dw2", "gc_act", 32, k=(3, 1), pad=(1, 0), groups=16, bias=True), Node("sig", "sigmoid", ("dw2",)),
        Node("cat", "concat", ("gc_act", "sig")),
        Node("mp", "maxpool", ("gc_act",), {"k": 3, "stride": 2, "pad": 1, "ceil": True}),
        Node("ap", "avgpool", ("cat",), {"k": 3, "stride": 2, "pad": 1}),
        Node("ad", "adaptive_avgpool", ("ap",), {"out": (1, 1)}),
        Node("drop", "dropout", ("ad",), {"p": 0.2, "mode": "row"}),
        Node("flat", "flatten", ("drop",)), Node("fc", "dense", ("flat",), {"out": 12, "bias": True}),
        bn_node("fc_bn", "fc"), Node("diag", "diagonal", ("fc_bn",), {"out": 10, "bias": True}),
        Node("flat2", "flatten", ("mp",)), bn_node("flat2_bn", "flat2"),
        Node("fc2", "dense", ("flat2_bn",), {"out": 10, "bias": False}),
        Node("sum", "add", ("diag", "fc2")),
    ]
    return Graph("mobile_bits", (3, 16, 12), nodes, "sum")


def _tf_pads():
    """TensorFlow's 'SAME' at stride 2 as imported: (top, left, bottom, right) pads on convs and pools."""
    nodes = [Node("input", "input"),
             conv_node("c1", "input", 8, k=3, stride=2, pad=(0, 1, 1, 2), bias=True), Node("r1", "relu", ("c1",)),
             conv_node("dw", "r1", 8, k=3, stride=2, pad=(1, 0, 2, 1), groups=8), Node("r2", "relu", ("dw",)),
             Node("mp", "maxpool", ("r2",), {"k": 2, "stride": 1, "pad": (0, 0, 1, 1)}),
             Node("ap", "avgpool", ("mp",), {"k": 3, "stride": 2, "pad": (1, 1, 0, 1)}),
             Node("fl", "flatten", ("ap",)), Node("fc", "dense", ("fl",), {"out": 5, "bias": True})]
    return Graph("tf_pads", (3, 9, 10), nodes, "fc")


@pytest.mark.parametrize(("make", "formats"), [(_mobile_bits, ("savedmodel", "tflite", "keras")),
                                               (tiny_graph, ("keras",)), (_tf_pads, ("savedmodel", "keras"))],
                         ids=["mobile_bits", "tiny", "tf_pads"])
def test_every_op_exports_with_equal_logits(make, formats, backends, tmp_path):
    """The tiny graph's awkward cases (asymmetric padding at stride 2, a select with zero channels, a
    flatten of a 2x3 map before a dense layer) matter to the Keras layer mapping; the SavedModel and
    TFLite files run the TF backend's own pass, which the contract suite checks on it."""
    be = backends["tf"]
    g = make()
    params = trained_like(g, seed=4)
    x = np.random.default_rng(1).normal(size=(3, *g.input_shape)).astype(np.float32)
    want = be.forward(be.build(g, params), x)[0]
    assert np.ptp(want, axis=0).max() > 0.05
    for fmt in formats:
        path = str(tmp_path / {"savedmodel": "net", "tflite": "net.tflite", "keras": "net.keras"}[fmt])
        be.export(g, params, path, fmt)
        run = be.load_exported(path, fmt)
        assert close(want, run(x)) < 1e-4 and close(want[1:], run(x[1:])) < 1e-4, fmt  # any batch size


def _keras_refuses(extra_nodes, out, shape=(3, 8, 8)):
    nodes = [Node("input", "input"), conv_node("c", "input", 4, k=3, pad=1), *extra_nodes]
    return Graph("refused", shape, nodes, out)


@pytest.mark.parametrize(("graph", "needle"), [
    (_keras_refuses([Node("ad", "adaptive_avgpool", ("c",), {"out": (3, 3)}), Node("g", "gap", ("ad",))], "g"),
     "adaptive_avgpool 'ad' has unequal windows (8x8 to 3x3)"),
    (_keras_refuses([Node("mp", "maxpool", ("c",), {"k": 3, "stride": 2, "pad": 1}), Node("g", "gap", ("mp",))], "g"),
     "maxpool 'mp' pads a map that may be negative"),
], ids=["adaptive", "maxpool"])
def test_keras_limits_are_one_line_errors_and_write_nothing(graph, needle, backends, tmp_path):
    with pytest.raises(UserError) as e:
        backends["tf"].export(graph, trained_like(graph), str(tmp_path / "m.keras"), "keras")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_bad_arguments_are_refused_before_writing(backends, tmp_path):
    be, g = backends["tf"], tiny_graph()
    params = trained_like(g)
    (tmp_path / "taken").mkdir()
    for args, needle in [((str(tmp_path / "taken"), "savedmodel"), "exists"),
                         ((str(tmp_path / "m.h5"), "keras"), "must end in .keras"),
                         ((str(tmp_path / "m.keras"), "keras", "dynamic"), "only tflite files are quantised"),
                         ((str(tmp_path / "m.tflite"), "tflite", "int4"), "quantize='int4'"),
                         ((str(tmp_path / "m"), "h5"), "exports no 'h5' files")]:
        with pytest.raises(UserError, match=needle):
            be.export(g, params, *args)
    assert os.listdir(tmp_path) == ["taken"] and os.listdir(tmp_path / "taken") == []
