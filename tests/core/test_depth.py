"""The depth cut: which residual blocks can be removed, and that removing one is exact when its branch adds
nothing (its last BatchNorm scaled to zero: ``x + 0``), on the zoo and on imported torchvision networks."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.surgery import blocks_holding, removable_blocks, remove_blocks
from tests import oracle
from tests.conftest import close, trained_like

# by hand: ResNet-56 and -20 have 3 stages of 9 / 3 blocks, the first of stages 2 and 3 strided with an
# option-A shortcut; ResNet-50: 3+4+6+3 bottlenecks, the first of each stage with a projection; MobileNetV2:
# the repeats of its (t, c, n, s) rows past each row's first, 0+1+2+3+2+2+0; VGG-16 has no shortcut
REMOVABLE = {"resnet56": 25, "resnet20": 7, "resnet50": 12, "mobilenetv2": 10, "vgg16": 0}


@pytest.mark.parametrize("arch", sorted(REMOVABLE))
def test_removable_blocks_are_those_with_an_identity_shortcut(arch):
    g = zoo.build(arch, 10, (3, 32, 32))
    blocks = removable_blocks(g)
    assert len(blocks) == REMOVABLE[arch]
    for b in blocks:  # the add reads the block's input itself, and the branch holds a conv
        assert b.source in g[b.add].inputs and b.branch and not b.shortcut


def _silenced(graph, params, adds):
    """``params`` with the last BatchNorm of each block's branch scaled to zero: the branch adds nothing."""
    p = dict(params)
    for b in removable_blocks(graph):
        if b.add in adds:
            last = next(i for i in graph[b.add].inputs if i != b.source)
            assert graph[last].op == "bn"
            p[f"{last}.weight"] = np.zeros_like(p[f"{last}.weight"])
            p[f"{last}.bias"] = np.zeros_like(p[f"{last}.bias"])
    return p


def test_removing_silent_blocks_keeps_the_function_exactly():
    g = zoo.build("resnet20", 10, (1, 8, 8))
    adds = ["layer1.1.add", "layer2.2.add", "layer3.1.add", "layer3.2.add"]  # two of them back to back
    params = _silenced(g, trained_like(g, seed=4), adds)
    small, sp = remove_blocks(g, params, adds)
    assert not [n for n in small.nodes if n.name.startswith(("layer1.1.", "layer2.2.", "layer3.1.", "layer3.2."))]
    assert set(sp) == set(small.param_shapes())
    removed_macs = sum(c.macs for c in flops.layer_costs(g) if c.name.startswith(("layer1.1.", "layer2.2.",
                                                                                  "layer3.1.", "layer3.2.")))
    assert flops.count_macs(small) == flops.count_macs(g) - removed_macs
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    want = oracle.forward(g, params, x)[g.output]
    got = oracle.forward(small, sp, x)[small.output]
    assert close(want, got) < 1e-6


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_removing_silent_blocks_of_imported_networks_keeps_the_function(name, torchvision_models):
    import torch

    from backends.base import get_backend
    from backends.torch import from_module

    torch.manual_seed(0)
    g, p = from_module(getattr(torchvision_models, name)(weights=None).eval(), (3, 64, 64))
    adds = [b.add for b in removable_blocks(g)][1::2]
    assert len(adds) >= 5
    p = _silenced(g, p, adds)
    small, sp = remove_blocks(g, p, adds)
    assert flops.count_macs(small) < flops.count_macs(g)
    b = get_backend("torch")
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    assert close(b.forward(b.build(g, p), x)[0], b.forward(b.build(small, sp), x)[0]) < 1e-4


@pytest.mark.parity
def test_a_network_without_blocks_gives_the_same_logits_in_torch_and_tf(backends):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    small, sp = remove_blocks(g, trained_like(g, seed=2), ["layer1.0.add", "layer1.2.add", "layer3.2.add"])
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    logits = {n: b.forward(b.build(small, sp), x)[0] for n, b in backends.items()}
    assert close(logits["torch"], logits["tf"]) < 1e-4


def test_a_block_that_cannot_be_removed_is_refused_by_name():
    g = zoo.build("resnet20", 10, (1, 8, 8))
    with pytest.raises(UserError, match="layer2.0.add"):  # strided, option-A shortcut
        remove_blocks(g, None, ["layer2.0.add"])


def test_blocks_holding_a_tap():
    g = zoo.build("resnet20", 10, (1, 8, 8))
    assert blocks_holding(g, ["layer2.2.relu1"]) == {"layer2.2.add"}  # inside the branch
    assert blocks_holding(g, ["layer2.2.relu2"]) == {"layer2.2.add"}  # the ReLU after the add goes with it
    assert blocks_holding(g, ["layer2.0.relu1"]) == set()  # a block that stays
    assert blocks_holding(g, ["no such node"]) == set()
