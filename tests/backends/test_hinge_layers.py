"""Hinge on live models: attached and compressed layers compute conv-then-A (both backends);
per-parameter learning-rate multipliers (``OptimSpec.lr_scale``), TF against torch."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import LossSpec, OptimSpec
from compress_core.criteria import group_sparsity
from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.recipes import hinge
from tests.conftest import close, tiny_graph, trained_like

X = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)


def _zero(params, s, axis, idx):
    a = group_sparsity.from_1x1(params[f"{s.node}.weight"])
    if axis == "rows":
        a[idx] = 0
    else:
        a[:, idx] = 0
    params[f"{s.node}.weight"] = group_sparsity.to_1x1(a)


def _full(graph, params, place):
    return {(s.node, axis): np.arange(len(v)) for s in place.sparse for axis, v in hinge.group_norms(params, s).items()}


def test_attached_and_decomposed_networks_compute_the_original_function(backend):
    g = zoo.build("resnet20", 10, (3, 8, 8))
    params = trained_like(g, seed=4)
    ga, p, place = hinge.attach(g, params)
    y0 = backend.forward(backend.build(g, params), X)[0]
    assert close(y0, backend.forward(backend.build(ga, p), X)[0]) < 1e-5
    rng = np.random.default_rng(1)
    for s in place.sparse:  # zero rows: the decomposed network is the same function
        _zero(p, s, "rows", rng.permutation(len(hinge.group_norms(p, s)["rows"]))[:5])
    y1 = backend.forward(backend.build(ga, p), X)[0]
    small, sp = hinge.compress(ga, p, place, 1e-6, same_ratio=False)
    assert small.shapes()["layer3.2.conv2"][0] < ga.shapes()["layer3.2.conv2"][0]
    assert close(y1, backend.forward(backend.build(small, sp), X)[0]) < 1e-5


CASES = {  # graph, index of the compressed matrix, its group axes
    "vgg rows and columns": (lambda: zoo.build("vgg16", 10, (3, 8, 8), {f"features.{i}": 12 for i in range(13)}),
                             4, ("rows", "columns")),
    "wrn columns merged": (lambda: zoo.wide_resnet(depth=10, widen=2, input_shape=(3, 8, 8)), 0, ("columns",)),
    "wrn rows": (lambda: zoo.wide_resnet(depth=10, widen=2, input_shape=(3, 8, 8)), 1, ("rows",)),
    "bottleneck conv1 columns": (lambda: zoo.resnet164(depth=20, input_shape=(3, 8, 8)), 0, ("columns",)),
    "bottleneck conv3 rows": (lambda: zoo.resnet164(depth=20, input_shape=(3, 8, 8)), 1, ("rows",)),
    "resnext paths": (lambda: zoo.build("resnext20", 10, (3, 8, 8)), 2, ("paths",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compressed_layer_is_conv_then_a(backend, case):
    """One matrix compressed, the rest kept: its block output equals the kept channels of conv-then-A."""
    make, i, axes = CASES[case]
    g = make()
    if case.startswith("bottleneck"):  # a 20-layer bottleneck net maps as resnet164 does
        g = g.replace(g.nodes, arch="resnet164")
    ga, p, place = hinge.attach(g, trained_like(g, seed=5))
    s = place.sparse[i]
    keep = _full(ga, p, place)
    for axis in axes:
        count = len(keep[(s.node, axis)])
        gone = np.arange(0, count, 3)
        keep[(s.node, axis)] = np.setdiff1d(np.arange(count), gone)
        if axis == "paths":  # zero path = zero conv1 filters and conv3 columns
            per = p[f"{s.rows_of}.weight"].shape[0] // s.paths
            ch = (gone[:, None] * per + np.arange(per)).ravel()
            p[f"{s.rows_of}.weight"][ch] = 0
            p[f"{s.node}.weight"][:, ch] = 0
        elif axis == "rows":
            _zero(p, s, axis, gone)
    small, sp = hinge.apply_keep(ga, p, place, keep)
    tap = s.rows_of if s.merge else s.node
    before = backend.forward(backend.build(ga, p), X, [s.node])[1][s.node]
    after = backend.forward(backend.build(small, sp), X, [tap])[1][tap]
    if "columns" in axes:
        before = before[:, keep[(s.node, "columns")]]
        assert before.shape[1] < ga.shapes()[s.node][0]
    assert after.shape == before.shape and close(before, after) < 1e-5
    if s.merge:
        assert f"{s.node}" not in small and small[s.rows_of].attrs["bias"]


def test_lr_scale_sets_each_parameters_rate_and_backends_agree(backends):
    g = tiny_graph()
    params = trained_like(g, seed=6)
    x, y = np.random.default_rng(2).normal(size=(16, 3, 9, 10)).astype(np.float32), np.arange(16) % 5
    out = {}
    for name, b in backends.items():
        runs = {}
        for label, spec in (("plain", OptimSpec(0.9, False)),
                            ("scaled", OptimSpec(0.9, False, {"out.weight": 1.0, "c1.weight": 0.5}, 0.0))):
            m = b.build(g, params)
            t = b.trainer(m, LossSpec(weight_decay=1e-4), spec)
            t.step(x, y, 0.1)
            runs[label] = b.get_weights(m, ["out.weight", "c1.weight", "c2.weight"])
        out[name] = runs
        p, s = runs["plain"], runs["scaled"]
        # first SGD step: w - scale * lr * g
        assert np.allclose(s["out.weight"], p["out.weight"], atol=1e-6)
        assert np.allclose(s["c1.weight"] - params["c1.weight"], 0.5 * (p["c1.weight"] - params["c1.weight"]),
                           atol=1e-6)
        assert not np.allclose(p["c2.weight"], params["c2.weight"])
        assert np.array_equal(s["c2.weight"], params["c2.weight"])  # scale 0: frozen
    for k in out["torch"]["scaled"]:
        assert close(out["torch"]["scaled"][k], out["tf"]["scaled"][k]) < 1e-5
    with pytest.raises(UserError, match="does not train"):
        backends["torch"].trainer(backends["torch"].build(g, params), LossSpec(), OptimSpec(lr_scale={"nope": 1.0}))


def test_lr_factors_change_a_groups_rate_and_gradients_are_the_steps_own(backends):
    """Hinge's gradient-ratio adjustment needs both: the factor scales only its group's step, and
    ``gradients()`` returns the gradient the step used (first SGD step: ``w1 = w0 - lr g``)."""
    g = tiny_graph()
    params = trained_like(g, seed=7)
    x, y = np.random.default_rng(3).normal(size=(16, 3, 9, 10)).astype(np.float32), np.arange(16) % 5
    names = ["c1.weight", "out.weight"]
    spec = OptimSpec(0.9, False, lr_group={"c1.weight": "a"}, gradients_of=tuple(names))
    grads = {}
    for name, b in backends.items():
        m = b.build(g, params)
        t = b.trainer(m, LossSpec(weight_decay=1e-4), spec)
        t.step(x, y, 0.1)
        moved = b.get_weights(m, names)
        grads[name] = t.gradients()
        for k in names:
            assert np.allclose(grads[name][k], (params[k] - moved[k]) / 0.1, atol=1e-4)
        m2 = b.build(g, params)
        t2 = b.trainer(m2, LossSpec(weight_decay=1e-4), spec)
        t2.set_lr_factors({"a": 0.5})
        t2.step(x, y, 0.1)
        half = b.get_weights(m2, names)
        assert np.allclose(half["c1.weight"] - params["c1.weight"], 0.5 * (moved["c1.weight"] - params["c1.weight"]),
                           atol=1e-6)
        assert np.allclose(half["out.weight"], moved["out.weight"], atol=1e-6)  # group "rest": unchanged
        with pytest.raises(UserError, match="no lr group"):
            t2.set_lr_factors({"nope": 2.0})
    for k in names:
        assert close(grads["torch"][k], grads["tf"][k]) < 1e-5
