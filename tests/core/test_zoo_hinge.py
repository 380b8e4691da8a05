"""ResNeXt and Wide ResNet of the Hinge reference: structure, hand-counted sizes, both backends."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from tests import oracle
from tests.conftest import close, trained_like


def resnext_params_by_hand(depth: int, num_classes: int, card: int = 32, bw: int = 1) -> int:
    """Parameter count read off the reference's ``Block`` / ``ResNeXt`` definitions (BN = 2 per channel)."""
    n, cin = (depth - 2) // 9, 64
    total = 3 * 64 + 2 * 64  # 1x1 stem conv (no bias) + bn1
    for s in range(3):
        gw = card * bw * 2 ** s
        for i in range(n):
            stride = 2 if s and i == 0 else 1
            total += cin * gw + 2 * gw  # conv1 1x1 + bn1
            total += gw * (gw // card) * 9 + 2 * gw  # grouped conv2 3x3 + bn2
            total += gw * 2 * gw + 2 * 2 * gw  # conv3 1x1 (expansion 2) + bn3
            if stride != 1 or cin != 2 * gw:
                total += cin * 2 * gw + 2 * 2 * gw  # shortcut conv + BN
            cin = 2 * gw
    return total + cin * num_classes + num_classes


def test_resnext_and_wrn_sizes_by_hand():
    # ResNeXt-20 32x1d, 10 classes: stem 192 + 128; stage 1: 2 x 4,640; stage 2: 22,400 + 18,048;
    # stage 3: 88,064 + 71,168; linear 2,570 -> 211,850 (the reference counts the same tensors)
    assert resnext_params_by_hand(20, 10) == 211_850
    assert flops.count_params(zoo.build("resnext20")) == 211_850
    assert flops.count_params(zoo.build("resnext164", 100)) == resnext_params_by_hand(164, 100)
    # WRN-16-10, 100 classes: stem 448; layer1 256,832 + 461,760; layer2 1,435,520 + 1,845,120;
    # layer3 5,738,240 + 7,376,640; final BN 1,280; linear 64,100 -> 17,179,940 (~17.1 M, the paper's)
    assert flops.count_params(zoo.build("wrn16_10", 100)) == 17_179_940
    # MACs of ResNeXt-20 by hand: stem 3*64*1024 = 196,608. A block without projection:
    # conv1 2,097,152 + grouped conv2 294,912 + conv3 2,097,152 = 4,489,216 in every stage (widths
    # double as the area quarters). First blocks of stages 2 and 3: conv1 runs before the stride
    # (4,194,304) + 294,912 + 2,097,152 + shortcut 2,097,152 = 8,683,520. FC 2,560.
    assert flops.count_macs(zoo.build("resnext20")) == 196_608 + 4 * 4_489_216 + 2 * 8_683_520 + 2_560 \
        == 35_523_072


def test_resnext_structure_follows_the_reference():
    g = zoo.build("resnext20")
    assert "layer1.0.shortcut.0" not in g  # 64-channel stem == 2 * 32 * 1: identity shortcut
    assert g["conv1"].attrs["k"] == (1, 1)
    c2 = g["layer2.0.conv2"]
    assert c2.attrs["groups"] == 32 and c2.attrs["stride"] == (2, 2)
    assert g.param_shapes()["layer2.0.conv2.weight"] == (64, 2, 3, 3)
    assert g.param_shapes()["layer3.1.conv3.weight"] == (256, 128, 1, 1)
    assert g["layer2.0.shortcut.1"].op == "bn" and g["layer2.0.add"].inputs == ("layer2.0.bn3", "layer2.0.shortcut.1")
    assert g.shapes()["linear"] == (10,) and g.shapes()["layer3.1.relu3"] == (256, 8, 8)
    assert zoo.build("resnext164").shapes()["layer3.17.relu3"] == (256, 8, 8)


def test_wrn_structure_follows_the_reference():
    g = zoo.build("wrn16_10", 100)
    assert all(n.attrs["bias"] for n in g.of_op("conv"))
    assert g["layer2.0.conv2"].attrs["stride"] == (2, 2) and g["layer2.0.conv1"].attrs["stride"] == (1, 1)
    assert g["layer1.0.shortcut.0"].inputs == ("conv1",)  # raw input, not the pre-activated one
    assert "layer1.1.shortcut.0" not in g
    assert g["layer1.1.add"].inputs == ("layer1.1.conv2", "layer1.0.add")
    assert g["bn1"].attrs["momentum"] == 0.9 and g["layer1.0.bn1"].attrs["momentum"] == 0.1
    assert g.shapes()["layer3.1.add"] == (640, 8, 8)


def test_width_plans_prune_paths_and_guard_streams():
    g = zoo.build("resnext20", widths={"layer2.0.conv1": 20, "layer1.1.conv1": 5, "layer3.0.conv3": 200})
    assert g["layer2.0.conv2"].attrs["groups"] == 10 and g["layer1.1.conv2"].attrs["groups"] == 5
    assert g.shapes()["layer3.1.relu3"][0] == 200 and g.param_shapes()["layer3.1.conv1.weight"] == (128, 200, 1, 1)
    with pytest.raises(UserError, match="multiple of the path width 2"):
        zoo.build("resnext20", widths={"layer2.1.conv1": 21})
    with pytest.raises(UserError, match="layer1.0.conv2"):
        zoo.build("resnext20", widths={"layer1.0.conv2": 16})
    with pytest.raises(UserError, match="layer2.1.conv3"):
        zoo.build("resnext20", widths={"layer2.1.conv3": 100})
    w = zoo.build("wrn16_10", widths={"layer1.0.conv1": 7, "layer2.0.conv2": 300})
    assert w.param_shapes()["layer1.0.conv2.weight"] == (160, 7, 3, 3)
    assert w.param_shapes()["layer3.0.shortcut.0.weight"] == (640, 300, 1, 1)
    with pytest.raises(UserError, match="layer2.1.conv2"):
        zoo.build("wrn16_10", widths={"layer2.1.conv2": 3})
    with pytest.raises(UserError, match="9n\\+2"):
        zoo.resnext(21)
    with pytest.raises(UserError, match="6n\\+4"):
        zoo.wide_resnet(15)


def test_small_variants_match_the_numpy_oracle(backend):
    # tiny ResNeXt (cardinality 4) and WRN-10-1 on 8x8: grouped convs, projection shortcuts, biases
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)
    for g in (zoo.resnext(11, cardinality=4, bottleneck_width=2, input_shape=(3, 8, 8)),
              zoo.wide_resnet(10, 1, input_shape=(3, 8, 8))):
        p = trained_like(g, seed=4)
        y, _ = backend.forward(backend.build(g, p), x)
        assert close(oracle.forward(g, p, x)[g.output], y) < 1e-4, g.arch


@pytest.mark.parity
@pytest.mark.parametrize(("name", "classes"), [("resnext20", 10), ("resnext164", 10), ("wrn16_10", 100)])
def test_full_models_run_in_both_backends(backends, name, classes):
    g = zoo.build(name, classes)
    p = trained_like(g, seed=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    outs = {}
    for bname, be in backends.items():
        m = be.build(g, p)
        w = be.get_weights(m)
        assert sum(v.size for k, v in w.items() if not g.is_buffer(k)) == flops.count_params(g), bname
        outs[bname], _ = be.forward(m, x)
        assert outs[bname].shape == (2, classes) and np.isfinite(outs[bname]).all()
    assert close(outs["torch"], outs["tf"]) < 1e-3
