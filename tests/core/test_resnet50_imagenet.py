"""ImageNet ResNet-50 in the zoo, and padded pooling in both backends."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from tests.conftest import close, trained_like


def test_resnet50_params_and_macs_match_torchvision():
    g = zoo.build("resnet50", 1000, (3, 224, 224))
    # torchvision.models.resnet50(): 25,557,032 parameters; 4.09 G multiply-adds at 224x224
    assert flops.count_params(g) == 25_557_032
    assert flops.count_macs(g) == 4_089_184_256
    # stem by hand: 64 outputs * 3*7*7 inputs at 112x112
    costs = {c.name: c for c in flops.layer_costs(g)}
    assert costs["conv1"].macs == 64 * 3 * 49 * 112 * 112
    shapes = g.shapes()
    assert shapes["maxpool"] == (64, 56, 56) and shapes["layer4.2.relu3"] == (2048, 7, 7)
    assert len(g.of_op("conv")) == 53 and g["layer2.0.conv2"].attrs["stride"] == (2, 2)
    assert g["layer2.0.conv1"].attrs["stride"] == (1, 1)  # v1.5: the stride sits on the 3x3 conv


def test_torchvision_parameter_names():
    names = set(zoo.build("resnet50").param_shapes())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_mean", "layer4.2.bn3.bias", "fc.weight", "fc.bias"):
        assert k in names, k
    assert not any("downsample" in k for k in names if k.startswith("layer1.1."))


def test_dcff_45_percent_widths_give_the_published_size():
    # MMRazor's DCFF ResNet-50 rates [0.0] + [0.35, 0.4, 0.1]*10 + [0.3, 0.3, 0.1]*6 (conv1, conv2,
    # conv3 of the 16 blocks; conv3 rate per stage, shared by the residual stream): 15.16 M params
    widths, block = {}, 0
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), zoo.RESNET50_BLOCKS), start=1):
        for i in range(n):
            r1, r2 = (0.35, 0.4) if block < 10 else (0.3, 0.3)
            widths[f"layer{s}.{i}.conv1"] = int(planes * (1 - r1))
            widths[f"layer{s}.{i}.conv2"] = int(planes * (1 - r2))
            block += 1
        widths[f"layer{s}.0.conv3"] = int(planes * 4 * 0.9)
    with pytest.raises(UserError, match="layer1.1.conv3"):
        zoo.build("resnet50", 1000, (3, 224, 224), dict(widths, **{"layer1.1.conv3": 256}))
    stream = widths["layer1.0.conv3"]
    g = zoo.build("resnet50", 1000, (3, 224, 224),
                  dict(widths, **{"layer1.1.conv3": stream, "layer1.0.downsample.0": stream}))
    assert flops.count_params(g) / 1e6 == pytest.approx(15.16, abs=0.005)
    assert g.shapes()["layer1.2.relu3"][0] == 230
    with pytest.raises(UserError, match="downsample"):
        zoo.build("resnet50", widths={"layer1.0.downsample.0": 100})


def _pool_oracle(x, k, s, p, fn, fill):
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    out = np.empty(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = fn(x[:, :, i * s:i * s + k, j * s:j * s + k], axis=(2, 3))
    return out


def test_padded_pools_match_numpy_oracle(backend):
    g = Graph("pools", (3, 7, 6), [
        Node("input", "input"),
        Node("mp", "maxpool", ("input",), {"k": 3, "stride": 2, "pad": 1}),
        Node("ap", "avgpool", ("input",), {"k": 3, "stride": 2, "pad": 1}),
        Node("g", "gap", ("mp",))], "g")
    assert g.shapes()["mp"] == (3, 4, 3)
    # all inputs negative: zero padding would win every border max
    x = -np.random.default_rng(0).uniform(1.0, 2.0, (2, 3, 7, 6)).astype(np.float32)
    _, acts = backend.forward(backend.build(g, {}), x, taps=("mp", "ap"))
    want_max = _pool_oracle(x.astype(np.float64), 3, 2, 1, np.max, -np.inf)
    want_avg = _pool_oracle(x.astype(np.float64), 3, 2, 1, np.mean, 0.0)  # count_include_pad
    assert np.max(acts["mp"]) < -1.0
    np.testing.assert_allclose(acts["mp"], want_max, rtol=0, atol=1e-6)
    np.testing.assert_allclose(acts["ap"], want_avg, rtol=0, atol=1e-6)


def test_pool_pad_larger_than_half_window_is_rejected():
    with pytest.raises(UserError, match="pad"):
        Graph("bad", (1, 8, 8), [Node("input", "input"),
                                 Node("mp", "maxpool", ("input",), {"k": 2, "stride": 2, "pad": 2})], "mp").shapes()


@pytest.mark.parity
def test_resnet50_same_logits_in_both_backends(backends):
    g = zoo.build("resnet50", 10, (3, 64, 64))
    params = trained_like(g)
    x = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)
    logits = {name: b.forward(b.build(g, params), x, taps=("maxpool",)) for name, b in backends.items()}
    assert logits["torch"][0].shape == (2, 10)
    assert close(logits["torch"][1]["maxpool"], logits["tf"][1]["maxpool"]) < 1e-5
    assert close(logits["torch"][0], logits["tf"][0]) < 1e-4


@pytest.mark.parity
def test_sgd_step_through_a_padded_max_pool_agrees(backends):
    # the gradient must reach the border maxima and never the -inf padding
    from backends.base import LossSpec, OptimSpec

    g = Graph("stem", (3, 9, 9), [
        Node("input", "input"), conv_node("conv1", "input", 4, k=3, stride=1, pad=1),
        bn_node("bn1", "conv1"), Node("mp", "maxpool", ("bn1",), {"k": 3, "stride": 2, "pad": 1}),
        Node("g", "gap", ("mp",)), Node("fc", "dense", ("g",), {"out": 3, "bias": True})], "fc")
    params = trained_like(g)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4, 3, 9, 9)).astype(np.float32), rng.integers(0, 3, 4)
    after = {}
    for name, b in backends.items():
        m = b.build(g, params)
        b.trainer(m, LossSpec(), OptimSpec(0.9, False)).step(x, y, lr=0.5)
        after[name] = b.get_weights(m)
    moved = np.abs(after["torch"]["conv1.weight"] - params["conv1.weight"]).max()
    assert moved > 1e-3
    assert max(close(after["torch"][k], after["tf"][k]) for k in params) < 1e-5
