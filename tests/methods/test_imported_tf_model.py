"""A user's own TensorFlow model through the command line: a saved Keras model (``keras:``) compressed
by CDC on both backends, a TF1 meta graph with its checkpoint (``tf1:``) trained; bad models, graphs and
checkpoints are one-line errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from methods import cdc_prune, dcff, export, train

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
V1 = tf.compat.v1

ONE = ("--config.train.epochs=1", "--config.train.batch_size=256")
CDC = (*ONE, "--config.cdc.block_threshold=-1", "--config.distill.dca_weight=0", "--config.finetune.epochs=0",
       "--config.distill.epochs=0", "--config.cdc.multiple=1")  # an 8-16-wide net: widths rounded to 8 cannot halve it


def _digits_cnn(extra=None):
    """A small Keras CNN for the 8x8 digits: a 'same' conv at stride 2 (asymmetric pads), BatchNorm,
    a residual add, global pooling, a softmax output."""
    L = keras.layers
    x = inp = keras.Input((8, 8, 1))
    x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", use_bias=False,
                                                                          name="conv1")(x)))
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.Add(name="res")([x, y])
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv3")(x)
    if extra is not None:
        x = extra(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="fc")(x), name="digits_cnn")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "digits_cnn.keras"
    _digits_cnn().save(path)
    return str(path)


@pytest.mark.parametrize("backend", ["tf", "torch"])
def test_cdc_compresses_a_saved_keras_model(backend, keras_file, tmp_path):
    work = tmp_path / "w"
    assert cdc_prune.cli(["--backend", backend, "--workdir", str(work), f"--config.model.source=keras:{keras_file}",
                          *CDC]) == 0
    rows = json.loads((work / "metrics.json").read_text())["rows"]
    assert rows[-1]["macs"] < rows[0]["macs"] and rows[0]["params"] == _digits_cnn().count_params() - 2 * 8
    assert json.loads((work / "config.json").read_text())["model"]["source"] == f"keras:{keras_file}"


#: runs in a fresh interpreter: TensorFlow's own loaders only
_LOADER = """
import json, sys
import numpy as np, tensorflow as tf
x = np.load(sys.argv[1])
saved = tf.saved_model.load(sys.argv[2])(tf.constant(x)).numpy()
lite = tf.lite.Interpreter(model_path=sys.argv[3]).get_signature_runner("serving_default")(input=x)["logits"]
print(json.dumps({"saved": saved.tolist(), "lite": lite.tolist(),
                  "ours": sorted({k.split(".")[0] for k in sys.modules} & {"compress_core", "backends", "methods"})}))
