"""The DCFF fused conv in every backend: forward against a numpy oracle, gradients, buffers, export.

A fused conv keeps ``n`` raw filters and a ``fusion [m, n]`` buffer and computes a
plain conv with ``fusion @ W`` (compress_core.ir.graph). Checked here: the forward pass
(with bias, stride and padding), that an SGD step moves every raw filter while the
fusion is soft and only the selected ones when it is one-hot, that the buffer is
neither trained nor weight-decayed but round-trips through get/set_weights and
checkpoints, and that the exported plain network gives the same logits (1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import LossSpec
from compress_core.ir import checkpoint, flops
from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from compress_core.recipes import dcff
from tests import oracle
from tests.conftest import close, trained_like

N_RAW, M = 8, 5


def _fused_graph(bias=True) -> Graph:
    c1 = conv_node("c1", "input", M, k=3, stride=2, pad=(1, 2), bias=bias)
    c1 = Node("c1", "conv", c1.inputs, {**c1.attrs, "fused_from": N_RAW})
    c2 = conv_node("c2", "r1", 6, k=3, bias=False)
    c2 = Node("c2", "conv", c2.inputs, {**c2.attrs, "fused_from": 7})
    nodes = [Node("input", "input"), c1, bn_node("bn1", "c1"), Node("r1", "relu", ("bn1",)), c2,
             bn_node("bn2", "c2"), Node("r2", "relu", ("bn2",)), Node("g", "gap", ("r2",)),
             Node("fc", "dense", ("g",), {"out": 4, "bias": True})]
    return Graph("fused_tiny", (3, 9, 10), nodes, "fc")


def _soft_fusion(rng, m, n) -> np.ndarray:
    p = rng.uniform(0.05, 1.0, (m, n))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fused():
    g = _fused_graph()
    rng = np.random.default_rng(3)
    params = trained_like(g, seed=5)
    params["c1.fusion"] = _soft_fusion(rng, M, N_RAW)
    params["c2.fusion"] = _soft_fusion(rng, 6, 7)
    x = rng.normal(size=(4, 3, 9, 10)).astype(np.float32)
    return g, params, x


def test_graph_shapes_and_costs_of_a_fused_conv(fused):
    g, _, _ = fused
    shapes = g.param_shapes()
    assert shapes["c1.weight"] == (N_RAW, 3, 3, 3) and shapes["c1.bias"] == (N_RAW,)
    assert shapes["c1.fusion"] == (M, N_RAW) and shapes["c2.weight"] == (7, M, 3, 3)
    assert Graph.is_buffer("c1.fusion") and not Graph.is_buffer("c1.weight")
    # costs are those of the exported conv: M filters (both output 5x6 maps)
    costs = {c.name: c for c in flops.layer_costs(g)}
    assert costs["c1"].params == M * 27 + M and costs["c1"].macs == M * 27 * 30
    assert costs["c2"].params == 6 * M * 9 and costs["c2"].macs == 6 * M * 9 * 30


def test_forward_matches_the_numpy_oracle(backend, fused):
    g, params, x = fused
    plain = {k: v for k, v in params.items() if not k.endswith(".fusion")}
    for c in ("c1", "c2"):  # the oracle runs plain convs holding P @ W
        plain[f"{c}.weight"] = np.einsum("mn,nihw->mihw", params[f"{c}.fusion"].astype(np.float64),
                                         params[f"{c}.weight"])
    plain["c1.bias"] = params["c1.fusion"].astype(np.float64) @ params["c1.bias"]
    plain_graph = Graph(g.arch, g.input_shape,
                        [Node(n.name, n.op, n.inputs, {k: v for k, v in n.attrs.items() if k != "fused_from"})
                         for n in g.nodes], g.output)
    want = oracle.forward(plain_graph, plain, x)["fc"]
    model = backend.build(g, params)
    assert close(want, backend.forward(model, x)[0]) < 1e-5
    got = backend.get_weights(model)
    assert all(np.array_equal(got[k], params[k]) for k in params)  # exact round trip, buffer included


def _step(backend, g, params, x):
    model = backend.build(g, params)
    trainer = backend.trainer(model, LossSpec(weight_decay=0.1))
    trainer.step(x, np.array([0, 1, 2, 3]), lr=0.1)
    return backend.get_weights(model), trainer


def test_soft_fusion_trains_every_raw_filter_and_never_the_buffer(backend, fused):
    g, params, x = fused
    after, trainer = _step(backend, g, params, x)
    moved = np.abs(after["c1.weight"] - params["c1.weight"]).reshape(N_RAW, -1).max(1)
    assert np.all(moved > 1e-6)
    assert np.array_equal(after["c1.fusion"], params["c1.fusion"])  # not trained, not decayed
    assert not any(k.endswith(".fusion") for k in (s.split("/", 1)[1] for s in trainer.state()))


def test_one_hot_fusion_trains_only_the_selected_filters(backend, fused):
    g, params, x = fused
    keep = np.array([0, 2, 3, 6, 7])
    params = dict(params, **{"c1.fusion": np.eye(N_RAW, dtype=np.float32)[keep]})
    loss_only = dict(params)
    model = backend.build(g, loss_only)
    backend.trainer(model, LossSpec()).step(x, np.array([0, 1, 2, 3]), lr=0.1)  # no weight decay
    moved = np.abs(backend.get_weights(model)["c1.weight"] - params["c1.weight"]).reshape(N_RAW, -1).max(1)
    assert np.all(moved[keep] > 1e-6) and np.all(moved[[1, 4, 5]] == 0)


def test_export_gives_the_same_logits_and_loads_as_a_plain_checkpoint(backend, fused, tmp_path):
    g, params, x = fused
    # a trained-like state: one step changes weights and BN statistics
    params, _ = _step(backend, g, params, x)
    small, sp = dcff.export(g, params)
    assert all("fused_from" not in n.attrs for n in small.nodes) and not any(k.endswith(".fusion") for k in sp)
    assert sp["c1.weight"].shape == (M, 3, 3, 3) and sp["bn1.running_var"].shape == (M,)
    path = str(tmp_path / "compact.safetensors")
    checkpoint.save_checkpoint(path, small, sp)
    small, sp, _ = checkpoint.load_checkpoint(path)
    fused_logits = backend.forward(backend.build(g, params), x)[0]
    assert np.max(np.abs(fused_logits - backend.forward(backend.build(small, sp), x)[0])) < 1e-5
    assert flops.summary(small) == flops.summary(g)


@pytest.mark.parity
def test_tf_and_torch_agree_on_fused_forward_and_step(backends, fused):
    g, params, x = fused
    logits, weights = {}, {}
    for name, b in backends.items():
        logits[name] = b.forward(b.build(g, params), x)[0]
        weights[name] = _step(b, g, params, x)[0]
    assert close(logits["torch"], logits["tf"]) < 1e-5
    for k in weights["torch"]:
        assert close(weights["torch"][k], weights["tf"][k]) < 1e-5, k
