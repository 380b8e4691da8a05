"""Factorised layers in every backend: full-rank Tucker-2 and exact CP factors reproduce the conv.

Each case is a one-conv graph; the decomposed graph is built by the backend and its
output compared with the original conv's output in the same backend (and with the
numpy oracle), for the strides, paddings, dilations, biases and groups that the
reference gets wrong (its CP layers swap the two spatial axes and drop the stride, padding
and dilation of the original conv; its Tucker-2 ignores groups and dilation).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from backends.base import LossSpec
from compress_core.criteria import lowrank
from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node, conv_node
from compress_core.recipes import decompose
from tests import oracle
from tests.conftest import close, trained_like

# every combination the issue lists: stride 1 / 2, padding (1, 1) / (1, 2), dilation 1 / 2, bias on / off;
# a 3x5 kernel so that the two spatial axes differ (the reference mixed them up)
STRIDES, PADS, DILATIONS, BIASES = (1, 2), ((1, 1), (1, 2)), (1, 2), (True, False)
COMBOS = list(itertools.product(STRIDES, PADS, DILATIONS, BIASES))
K = (3, 5)


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


def _case_id(combo):
    stride, pad, dilation, bias = combo
    return f"s{stride}-p{pad[0]}{pad[1]}-d{dilation}-{'bias' if bias else 'nobias'}"


@pytest.mark.parametrize("method", ["tucker2", "cp"])
@pytest.mark.parametrize("combo", COMBOS, ids=[_case_id(c) for c in COMBOS])
def test_full_rank_tucker2_and_exact_cp_reproduce_the_conv(backend, method, combo, x):
    stride, pad, dilation, bias = combo
    g = _one_conv(K, stride, pad, dilation, bias)
    params = trained_like(g)
    if method == "tucker2":
        rep = decompose.tucker2_conv(g, params, "c", ranks=(8, 6))  # full rank: exact
    else:
        # a kernel that is exactly rank 5 in CP: the layer mapping must then be exact
        rng = np.random.default_rng(1)
        f = [rng.normal(size=(d, 5)) for d in (8, 6, *K)]
        params["c.weight"] = lowrank.cp_reconstruct(*f).astype(np.float32)
        rep = decompose.cp_conv(g, params, "c", factors=lowrank.CPFactors(*f, 0.0))
    g2 = _check(backend, g, params, rep, x)
    if method == "tucker2":
        assert [n.op for n in g2.nodes] == ["input", "conv", "conv", "conv"]
        assert g2["c.core"].attrs["stride"] == g["c"].attrs["stride"]
    else:
        assert g2["c.vertical"].attrs["pad"] == (pad[0], 0) and g2["c.horizontal"].attrs["pad"] == (0, pad[1])
        assert g2["c.vertical"].attrs["stride"] == (stride, 1) and g2["c.horizontal"].attrs["stride"] == (1, stride)


def test_grouped_conv_is_factorised_per_group(backend, x):
    g = _one_conv((3, 3), 1, (1, 1), 1, True, groups=2)
    params = trained_like(g)
    rep = decompose.tucker2_conv(g, params, "c", ranks=(4, 3))  # full rank of each group
    g2 = _check(backend, g, params, rep, x)
    assert all(g2[n].attrs["groups"] == 2 for n in ("c.reduce", "c.core", "c"))
    with pytest.raises(decompose.Skip, match="grouped"):
        decompose.cp_conv(g, params, "c", rank=3)


def _head():
    """Dense layers reading a flatten (150 -> 8, fewer outputs) and a ReLU vector (8 -> 12, more outputs)."""
    nodes = [Node("input", "input"), conv_node("c", "input", 6, bias=True), Node("flat", "flatten", ("c",)),
             Node("d1", "dense", ("flat",), {"out": 8, "bias": True}), Node("r", "relu", ("d1",)),
             Node("fc", "dense", ("r",), {"out": 12, "bias": False})]
    return Graph("head", (6, 5, 5), nodes, "fc")


def test_dense_svd_and_diagonal_layers_anywhere(backend):
    g = _head()
    params = trained_like(g)
    x = np.random.default_rng(2).normal(size=(4, 6, 5, 5)).astype(np.float32)
    ref = backend.forward(backend.build(g, params), x)[0]
    full = decompose.svd_dense(g, params, "fc", rank=8)  # full rank: exact
    g2, p2 = decompose.apply(g, params, [full])
    assert close(ref, backend.forward(backend.build(g2, p2), x)[0]) < 1e-5
    # weights that already have the diagonal structure are reproduced by the compact layers
    for name in ("d1", "fc"):
        w = params[f"{name}.weight"]
        params[f"{name}.weight"] = np.where(decompose.diagonal_mask(w.shape), w, 0.0).astype(np.float32)
    ref = backend.forward(backend.build(g, params), x)[0]
    g3, p3 = decompose.apply(g, params, [decompose.diagonal_dense(g, params, n) for n in ("d1", "fc")])
    assert [n.op for n in g3.nodes] == ["input", "conv", "flatten", "diagonal", "relu", "diagonal"]
    got = backend.forward(backend.build(g3, p3), x)[0]
    assert close(ref, got) < 1e-5 and close(oracle.forward(g3, p3, x)["fc"], got) < 1e-5


def test_diagonal_op_trains_decays_and_reads_back_by_name(backend):
    """The contract for the ``diagonal`` op: weight decay covers it, SGD updates it, weights read by name."""
    g = _head()
    params = trained_like(g)
    g3, p3 = decompose.apply(g, params, [decompose.diagonal_dense(g, params, n) for n in ("d1", "fc")])
    p3["d1.bias"] = np.linspace(-1, 1, 8).astype(np.float32)
    model = backend.build(g3, p3)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 6, 5, 5)).astype(np.float32), rng.integers(0, 12, 5)
    out = backend.trainer(model, LossSpec(weight_decay=1e-2)).step(x, y, lr=0.1)
    want = 0.5e-2 * sum(float((v.astype(np.float64) ** 2).sum()) for k, v in p3.items())  # every param is decayed
    assert out["wd"] == pytest.approx(want, rel=1e-5)
    got = backend.get_weights(model, ["d1.weight", "fc.weight"])
    assert sorted(got) == ["d1.weight", "fc.weight"] and got["fc.weight"].shape == (8,)
    assert not np.array_equal(got["d1.weight"], p3["d1.weight"])  # gradients reach the diagonal
    with pytest.raises(UserError, match="no parameter 'fc.bias'"):
        backend.get_weights(model, ["fc.bias"])
