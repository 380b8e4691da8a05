"""Bring your own TensorFlow model: Keras 3 applications and layers, and TF1 graphs with their
checkpoints, in; the same logits out of both backends; bad models are one-line errors.

Random initialisation (nothing is downloaded), with BatchNorm statistics calibrated on random images
(so activations keep their scale through deep networks and the logits of two images differ);
small inputs keep the tests fast. Every Keras application is built once (module fixture).
"""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops
from tests.conftest import close

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

APPS = ("ResNet50", "MobileNetV2", "VGG16", "DenseNet121", "EfficientNetB0")
SIZE = 32


def trained_like(model, x: np.ndarray, seed: int = 0):
    """Random BatchNorm affine parameters and dense biases, then BatchNorm statistics set to those of a
    training-mode pass over ``x`` (momentum 0 and dropout off for that pass), as after training, the
    variances floored."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in drops]
    for layer in bns:
        c = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, c))
        layer.beta.assign(rng.normal(0, 0.2, c))
        layer.momentum = 0.0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    for layer in drops:
        layer.rate = 0.0
    model(x, training=True)
    for layer, rate in zip(drops, rates):
        layer.rate = rate
    for layer in bns:
        layer.momentum = 0.99
        # a channel nearly constant over the batch would amplify float32 rounding by gamma / sigma:
        # its variance floored at a tenth of the layer's mean (activations stay on their scale)
        var = keras.ops.convert_to_numpy(layer.moving_variance)
        layer.moving_variance.assign(var + 0.1 * var.mean())
    return model


def _all_layers(model):
    for layer in model.layers:
        yield from (_all_layers(layer) if isinstance(layer, keras.Model) else [layer])


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


def _logits_everywhere(graph, params, x_nhwc, backends) -> dict:
    x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    return {name: be.forward(be.build(graph, params), x)[0] for name, be in backends.items()}


@pytest.fixture(scope="module", params=APPS)
def application(request):
    """``(name, model, images, logits)``: a Keras application (``weights=None``, 10 classes, logits out),
    calibrated; EfficientNet's input Normalization gets ImageNet-like statistics."""
    rng = np.random.default_rng(0)
    model = getattr(keras.applications, request.param)(weights=None, classes=10, input_shape=(SIZE, SIZE, 3),
                                                       classifier_activation=None)
    # images as each family takes them: EfficientNet normalises pixels itself, the others want them normalised
    x = rng.normal(size=(10, SIZE, SIZE, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):  # after Rescaling(1 / 255): ImageNet's statistics
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            layer.adapt_mean.assign(mean)
            layer.adapt_variance.assign(std ** 2)
            layer.finalize_state()
            x = ((x * std + mean) * 255).astype(np.float32)
        elif request.param == "VGG16" and isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            # no BatchNorm: He initialisation keeps the scale through 16 ReLU layers (Glorot's halves it each)
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
            layer.kernel.assign(rng.normal(0, np.sqrt(2 / fan_in), layer.kernel.shape))
    # calibrated on a batch holding the two test images: at 1x1 maps deep in the networks, statistics of
    # other images can leave theirs thousands of deviations out, and the logits ill-conditioned
    model = trained_like(model, x)
    return request.param, model, x[:2], np.asarray(model(x[:2], training=False))


def test_keras_application_imports_with_equal_logits_and_parameter_counts(application, backends):
    from backends.tf import from_keras

    name, model, x, want = application
    graph, params = from_keras(model)
    assert np.ptp(want, axis=0).max() > 0.05  # the images' logits differ: the comparisons below mean something
    for be_name, got in _logits_everywhere(graph, params, x, backends).items():
        assert close(want, got) < 1e-4, be_name
    # trainable values: Keras' trainable weights; BN statistics: its moving means and variances
    stats = _count(v for v in model.non_trainable_weights if "moving_" in v.path)
    assert sum(p.size for k, p in params.items() if graph.is_buffer(k)) == stats
    extra = 0
    if name == "EfficientNetB0":  # the input normalisation (a mean: not foldable into the zero-padded
        extra = 2 * 3             # stem) is a 1x1 depthwise conv of 3 weights and 3 biases
        assert graph["normalization"].attrs["groups"] == 3 and graph.consumers("input")[0].name == "normalization"
    assert flops.count_params(graph) == _count(model.trainable_weights) + extra
    assert {k.rsplit(".", 1)[0] for k in params} >= {w.path.split("/")[0] for w in model.trainable_weights}
    if name == "MobileNetV2":  # channel groups on an import (asymmetric pads, depthwise convs, ReLU6)
        _prunes_like_its_masked_original(graph, params, x, backends["torch"])


def _prunes_like_its_masked_original(graph, params, x_nhwc, be):
    from compress_core.surgery import channel_groups, mask, prune

    x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    groups = channel_groups(graph)
    rng = np.random.default_rng(1)
    keep = {g.id: np.sort(rng.choice(g.width, max(1, g.width // 2), replace=False)) for g in groups if g.cuttable}
    assert len(keep) > 10
    small, sp = prune(graph, params, keep, groups)
    assert close(be.forward(be.build(*mask(graph, params, keep, groups)), x)[0],
                 be.forward(be.build(small, sp), x)[0]) < 1e-5
    assert flops.count_macs(small) < 0.6 * flops.count_macs(graph)


def _every_layer_model():
    """A functional model with every supported layer form once, softmax output."""
    L = keras.layers
    inp = keras.Input((11, 10, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5])(x)
    x = L.Conv2D(12, 3, padding="valid", activation="relu", name="stem")(x)  # the preprocessing folds here
    a = L.Conv2D(12, 3, padding="same", groups=3, dilation_rate=2, name="grouped")(x)
    a = L.BatchNormalization(epsilon=1e-3, name="grouped_bn")(a)
    a = L.Activation("hard_swish", name="hs")(a)
    b = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=True, name="dw")(x)
    b = L.ReLU(6.0, name="r6")(b)
    c = L.SeparableConv2D(24, 3, strides=2, padding="same", activation="swish", name="sep")(x)
    d = L.Add(name="sum")([b, c])
    se = L.GlobalAveragePooling2D(name="se_gap")(d)
    se = L.Reshape((1, 1, 24), name="se_reshape")(se)
    se = L.Conv2D(6, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(24, 1, activation="sigmoid", name="se_expand")(se)
    d = L.Multiply(name="se_mul")([d, se])
    a = L.ZeroPadding2D(((0, 1), (1, 0)), name="pad")(a)
    a = L.AveragePooling2D(2, name="avg")(a)                      # 10x9 -> 5x4, padding counted
    a = L.MaxPooling2D(3, strides=2, padding="same", name="maxs")(a)  # 5x4 -> 3x2
    d = L.ZeroPadding2D(1, name="pad2")(L.ReLU(name="dr")(d))
    d = L.MaxPooling2D(3, strides=2, name="maxz")(d)              # zeros before a max of ReLU outputs: exact
    m = L.Concatenate(name="cat")([L.Activation("relu", name="ar")(a), d])
    v = L.GlobalMaxPooling2D(name="gmax")(m)
    f = L.Flatten(name="flat")(m)                                 # a 3x2 map: NHWC order
    f = L.BatchNormalization(name="flat_bn")(f)
    f = L.Dropout(0.3, name="drop")(f)
    f = L.Dense(16, activation="hard_sigmoid", name="fc1")(f)
    g = L.GlobalAveragePooling2D(keepdims=True, name="gapk")(m)
    g = L.Reshape((-1,), name="squeeze")(g)
    h = L.Concatenate(name="heads")([f, g, v])
    out = L.Dense(7, activation="softmax", name="logits")(h)
    return keras.Model(inp, out, name="every_layer")


def test_every_supported_keras_layer_imports_exactly(backends):
    from backends.tf import from_keras

    rng = np.random.default_rng(2)
    model = _every_layer_model()
    x = rng.uniform(0, 255, size=(4, 11, 10, 3)).astype(np.float32)
    trained_like(model, x)
    want = np.asarray(model(x, training=False))  # probabilities: the graph gives their logits
    graph, params = from_keras(model)
    assert graph.meta["dropped_output_softmax"]
    assert graph["stem"].inputs == ("input",)    # Rescaling + Normalization folded into a valid conv
    # 'same' at stride 2 on 9x8 (dw) and 5x4 (maxs): one more row or column at the bottom/right
    assert graph["dw"].attrs["pad"] == (1, 0, 1, 1) and graph["maxs"].attrs["pad"] == (1, 0, 1, 1)
    assert graph["avg"].attrs["pad"] == (0, 1, 1, 0) and graph["maxz"].attrs["pad"] == (1, 1)
    assert graph.shapes()["flat"] == (36 * 6,) and graph.shapes()["se_reshape"] == (24, 1, 1)
    assert flops.count_params(graph) == _count(model.trainable_weights)
    outs = _logits_everywhere(graph, params, x, backends)
    for name, logits in outs.items():
        e = np.exp(logits - logits.max(1, keepdims=True))
        assert close(want, e / e.sum(1, keepdims=True)) < 1e-5, name
        assert np.ptp(want, axis=0).max() > 0.01
    # the writers take the import (dotted node names, a node named 'logits', asymmetric pads)
    import onnxruntime as ort
    import torch

    from backends.torch.export import to_module
    from compress_core.ir.onnx_export import to_onnx

    xn = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    session = ort.InferenceSession(to_onnx(graph, params).SerializeToString(), providers=["CPUExecutionProvider"])
    plain = to_module(graph, params)
    assert {"sep.weight", "sep.depthwise.weight"} <= set(plain.state_dict())
    with torch.no_grad():
        assert close(outs["torch"], plain(torch.as_tensor(xn)).numpy()) < 1e-5
    assert close(outs["torch"], session.run(None, {"input": xn})[0]) < 1e-5


def test_preprocessing_before_a_padded_conv_is_an_exact_depthwise_conv_in_a_sequential_model(backends):
    from backends.tf import from_keras

    L = keras.layers
    model = keras.Sequential([keras.Input((9, 9, 3)), L.Normalization(mean=[10.0, 20.0, 30.0], variance=[4, 9, 16], name="norm"),
                              L.Conv2D(8, 3, strides=2, padding="same", name="c"), L.Flatten(), L.Dense(3, name="fc")])
    x = np.random.default_rng(3).uniform(0, 50, size=(2, 9, 9, 3)).astype(np.float32)
    graph, params = from_keras(model)
    assert graph["c"].inputs == ("norm",) and graph["c"].attrs["pad"] == (1, 1)
    want = np.asarray(model(x))
    for name, got in _logits_everywhere(graph, params, x, backends).items():
        assert close(want, got) < 1e-5, name


# -- TF1 -------------------------------------------------------------------------------------------
V1 = tf.compat.v1


def _tf1_net(data_format: str = "NHWC"):
    """A TF1 inference graph (in a fresh ``tf.Graph``): conv + fused BN + ReLU at stride 2 'SAME', a residual
    block (a resource-variable conv, ReLU6, a conv with BiasAdd, Add), an explicit Pad before a VALID conv,
    a depthwise conv, a 'SAME' max-pool and an average pool concatenated, a global Mean and a flatten
    into two MatMuls (one with a bias). Seeded: both layouts get the same weights.
    Returns ``(graph, input, logits)``."""
    nchw = data_format == "NCHW"
    ch = 1 if nchw else 3
    g = tf.Graph()
    rng = np.random.default_rng(4)

    def var(name, shape, resource=False, scale=0.3, loc=0.0, flat_map=None):
        value = (loc + scale * rng.normal(size=shape)).astype(np.float32)
        if flat_map and nchw:  # rows of a flattened (H, W, C) map, reordered for the (C, H, W) flatten
            value = value.reshape(*flat_map, -1).transpose(2, 0, 1, 3).reshape(shape)
        return V1.get_variable(name, initializer=value, use_resource=resource)

    def conv(x, name, cout, stride=1, padding="SAME", resource=False):
        cin = int(x.shape[ch])
        w = var(f"{name}/weights", (3, 3, cin, cout), resource, scale=1 / np.sqrt(9 * cin))
        s = [1, 1, stride, stride] if nchw else [1, stride, stride, 1]
        return tf.nn.conv2d(x, w, s, padding, data_format=data_format, name=f"{name}/Conv2D")

    def bn(x, name):
        c = int(x.shape[ch])
        y, _, _ = V1.nn.fused_batch_norm(
            x, var(f"{name}/gamma", (c,), loc=1.0, scale=0.2), var(f"{name}/beta", (c,), scale=0.1),
            var(f"{name}/moving_mean", (c,), scale=0.1), var(f"{name}/moving_variance", (c,), loc=1.0, scale=0.1),
            epsilon=1e-3, data_format=data_format, is_training=False, name=name)
        return y

    with g.as_default():
        x = V1.placeholder(tf.float32, [None, 3, 12, 12] if nchw else [None, 12, 12, 3], name="images")
        h = tf.nn.relu(bn(conv(x, "conv1", 8, stride=2), "bn1"))                        # 12 -> 6
        r = tf.nn.relu6(bn(conv(h, "block/conv_a", 8, resource=True), "block/bn_a"))
        r = tf.nn.bias_add(conv(r, "block/conv_b", 8), var("block/conv_b/biases", (8,)), data_format=data_format)
        h = tf.nn.relu(tf.add(h, r, name="block/add"))
        pad = [[0, 0], [0, 0], [0, 1], [1, 0]] if nchw else [[0, 0], [0, 1], [1, 0], [0, 0]]
        p = conv(tf.pad(h, pad, name="pad"), "padded", 8, padding="VALID")             # 6 -> 7 -> 5
        dw = tf.nn.depthwise_conv2d(h, var("dw/depthwise_weights", (3, 3, 8, 2)), [1, 1, 1, 1], "SAME",
                                    data_format=data_format, name="dw/depthwise")
        m = tf.concat([tf.nn.max_pool2d(dw, 3, 2, "SAME", data_format=data_format, name="maxpool"),  # 6 -> 3
                       tf.nn.avg_pool2d(p, 3, 1, "VALID", data_format=data_format, name="avgpool")],  # 5 -> 3
                      axis=ch, name="concat")
        gap = tf.reduce_mean(m, [2, 3] if nchw else [1, 2], name="gap")
        flat = tf.reshape(m, [-1, 24 * 9], name="flatten")
        logits = tf.add(tf.matmul(gap, var("fc/weights", (24, 5))) + var("fc/biases", (5,)),
                        tf.matmul(flat, var("fc2/weights", (24 * 9, 5), resource=True, flat_map=(3, 3, 24))), name="logits")
    return g, x, logits


@pytest.fixture(scope="module")
def tf1_saved(tmp_path_factory):
    """The NHWC net saved by ``Saver`` (meta graph + checkpoint), its frozen GraphDef, two images and
    their logits, and the variables by name."""
    directory = tmp_path_factory.mktemp("tf1")
    g, x, logits = _tf1_net()
    images = np.random.default_rng(5).normal(size=(2, 12, 12, 3)).astype(np.float32)
    with g.as_default(), V1.Session(graph=g) as sess:
        sess.run(V1.global_variables_initializer())
        want = sess.run(logits, {x: images})
        prefix = V1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=7)
        frozen = V1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(), ["logits"])
        variables = {v.op.name: sess.run(v) for v in V1.global_variables()}
    return {"prefix": prefix, "meta": prefix + ".meta", "frozen": frozen, "images": images, "want": want,
            "variables": variables}


def test_tf1_checkpoint_imports_with_equal_logits_and_parameter_counts(tf1_saved, backends):
    from backends.tf import from_checkpoint, from_graph_def

    s = tf1_saved
    graph, params = from_checkpoint(s["meta"], s["prefix"], "images", "logits:0")
    assert np.ptp(s["want"], axis=0).max() > 0.05
    for name, got in _logits_everywhere(graph, params, s["images"], backends).items():
        assert close(s["want"], got) < 1e-4, name
    assert {"conv1.weight", "bn1.running_var", "block.conv_a.weight", "block.conv_b.bias", "fc.bias",
            "fc2.weight"} <= set(params)
    assert graph["conv1"].attrs["pad"] == (0, 0, 1, 1) and graph["padded"].attrs["pad"] == (0, 1, 1, 0)
    trainable = sum(v.size for k, v in s["variables"].items() if "moving_" not in k)
    assert flops.count_params(graph) == trainable
    # a frozen GraphDef (Const weights) is the same model
    g2, p2 = from_graph_def(s["frozen"], ["images:0"], ["logits"])
    assert g2.to_json() == graph.to_json() and all(np.array_equal(params[k], p2[k]) for k in params)


def test_tf1_nchw_graph_imports_as_the_nhwc_one(tf1_saved, backends):
    """The same net written channels-first (built, never run: TF's CPU kernels lack NCHW) gives the
    NHWC net's logits; its flatten is in the graph's order, so its matmul's rows are taken as they are."""
    from backends.tf import from_graph_def

    g, _, _ = _tf1_net("NCHW")
    with g.as_default(), V1.Session(graph=g) as sess:
        sess.run(V1.global_variables_initializer())
        variables = {v.op.name: sess.run(v) for v in V1.global_variables()}
    graph, params = from_graph_def(g.as_graph_def(), "images", "logits", variables, data_format="NCHW")
    be = backends["torch"]
    got = be.forward(be.build(graph, params), np.ascontiguousarray(tf1_saved["images"].transpose(0, 3, 1, 2)))[0]
    assert close(tf1_saved["want"], got) < 1e-4


# -- bad models ------------------------------------------------------------------------------------
def _keras_with(layer):
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten(name="flat")(layer(inp))))


BAD_KERAS = {
    "unsupported layer": (lambda: _keras_with(keras.layers.LeakyReLU(name="leaky")),
                          "cannot import Keras layer 'leaky' (LeakyReLU): is not supported"),
    "unsupported activation": (lambda: _keras_with(keras.layers.Conv2D(4, 3, activation="tanh", name="c")),
                               "Keras layer 'c' (Conv2D): has activation 'tanh'"),
    "softmax inside": (lambda: _keras_with(keras.layers.Softmax(name="sm")),
                       "layer 'flat' (Flatten): reads a softmax"),
    "zero padding into an add": (lambda: _keras_with(lambda x: keras.layers.Add(name="plus")(
        [keras.layers.ZeroPadding2D(1, name="zp")(x), keras.layers.Conv2D(3, 3, padding="same")(
            keras.layers.ZeroPadding2D(1)(x))])), "layer 'plus' (Add): reads the zero padding of 'zp'"),
    "max of zeros and negatives": (lambda: _keras_with(lambda x: keras.layers.MaxPooling2D(name="mp")(
        keras.layers.ZeroPadding2D(1, name="zp")(x))), "layer 'mp' (MaxPooling2D): max-pools the zero padding"),
    "average over 'same' padding": (lambda: _keras_with(keras.layers.AveragePooling2D(3, 2, "same", name="ap")),
                                    "layer 'ap' (AveragePooling2D): averages with padding='same'"),
    "a subclassed model": (lambda: type("Net", (keras.Model,), {"call": lambda self, x: x})(),
                           "has no layer graph"),
    "not a model": (lambda: "model.keras", "expected a Keras model, got str"),
}


@pytest.mark.parametrize("case", sorted(BAD_KERAS))
def test_bad_keras_models_are_one_line_errors(case):
    from backends.tf import from_keras

    make, needle = BAD_KERAS[case]
    with pytest.raises(UserError) as e:
        from_keras(make())
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bad_tf1_graphs_and_checkpoints_are_one_line_errors(tf1_saved, tmp_path):
    from backends.tf import from_checkpoint, from_graph_def

    s = tf1_saved
    g = tf.Graph()
    with g.as_default():
        x = V1.placeholder(tf.float32, [None, 4, 4, 3], name="x")
        tf.reshape(tf.tanh(x, name="squash"), [-1, 48], name="out")
    cases = [
        (lambda: from_graph_def(g.as_graph_def(), "x", "out"), "cannot import TF1 op 'squash' (Tanh): is not supported"),
        (lambda: from_graph_def(s["frozen"], "images", "nothing"), "has no op 'nothing'"),
        (lambda: from_graph_def(g.as_graph_def(), "x", "out", input_shape=(3, 5, 5)), "has shape (3, 4, 4)"),
        (lambda: from_checkpoint(s["meta"], str(tmp_path / "none"), "images", "logits"), "cannot read the TF checkpoint"),
        (lambda: from_graph_def(_graph_def(s["meta"]), "images", "logits",
                                {k: v for k, v in s["variables"].items() if k != "bn1/gamma"}),
         "variable 'bn1/gamma' is not in the"),
        (lambda: from_graph_def(_graph_def(s["meta"]), "images", "logits",
                                dict(s["variables"], **{"fc/weights": np.zeros((3, 5))})),
         "variable 'fc/weights' has shape (3, 5) in the checkpoint, the graph (24, 5)"),
    ]
    for make, needle in cases:
        with pytest.raises(UserError) as e:
            make()
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def _graph_def(meta: str):
    from backends.tf.importer import read_graph_def

    return read_graph_def(meta)
