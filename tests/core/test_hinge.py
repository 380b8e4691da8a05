"""Hinge placement, proximal step, surviving groups, threshold search and cost table (numpy, golden values)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compress_core.criteria import group_sparsity
from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.recipes import hinge
from tests.conftest import trained_like


def _attached(name="resnet20", shape=(1, 8, 8), **kw):
    g = zoo.build(name, 10, shape) if isinstance(name, str) else name
    return (g, *hinge.attach(g, trained_like(g, seed=3), **kw))


@pytest.mark.parametrize("name, count, axes, extra", [
    ("resnet20", 18, {("rows",)}, 18),          # 9 blocks x 2 convs, a new 1x1 each
    ("resnet164", 108, {("columns",), ("rows",)}, 0),  # 54 blocks: conv1 and conv3 act as A
    ("vgg16", 12, {("rows", "columns"), ("rows",)}, 12),  # features.1..12; the last keeps its columns
    ("densenet40", 38, {("rows",)}, 38),        # 36 dense layers + 2 transitions
    ("resnext20", 6, {("paths",)}, 0),          # 2 blocks x 3 stages, whole paths
    ("wrn16_10", 12, {("columns",), ("rows",)}, 12),  # 6 wide_basic blocks x 2 convs
])
def test_placement_per_architecture(name, count, axes, extra):
    g = zoo.build(name, 10, (3, 8, 8))
    place = hinge.placement(g)
    assert len(place.sparse) == count
    assert {s.axes for s in place.sparse} == axes
    assert len(place.inserted) == extra
    if name == "vgg16":
        assert place.sparse[-1].axes == ("rows",) and place.sparse[0].node == "features.1.hinge"
    if name == "resnext20":
        assert {s.paths for s in place.sparse} == {32}
    if name == "wrn16_10":
        first, second = place.sparse[:2]
        assert first.merge and first.axes == ("columns",) and second.partner == first.node


def test_svd_attachment_keeps_the_function_and_puts_singular_values_on_the_rows():
    g, ga, p, _ = _attached()
    w = trained_like(g, seed=3)["layer2.1.conv1.weight"].astype(np.float64)
    sv = np.linalg.svd(w.reshape(32, -1), compute_uv=False)
    a = group_sparsity.from_1x1(p["layer2.1.conv1.hinge.weight"])
    assert np.allclose(np.linalg.norm(a, axis=1), sv, rtol=1e-5)
    merged, _ = group_sparsity.merge(p["layer2.1.conv1.weight"], a)
    assert np.allclose(merged, w, atol=1e-5)
    # the 1x1 sits between the conv and its BatchNorm
    assert ga["layer2.1.bn1"].inputs == ("layer2.1.conv1.hinge",)
    assert ga["layer2.1.conv1.hinge"].inputs == ("layer2.1.conv1",)
    assert flops.count_macs(ga) > flops.count_macs(g)


def test_identity_attachment_moves_the_conv_bias_to_the_matrix():
    g = zoo.wide_resnet(depth=10, widen=1, input_shape=(3, 8, 8))
    params = trained_like(g, seed=2)
    params["layer1.0.conv1.bias"] = np.arange(16, dtype=np.float32)
    ga, p, _ = hinge.attach(g, params)
    assert np.array_equal(group_sparsity.from_1x1(p["layer1.0.conv1.hinge.weight"]), np.eye(16))
    assert np.array_equal(p["layer1.0.conv1.hinge.bias"], np.arange(16))
    assert "layer1.0.conv1.bias" not in p and not ga["layer1.0.conv1"].attrs["bias"]


def test_proximal_step_golden_rows_and_paths():
    a = np.array([[3.0, 4.0], [0.0, 0.1]])  # row norms 5 and 0.1
    place = hinge.Placement("t", "svd2", (hinge.Sparse("h", ("rows",), "c"),))
    out = hinge.proximal_step({"h.weight": group_sparsity.to_1x1(a)}, place, 0.5, "l21", {("h", "rows"): 2.0})
    # threshold 0.5 * 2 = 1: row 0 keeps 1 - 1/5 of itself, row 1 (norm 0.1 < 1) vanishes
    assert np.allclose(group_sparsity.from_1x1(out["h.weight"]), [[2.4, 3.2], [0.0, 0.0]])
    # ResNeXt: path 0 = conv1 rows {0, 1} + conv3 columns {0, 1}: (3, 0, 4, 0), norm 5; path 1: norm 0.1
    place = hinge.Placement("t", "pretrained", (hinge.Sparse("b.conv3", ("paths",), "b.conv1", paths=2),))
    params = {"b.conv1.weight": np.array([3.0, 0, 0, 0], np.float32).reshape(4, 1, 1, 1),
              "b.conv3.weight": np.array([4.0, 0, 0, 0.1], np.float32).reshape(1, 4, 1, 1)}
    assert np.allclose(hinge.group_norms(params, place.sparse[0])["paths"], [5.0, 0.1], rtol=1e-6)
    out = hinge.proximal_step(params, place, 1.0)
    assert np.allclose(out["b.conv1.weight"].ravel(), [2.4, 0, 0, 0])
    assert np.allclose(out["b.conv3.weight"].ravel(), [3.2, 0, 0, 0])
    with pytest.raises(UserError, match="penalty 'l3'"):
        hinge.proximal_step(params, place, 1.0, "l3")


def test_second_matrix_keeps_as_many_groups_as_the_first():
    *_, p, place = _attached()
    norms = hinge.group_norms(p, place.sparse[0])["rows"]
    tau = float(np.sort(norms)[5])  # 5 of 16 rows of layer1.0.conv1.hinge fall below
    keep = hinge.keep_sets(p, place, tau)
    assert len(keep[("layer1.0.conv1.hinge", "rows")]) == 11
    assert len(keep[("layer1.0.conv2.hinge", "rows")]) == 11
    free = hinge.keep_sets(p, place, 1e9, same_ratio=False)
    assert len(free[("layer1.0.conv2.hinge", "rows")]) == 3 and len(free[("layer3.0.conv1.hinge", "rows")]) == 12


def test_decomposed_layer_costs_by_hand():
    g, ga, p, place = _attached()
    keep = {(s.node, "rows"): np.arange(8 if s.node == "layer1.0.conv1.hinge" else 16 if "layer1" in s.node
                                        else 32 if "layer2" in s.node else 64) for s in place.sparse}
    small, _ = hinge.apply_keep(ga, p, place, keep)
    row = next(r for r in hinge.layer_table(g, small) if r["layer"] == "layer1.0.conv1")
    # conv 16 -> 8 (3x3 at 8x8) + 1x1 8 -> 16 at 8x8
    assert row["macs_after"] == 8 * 16 * 9 * 64 + 16 * 8 * 64 and row["macs_before"] == 16 * 16 * 9 * 64
    assert row["params_after"] == 8 * 16 * 9 + 16 * 8 and row["width_after"] == 8 and row["decomposed"]


def test_ratio_is_monotone_and_the_threshold_search_meets_the_target():
    g, ga, p, place = _attached()
    base = flops.count_macs(g)
    ratios = [hinge.mac_ratio(ga, p, place, t, base) for t in (0.0, 0.5, 1.0, 1.5, 3.0)]
    assert all(a >= b for a, b in itertools.pairwise(ratios)) and ratios[0] > 1.0
    for target in (0.45, 0.7):
        tau, ratio, _ = hinge.search_threshold(ga, p, place, target, base, 5e-3)
        assert abs(ratio - target) <= 0.01
        assert ratio == hinge.mac_ratio(ga, p, place, tau, base)


def test_any_other_graph_gets_the_generic_placement_and_keeps_its_function():
    """ResNet-50 has no reference placement: a matrix after every conv but the stem, columns only where
    the conv alone writes a cuttable group (not a stream); attached, the network computes the same."""
    from tests import oracle

    g = zoo.build("resnet50", 10, (3, 32, 32))
    place = hinge.placement(g)
    assert place.family == "generic" and len(place.sparse) == 52  # 53 convs, the stem left out
    axes = {s.rows_of: s.axes for s in place.sparse}
    assert axes["layer1.0.conv1"] == ("rows", "columns") and axes["layer1.0.conv3"] == ("rows",)
    assert axes["layer1.0.downsample.0"] == ("rows",)
    p = trained_like(g)
    ga, pa, _ = hinge.attach(g, p)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32))
    want = oracle.forward(g, p, x)["fc"]  # the SVD factors are float32: relative to the logits' scale
    assert np.abs(oracle.forward(ga, pa, x)["fc"] - want).max() < 1e-5 * np.abs(want).max()
    keep = hinge.keep_sets(pa, place, tau=0.0)
    small, _ = hinge.apply_keep(ga, pa, place, {k: v[: max(1, len(v) // 2)] for k, v in keep.items()})
    assert flops.count_macs(small) < flops.count_macs(ga)


def test_bad_init_is_a_user_error():
    g = zoo.build("resnet20", 10, (1, 8, 8))
    with pytest.raises(UserError, match="unknown Hinge init 'qr'"):
        hinge.attach(g, trained_like(g), "qr")
