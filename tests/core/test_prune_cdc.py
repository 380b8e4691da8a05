"""The CDC plan logic and its cut (through the channel-group layer), checked with the numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.recipes import cdc
from compress_core.surgery import mask
from tests import oracle
from tests.conftest import trained_like


def _zero_dropped_inputs(graph, params, points, keeps, stream):
    """The original network with the pruned channels' contributions removed: every reader of a cut
    group (surgery.mask), and by hand the columns a ``select`` mask drops."""
    cut, selects = cdc.cuts(points, keeps, stream)
    graph, p = mask(graph, params, cut)
    for conv, keep in selects:
        w = p[f"{conv}.weight"].copy()
        w[:, np.setdiff1d(np.arange(w.shape[1]), keep)] = 0.0
        p[f"{conv}.weight"] = w
    return graph, p


@pytest.mark.parametrize("stream", ["select", "group"])
@pytest.mark.parametrize("name", ["resnet20", "resnet164", "vgg16", "densenet40"])
def test_pruned_network_equals_original_with_dropped_channels_silenced(name, stream):
    g = zoo.build(name, 10, (3, 8, 8)) if name != "resnet164" else zoo.resnet164(10, (3, 8, 8), depth=20)
    params = trained_like(g)
    points = cdc.mask_points(g)
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=p.width) for p in points]
    keeps = cdc.select_top(points, scores, [max(1, p.width // 3) for p in points], stream)
    if stream == "group":  # masks reading one stream keep one set, and the stream itself loses the rest
        shared = cdc.shared_groups(points, stream)
        assert shared or name in ("vgg16", "densenet40")
        for idx in shared.values():
            assert all(np.array_equal(keeps[i], keeps[idx[0]]) for i in idx)
    small, sp = cdc.apply(g, params, points, keeps, stream)
    x = rng.normal(size=(2, 3, 8, 8))
    want = oracle.forward(*_zero_dropped_inputs(g, params, points, keeps, stream), x)[g.output]
    got = oracle.forward(small, sp, x)[small.output]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert flops.count_macs(small) < flops.count_macs(g)
    assert sp.keys() == small.param_shapes().keys()


@pytest.mark.parametrize("stream", ["select", "group"])
@pytest.mark.parametrize("name", ["resnet20", "resnet164"])
def test_blocks_removed_beside_channels_cut_equal_the_original_with_both_silenced(name, stream):
    g = zoo.build(name, 10, (3, 8, 8)) if name != "resnet164" else zoo.resnet164(10, (3, 8, 8), depth=20)
    points = cdc.mask_points(g)
    gone = list(cdc.block_masks(g, points))[::2]
    assert len(gone) >= 2
    params = trained_like(g)
    for a in gone:  # the removed branches' last layer (a BatchNorm, a pre-activation block's conv) set to zero
        last = next(i for i in g[a].inputs if g[i].op in ("bn", "conv"))
        for k in (f"{last}.weight", f"{last}.bias"):
            if k in params:
                params[k] = np.zeros_like(params[k])
    masks = cdc.block_masks(g, points)
    zero = {i for a in gone for i in masks[a]}
    counts = [0 if i in zero else max(1, p.width // 3) for i, p in enumerate(points)]
    rng = np.random.default_rng(1)
    keeps = cdc.select_top(points, [rng.normal(size=p.width) for p in points], counts, stream)
    small, sp = cdc.apply(g, params, points, keeps, stream)
    assert not [a for a in gone if a in small]
    x = rng.normal(size=(2, 3, 8, 8))
    want = oracle.forward(*_zero_dropped_inputs(g, params, points, keeps, stream), x)[g.output]
    np.testing.assert_allclose(oracle.forward(small, sp, x)[small.output], want, rtol=1e-9, atol=1e-9)
    assert sp.keys() == small.param_shapes().keys()


def test_mask_points_follow_the_reference_placement():
    points = {p.conv: p for p in cdc.mask_points(zoo.build("resnet56"))}
    assert len(points) == 54 and "conv1" not in points  # two per block, never the stem
    assert points["layer1.0.conv1"].mode == "inputs" and points["layer1.0.conv1"].tap == "relu"
    assert points["layer1.0.conv1"].group == "conv1" and points["layer1.0.conv1"].cuttable  # the stage-1 stream
    assert points["layer2.3.conv1"].tap == "layer2.2.relu2"  # reads the residual stream
    assert points["layer2.3.conv2"].mode == "outputs" and points["layer2.3.conv2"].group == "layer2.3.conv1"
    assert points["layer3.8.conv2"].block == 26
    bottleneck = [p.conv for p in cdc.mask_points(zoo.resnet164(depth=20))]
    assert "layer2.0.shortcut" not in bottleneck and "layer2.0.conv3" in bottleneck
    dense = {p.conv: p for p in cdc.mask_points(zoo.build("densenet40"))}
    assert dense["dense1.3.conv"].group is None and dense["dense1.3.conv"].mode == "inputs"  # a concatenation


def test_shared_streams_cut_as_one_group_leave_no_select():
    g = zoo.build("resnet20", 10, (3, 8, 8))
    p = trained_like(g)
    points = cdc.mask_points(g)
    counts = cdc.uniform_counts(points, 0.5)
    keeps = cdc.select_top(points, [np.arange(pt.width, dtype=float) for pt in points], counts, "group")
    small, _ = cdc.apply(g, p, points, keeps, "group")
    assert not [n for n in small.of_op("select") if n.name.endswith("in_select")]
    assert small.shapes()["layer1.0.relu2"][0] == 8 and small.shapes()["layer3.2.relu2"][0] == 32
    selected, _ = cdc.apply(g, p, points, keeps, "select")
    assert len([n for n in selected.of_op("select") if n.name.endswith("in_select")]) == 9
    assert selected.shapes()["layer1.0.relu2"][0] == 16  # the reference keeps the stream whole
    assert cdc.macs_after(g, points, counts, "group") < cdc.macs_after(g, points, counts, "select")


def test_uniform_counts_rounding_min_width_and_predefined_checks():
    points = cdc.mask_points(zoo.build("resnet56"))
    counts = cdc.uniform_counts(points, 0.45)
    assert counts[:2] == [16 - 7, 16 - 7] and counts[-1] == 64 - 28  # floor(C * r) removed, as the reference
    # ratio 0.45 keeps 9, 18, 36 of 16, 32, 64: the nearest multiples of 8 are 8, 16, 40 (36 = 4.5 x 8 rounds up)
    assert sorted(set(cdc.uniform_counts(points, 0.45, multiple=8))) == [8, 16, 40]
    assert min(cdc.uniform_counts(points, 0.95, min_width=4)) == 4
    with pytest.raises(UserError, match="1.0"):
        cdc.uniform_counts(points, 1.0)
    with pytest.raises(UserError, match="54 masks"):
        cdc.check_counts(points, [8] * 3)
    with pytest.raises(UserError, match="layer1.0.conv1"):
        cdc.check_counts(points, [17] + [8] * 53)


def test_mac_target_is_met_from_below():
    g = zoo.build("resnet20", 10, (3, 8, 8))
    points = cdc.mask_points(g)
    r = cdc.ratio_for_macs(g, points, 0.5)
    macs = cdc.macs_after(g, points, cdc.uniform_counts(points, r))
    assert macs <= 0.5 * flops.count_macs(g)
    assert cdc.macs_after(g, points, cdc.uniform_counts(points, r - 0.01)) > 0.5 * flops.count_macs(g) * 0.97


def test_select_top_keeps_highest_scores():
    points = cdc.mask_points(zoo.build("resnet20", 10, (3, 8, 8)))[1:2]  # an inner mask: 16 channels
    scores = [np.r_[0.1, 0.9, 0.5, 0.7, np.zeros(12)]]
    assert cdc.select_top(points, scores, [2])[0].tolist() == [1, 3]


def test_coarse_groups_merge_the_classes_a_model_confuses():
    # classes 0/1 and 2/3 are confused with each other, 4/5 are perfectly separated from all
    f = np.diag([60, 60, 60, 60, 90, 90])
    f[0, 1] = f[1, 0] = f[2, 3] = f[3, 2] = 30
    f[4, 5] = f[5, 4] = 10
    groups = cdc.coarse_groups(f, 3, seed=0)
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[4] == groups[5]
    assert len(set(groups.tolist())) == 3 and groups[0] == 0  # renumbered by first appearance
    with pytest.raises(UserError, match="groups"):
        cdc.coarse_groups(f, 6)


def test_coarse_label_file_checks(tmp_path):
    good = tmp_path / "groups.txt"
    good.write_text("0 0 1 1 2 2\n")
    assert cdc.load_coarse_groups(str(good), 6).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UserError, match="6 entries, expected one per class \\(10\\)"):
        cdc.load_coarse_groups(str(good), 10)
    np.save(tmp_path / "g.npy", np.array([0, 1, -1]))
    with pytest.raises(UserError, match="non-negative"):
        cdc.load_coarse_groups(str(tmp_path / "g.npy"), 3)


def test_a_mac_target_with_rounded_widths_lands_near_the_target():
    # rounded up, every width of 16/32/64 dropped by 8 at the same ratio (0.5) and the search for 50%
    # fell to 25%; rounded to the nearest, ratio 0.32 keeps 11, 22, 44 -> 8, 24, 48: about 45%
    g = zoo.build("resnet56")
    points = cdc.mask_points(g)
    ratio = cdc.ratio_for_macs(g, points, 0.5, 1, 8, "group")
    counts = cdc.uniform_counts(points, ratio, 1, 8)
    assert sorted(set(counts)) == [8, 24, 48]
    assert 0.4 < cdc.macs_after(g, points, counts, "group") / flops.count_macs(g) <= 0.5


def test_an_unreachable_target_with_rounded_widths_names_the_way_out():
    g = zoo.build("resnet20", 10, (1, 8, 8))
    points = cdc.mask_points(g)
    with pytest.raises(UserError, match=r"multiple 8\).*cdc.multiple=1"):
        cdc.ratio_for_macs(g, points, 0.1, 1, 8, "group")  # every mask keeps >= 8 channels: about 25% at least
    assert cdc.ratio_for_macs(g, points, 0.1, 1, 1, "group") > 0.6


# -- the depth plan ----------------------------------------------------------------------------
# ResNet-20's removable blocks per stage, and a score per block given to its inner tap's mask (conv2);
# conv1's mask scores the stream outside the block and gets a score that would win if it counted
BLOCK_SCORE = {"layer1.0": 3, "layer1.1": 1, "layer1.2": 2, "layer2.1": 5, "layer2.2": 4, "layer3.1": 6, "layer3.2": 7}


def _depth_case():
    g = zoo.build("resnet20", 10, (3, 8, 8))
    points = cdc.mask_points(g)
    scores = [np.full(p.width, float(BLOCK_SCORE.get(p.conv.rsplit(".", 1)[0], 0) if p.conv.endswith("conv2")
                                     else -100)) for p in points]
    return g, points, scores


def _expected_prefix(g, order, target):
    """The shortest prefix of the removal ``order`` whose network has at most ``target`` of the MACs,
    costed through the surgery directly."""
    from compress_core.surgery import remove_blocks
    base = flops.count_macs(g)
    for k in range(len(order) + 1):
        if flops.count_macs(remove_blocks(g, None, [f"{b}.add" for b in order[:k]])[0]) <= target * base:
            return [f"{b}.add" for b in order[:k]]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("target", [0.8, 0.5, 0.3])
def test_depth_plan_removes_the_lowest_scored_blocks_evenly_over_the_stages(target):
    g, points, scores = _depth_case()
    counts, removed = cdc.depth_counts(g, points, scores, target)
    # by hand: stage shares left (3/3, 2/2, 2/2), ties to the earlier stage; lowest score first in each
    order = ["layer1.1", "layer2.2", "layer3.1", "layer1.2", "layer2.1", "layer3.2", "layer1.0"]
    assert removed == _expected_prefix(g, order, target)
    gone = {r.removesuffix(".add") for r in removed}
    assert counts == [0 if p.conv.rsplit(".", 1)[0] in gone else p.width for p in points]


def test_depth_plan_keeps_pinned_blocks_and_refuses_what_it_cannot_reach():
    g, points, scores = _depth_case()
    _, removed = cdc.depth_counts(g, points, scores, 0.35, pinned=["layer2.2.add"])
    order = ["layer1.1", "layer2.1", "layer3.1", "layer1.2", "layer3.2", "layer1.0"]
    assert removed == _expected_prefix(g, order, 0.35) and len(removed) == 6
    with pytest.raises(UserError, match="removing every removable block"):
        cdc.depth_counts(g, points, scores, 0.1)
    vgg = zoo.build("vgg16", 10, (3, 32, 32))
    vp = cdc.mask_points(vgg)
    with pytest.raises(UserError, match="no residual block"):
        cdc.depth_counts(vgg, vp, [np.zeros(p.width) for p in vp], 0.5)


def test_a_plan_keeping_no_channels_removes_whole_blocks_only():
    g, points, _ = _depth_case()
    names = [p.conv for p in points]
    counts = [p.width for p in points]
    for c in ("layer1.1.conv1", "layer1.1.conv2"):
        counts[names.index(c)] = 0
    assert cdc.check_counts(points, counts) == counts
    assert cdc.removed_blocks(g, points, counts) == ["layer1.1.add"]
    for stream in cdc.STREAMS:
        small, _ = cdc.network(g, trained_like(g), points, counts, stream)
        assert not [n for n in small.nodes if n.name.startswith("layer1.1.")]
        assert flops.count_macs(small) == cdc.macs_after(g, points, counts, stream) < flops.count_macs(g)
    part = list(counts)
    part[names.index("layer1.1.conv1")] = 16
    with pytest.raises(UserError, match="removed in part"):
        cdc.removed_blocks(g, points, part)
    stray = [p.width for p in points]
    stray[names.index("layer2.0.conv2")] = 0  # the strided block cannot go
    with pytest.raises(UserError, match="layer2.0.conv2"):
        cdc.removed_blocks(g, points, stray)


def test_a_stream_cut_with_blocks_removed_takes_its_width_from_the_masks_left():
    g, points, scores = _depth_case()
    names = [p.conv for p in points]
    counts = [p.width // 2 for p in points]  # the first reader of stage 1's stream is in a removed block
    for c in ("layer1.0.conv1", "layer1.0.conv2"):
        counts[names.index(c)] = 0
    keeps = cdc.select_top(points, scores, counts, "group")
    assert [len(k) for k in keeps][:4] == [0, 0, 8, 8]
    small, _ = cdc.apply(g, trained_like(g), points, keeps, "group")
    assert small.in_channels("layer1.1.conv1") == 8 and "layer1.0.add" not in small