"""


@pytest.mark.parametrize(("method", "args", "result"), [
    (cdc_prune, CDC, "pruned.safetensors"),
    (dcff, (*ONE, "--config.dcff.rates=[0.5]"), "dcff.safetensors")])
def test_a_keras_model_compressed_by_cdc_and_dcff_exports_files_plain_tensorflow_runs(method, args, result,
                                                                                      keras_file, tmp_path):
    """The issue's path end to end: a saved Keras model in, channels really removed, SavedModel and
    TFLite files out that a process without this library loads, with the backend's logits."""
    import subprocess
    import sys

    from backends.base import get_backend
    from compress_core.ir import checkpoint, flops
    work = tmp_path / "w"
    assert method.cli(["--backend", "tf", "--workdir", str(work), f"--config.model.source=keras:{keras_file}",
                       *args]) == 0
    graph, params, _ = checkpoint.load_checkpoint(str(work / result))
    original = _digits_cnn()
    assert flops.count_params(graph) < original.count_params() - 2 * 8  # filters removed, not zeroed
    files = {"savedmodel": tmp_path / "net", "tflite": tmp_path / "net.tflite"}
    for fmt, out in files.items():
        assert export.cli(["--backend", "tf", "--workdir", str(tmp_path / f"ex-{fmt}"), "--checkpoint",
                           str(work / result), "--format", fmt, "--out", str(out), "--repeats", "2"]) == 0
    x = np.random.default_rng(0).normal(size=(3, *graph.input_shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run([sys.executable, "-c", _LOADER, str(tmp_path / "x.npy"), str(files["savedmodel"]),
                          str(files["tflite"])], check=False, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["ours"] == []
    backend = get_backend("tf")
    want = backend.forward(backend.build(graph, params), x)[0]
    scale = np.abs(want).max()
    for k in ("saved", "lite"):
        assert np.abs(np.asarray(got[k]) - want).max() <= 1e-4 * scale, k


def _tf1_digits(directory, scope: str = "", width: int = 16):
    """A TF1 digits net saved by ``Saver`` (BatchNorm statistics computed from variables in the graph):
    its meta graph path and checkpoint prefix; ``scope`` prefixes the variable names."""
    g = tf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        def var(name, shape):
            return V1.get_variable(scope + name, initializer=(0.3 * rng.normal(size=shape)).astype(np.float32))

        x = V1.placeholder(tf.float32, [None, 8, 8, 1], name="images")
        h = tf.nn.conv2d(x, var("conv1/weights", (3, 3, 1, 8)), 1, "SAME")
        h, _, _ = V1.nn.fused_batch_norm(h, var("bn1/gamma", (8,)) + 1.0, var("bn1/beta", (8,)),
                                         var("bn1/mean", (8,)), tf.abs(var("bn1/variance", (8,))) + 0.5,
                                         is_training=False)
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(tf.nn.relu(h), var("conv2/weights", (3, 3, 8, width)), 2, "SAME"),
                                      var("conv2/biases", (width,))))
        tf.add(tf.matmul(tf.reduce_mean(h, [1, 2]), var("fc/weights", (width, 10))), var("fc/biases", (10,)),
               name="logits")
        with V1.Session(graph=g) as sess:
            sess.run(V1.global_variables_initializer())
            prefix = V1.train.Saver().save(sess, str(directory / "net.ckpt"))
    return prefix + ".meta", prefix


def test_a_tf1_checkpoint_trains_from_the_command_line(tmp_path):
    meta, prefix = _tf1_digits(tmp_path)
    work = tmp_path / "w"
    names = "--config.model.kwargs={'inputs': 'images', 'outputs': 'logits'}"
    assert train.cli(["--backend", "torch", "--workdir", str(work), f"--config.model.source=tf1:{meta}",
                      f"--config.model.weights={prefix}", names, *ONE]) == 0
    assert (work / "train" / "best.safetensors").exists()


def _bad_keras(tmp_path, extra, name="bad.keras"):
    path = tmp_path / name
    _digits_cnn(extra).save(path)
    return f"--config.model.source=keras:{path}"


def _not_a_model(tmp_path):
    (tmp_path / "junk.keras").write_bytes(b"not a zip file")
    return f"--config.model.source=keras:{tmp_path / 'junk.keras'}"


def _tf1_args(tmp_path, weights=None, kwargs="{'inputs': 'images', 'outputs': 'logits'}", **net):
    meta, prefix = _tf1_digits(tmp_path, **net)
    return [f"--config.model.source=tf1:{meta}", f"--config.model.weights={weights or prefix}",
            f"--config.model.kwargs={kwargs}"]


def _other_checkpoint(tmp_path, **net):
    """The meta graph of one net with the checkpoint of another."""
    meta, _ = _tf1_digits(tmp_path)
    (tmp_path / "other").mkdir()
    _, prefix = _tf1_digits(tmp_path / "other", **net)
    return [f"--config.model.source=tf1:{meta}", f"--config.model.weights={prefix}",
            "--config.model.kwargs={'inputs': 'images', 'outputs': 'logits'}"]


BAD = {
    "unsupported layer": (lambda t: [_bad_keras(t, keras.layers.LeakyReLU(name="leaky"))],
                          "Keras layer 'leaky' (LeakyReLU): is not supported"),
    "not a model": (lambda t: [_not_a_model(t)], "cannot load the Keras model"),
    "missing keras file": (lambda t: [f"--config.model.source=keras:{t / 'none.keras'}"],
                           "Keras model file not found"),
    "wrong file ending": (lambda t: ["--config.model.source=keras:model.txt"], "write keras:path/model"),
    "weights of another kind": (lambda t: [f"--config.model.source=keras:{t / 'm.keras'}",
                                           "--config.model.weights=w.pth"], "nor a Keras weights file"),
    "tf1 without tensor names": (lambda t: _tf1_args(t, kwargs="{}"), "needs model.kwargs naming its tensors"),
    "tf1 without checkpoint": (lambda t: _tf1_args(t, weights=str(t / "none.ckpt")), "is not a TF checkpoint prefix"),
    "checkpoint missing a variable": (lambda t: _other_checkpoint(t, scope="net/"), "is not in the checkpoint"),
    "checkpoint of other shapes": (lambda t: _other_checkpoint(t, width=12),
                                   "'fc/weights' has shape (12, 10) in the checkpoint, the graph (16, 10)"),
    "unknown tensor": (lambda t: _tf1_args(t, kwargs="{'inputs': 'images', 'outputs': 'nothing'}"),
                       "has no op 'nothing'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tensorflow_sources_are_one_line_errors_before_any_work(case, tmp_path, capsys):
    args = BAD[case][0](tmp_path)
    work = tmp_path / "untouched"
    assert train.cli(["--backend", "torch", "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and BAD[case][1] in err, err
    assert not work.exists()
