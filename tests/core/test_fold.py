"""BatchNorm folding (numpy only): the folded graph computes what the original computes with
inference-mode BatchNorm (numpy oracle, float64), and only BatchNorms whose conv or dense layer
nothing else reads are folded."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.ir import flops, zoo
from compress_core.ir.checkpoint import check_params
from compress_core.ir.fold import fold_bn, foldable
from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from tests import oracle
from tests.conftest import close, tiny_graph, trained_like


def _shared_conv() -> Graph:
    """``c1`` is read by its BatchNorm and by a residual add: its BatchNorm must stay; ``fc``'s
    vector BatchNorm and a grouped conv's folds; ``c3`` is the output of a branch and a BN's input."""
    nodes = [
        Node("input", "input"),
        conv_node("c1", "input", 6, k=3, bias=True), bn_node("bn1", "c1"), Node("r1", "relu", ("bn1",)),
        Node("sum", "add", ("r1", "c1")),
        conv_node("c2", "sum", 6, k=3, groups=3), bn_node("bn2", "c2"),
        conv_node("c3", "bn2", 4, k=1), bn_node("bn3", "c3"), Node("cat", "concat", ("c3", "bn3")),
        Node("g", "gap", ("cat",)), Node("fc", "dense", ("g",), {"out": 5, "bias": False}), bn_node("bnfc", "fc"),
    ]
    return Graph("shared", (3, 6, 5), nodes, "bnfc")


CASES = {"resnet20": lambda: zoo.build("resnet20", 10, (1, 8, 8)), "tiny": tiny_graph, "shared": _shared_conv}
#: BatchNorms that must fold (None: every one)
FOLDED = {"resnet20": None, "tiny": {"bn1", "bn2"}, "shared": {"bn2", "bnfc"}}


@pytest.mark.parametrize("name", list(CASES))
def test_folded_graph_equals_the_original_at_inference(name):
    g = CASES[name]()
    params = trained_like(g, seed=3)
    small, sp = fold_bn(g, params)
    want = FOLDED[name] if FOLDED[name] is not None else {n.name for n in g.of_op("bn")}
    assert set(foldable(g)) == want
    assert {n.name for n in small.of_op("bn")} == {n.name for n in g.of_op("bn")} - want
    check_params(small, sp)  # a complete, well-shaped parameter set of the new graph
    assert flops.count_macs(small) == flops.count_macs(g)
    x = np.random.default_rng(0).normal(size=(3, *g.input_shape))
    ref = oracle.forward(g, params, x)[g.output]
    assert np.ptp(ref, axis=0).max() > 0.05  # the images' outputs differ: the comparison means something
    assert close(ref, oracle.forward(small, sp, x)[small.output]) < 1e-5


def test_shared_layer_keeps_its_batchnorm_and_everything_else_as_it_was():
    g = _shared_conv()
    params = trained_like(g, seed=1)
    small, sp = fold_bn(g, params)
    # c1 has two readers, c3 too (bn3 and the concat): their layers and BatchNorms are untouched
    for k in ("c1.weight", "c1.bias", "bn1.weight", "bn1.running_var", "c3.weight", "bn3.running_mean"):
        assert np.array_equal(sp[k], params[k]), k
    assert "c3.bias" not in sp and not small["c3"].attrs["bias"]
    # the folded layers gain a bias; the readers of a removed BatchNorm read its layer; the output moves too
    assert small["c2"].attrs["bias"] and small["c3"].inputs == ("c2",) and small.output == "fc"
    assert fold_bn(small, sp)[0].nodes == small.nodes  # nothing left to fold


def test_fused_conv_keeps_its_batchnorm():
    c = conv_node("c", "input", 4, k=1)
    g = Graph("fused", (3, 4, 4), [Node("input", "input"), Node("c", "conv", ("input",), {**c.attrs, "fused_from": 6}),
                                   bn_node("bn", "c"), Node("g", "gap", ("bn",))], "g")
    assert foldable(g) == {}
    small, sp = fold_bn(g, trained_like(g))
    assert [n.op for n in small.nodes] == ["input", "conv", "bn", "gap"] and "c.fusion" in sp
