"""Factorised layers in every backend: full-rank Tucker-2 and exact CP factors reproduce the conv.

Each case is a one-conv graph; the decomposed graph is built by the backend and its
output compared with the original conv's output in the same backend (and with the
numpy oracle), for the strides, paddings, dilations, biases and groups that the
reference gets wrong (docs/methods/decomposition.md, section 1.3).
"""

from __future__ import annotations

import numpy as np
import pytest

from compress_core import decompose, lowrank
from compress_core.graph import Graph, Node, conv_node
from tests import oracle
from tests.conftest import close, trained_like

CASES = {  # name: (k, stride, pad, dilation, bias)
    "stride1": ((3, 3), 1, (1, 1), 1, True),
    "stride2": ((3, 3), 2, (1, 1), 1, False),
    "pad_1_2": ((3, 5), 1, (1, 2), 1, True),
    "stride2_pad_1_2": ((3, 5), (2, 1), (1, 2), 1, False),
    "dilation2": ((3, 3), 1, (2, 2), 2, True),
}


def _one_conv(k, stride, pad, dilation, bias, groups=1, cin=6, cout=8):
    nodes = [Node("input", "input"),
             conv_node("c", "input", cout, k=k, stride=stride, pad=pad, dilation=dilation, groups=groups, bias=bias)]
    return Graph("one", (cin, 9, 11), nodes, "c")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(3, 6, 9, 11)).astype(np.float32)


def _out(backend, g, params, x):
    """The output map, NCHW in every backend (taps are converted; TF returns map logits NHWC)."""
    return backend.forward(backend.build(g, params), x, taps=[g.output])[1][g.output]


def _check(backend, g, params, rep, x):
    ref = _out(backend, g, params, x)
    g2, p2 = decompose.apply(g, params, [rep])
    got = _out(backend, g2, p2, x)
    assert got.shape == ref.shape
    assert close(ref, got) < 1e-5
    assert close(oracle.forward(g, params, x)["c"], got) < 1e-5
    return g2


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_rank_tucker2_reproduces_the_conv(backend, case, x):
    g = _one_conv(*CASES[case])
    params = trained_like(g)
    rep = decompose.tucker2_conv(g, params, "c", ranks=(8, 6))
    g2 = _check(backend, g, params, rep, x)
    assert [n.op for n in g2.nodes] == ["input", "conv", "conv", "conv"]
    assert g2["c.core"].attrs["stride"] == g["c"].attrs["stride"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_cp_factors_reproduce_the_conv(backend, case, x):
    k, stride, pad, dilation, bias = CASES[case]
    g = _one_conv(k, stride, pad, dilation, bias)
    params = trained_like(g)
    # a kernel that is exactly rank 5 in CP: the layer mapping must then be exact
    rng = np.random.default_rng(1)
    f = [rng.normal(size=(d, 5)) for d in (8, 6, *k)]
    params["c.weight"] = lowrank.cp_reconstruct(*f).astype(np.float32)
    rep = decompose.cp_conv(g, params, "c", factors=lowrank.CPFactors(*f, 0.0))
    g2 = _check(backend, g, params, rep, x)
    assert g2["c.vertical"].attrs["pad"] == (pad[0], 0) and g2["c.horizontal"].attrs["pad"] == (0, pad[1])


def test_grouped_conv_is_factorised_per_group(backend, x):
    g = _one_conv((3, 3), 1, (1, 1), 1, True, groups=2)
    params = trained_like(g)
    rep = decompose.tucker2_conv(g, params, "c", ranks=(4, 3))  # full rank of each group
    g2 = _check(backend, g, params, rep, x)
    assert all(g2[n].attrs["groups"] == 2 for n in ("c.reduce", "c.core", "c"))
    with pytest.raises(decompose.Skip, match="grouped"):
        decompose.cp_conv(g, params, "c", rank=3)


def test_dense_svd_and_diagonal_layers(backend):
    nodes = [Node("input", "input"), conv_node("c", "input", 6, bias=True), Node("pool", "gap", ("c",)),
             Node("fc", "dense", ("pool",), {"out": 4, "bias": True})]
    g = Graph("head", (3, 5, 5), nodes, "fc")
    params = trained_like(g)
    x = np.random.default_rng(2).normal(size=(4, 3, 5, 5)).astype(np.float32)
    ref = backend.forward(backend.build(g, params), x)[0]
    full = decompose.svd_dense(g, params, "fc", rank=4)  # full rank: exact
    g2, p2 = decompose.apply(g, params, [full])
    assert close(ref, backend.forward(backend.build(g2, p2), x)[0]) < 1e-5
    # a weight that already has the diagonal structure is reproduced by the compact layer
    params["fc.weight"] = np.where(decompose.diagonal_mask((4, 6)), params["fc.weight"], 0.0).astype(np.float32)
    ref = backend.forward(backend.build(g, params), x)[0]
    diag = decompose.diagonal_dense(g, params, "fc")
    g3, p3 = decompose.apply(g, params, [diag])
    assert "pool" not in g3 and g3["fc"].op == "gap"
    assert close(ref, backend.forward(backend.build(g3, p3), x)[0]) < 1e-5
