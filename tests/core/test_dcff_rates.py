"""DCFF rates (every accepted format), the fused training graph, tied selection, export (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.criteria import dcff as crit
from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.ir.init import init_params
from compress_core.recipes import dcff

MMRAZOR_453 = "[0.0]+[0.35,0.4,0.1]*10+[0.3,0.3,0.1]*6"
LMBXMU_453 = "[0.0]+[0.35]*10+[0.3]*6+[0.4]*10+[0.3]*6+[0.1]*4"
# lmbxmu README, ResNet-56 row (55.9% FLOPs): 27 block conv1 rates + 3 stage rates
LMBXMU_R56 = ("[0.7]*2+[0.5]*3+[0.3]*2+[0.4]+[0.8]+ [0.7]*2+[0.8]*4+[0.4]+[0.2]*2+[0.7]+[0.3]+[0.8]+"
              "[0.4]*2+[0.7]+[0.3]+[0.4]+[0.8]+ [0.0]*3")


def _imagenet(rates):
    return dcff.training_graph(zoo.build("resnet50", 1000, (3, 224, 224)), dcff.parse_rates(rates))[0]


def test_parse_rates_expressions():
    assert len(dcff.parse_rates(MMRAZOR_453)) == 49 and len(dcff.parse_rates(LMBXMU_453)) == 37
    assert dcff.parse_rates("([0.1]*2+[0.2])*2 + 3*[0]") == [0.1, 0.1, 0.2, 0.1, 0.1, 0.2, 0.0, 0.0, 0.0]
    for bad, msg in [("[0.1]*", "cannot parse"), ("__import__('os')", "unsupported"),
                     ("[0.1]*1.5", "whole number"), ("['a']", "not a number")]:
        with pytest.raises(UserError, match=msg):
            dcff.parse_rates(bad)


def test_resnet50_both_formats_give_the_15_16m_network():
    a, b = _imagenet(MMRAZOR_453), _imagenet(LMBXMU_453)
    assert a.param_shapes() == b.param_shapes()
    assert flops.count_params(a) == flops.count_params(b) == 15_163_623  # README: 15.16 M
    assert round(flops.count_macs(a) / 1e9, 2) == 2.23  # MMRazor README: 2.26 G, lmbxmu 2.25 G (their counters)
    # layer1: conv1 64 -> floor(64 * 0.65) = 41, conv2 floor(64 * 0.6) = 38, stream floor(256 * 0.9) = 230
    shapes = a.param_shapes()
    assert shapes["layer1.0.conv1.fusion"] == (41, 64) and shapes["layer1.0.conv2.fusion"] == (38, 64)
    assert shapes["layer1.2.conv3.weight"] == (256, 38, 1, 1) and shapes["layer1.0.downsample.0.weight"] == (230, 64, 1, 1)
    assert "conv1.fusion" in shapes and "layer1.0.downsample.0.fusion" not in shapes  # stem fused, shortcut plain
    # the lmbxmu README's other step rows
    assert round(flops.count_params(_imagenet("[0.0]+[0.8]*10+[0.7]*6+[0.6]*10+[0.4]*6+[0.3]*4")) / 1e6, 2) == 7.40
    assert round(flops.count_params(_imagenet("[0.0]+[0.6]*10+[0.5]*6+[0.5]*10+[0.4]*6+[0.2]*4")) / 1e6, 2) == 10.58


def test_resnet56_lmbxmu_layout_and_its_per_conv_equivalent():
    rates = dcff.parse_rates(LMBXMU_R56)
    g, groups = dcff.training_graph(zoo.build("resnet56"), rates)
    per = dcff.conv_rates(zoo.build("resnet56"), rates)
    assert per["layer1.0.conv1"] == 0.7 and per["layer3.8.conv1"] == 0.8 and per["conv1"] == 0.0
    assert g.shapes()["layer1.0.conv1"] == (4, 32, 32)   # floor(16 * 0.3)
    assert g.shapes()["layer3.8.conv1"] == (12, 8, 8)    # floor(64 * 0.2)
    assert round(flops.count_params(g) / 1e6, 2) == 0.38  # README: 0.38 M (55.0% fewer)
    # one group per stage stream (stem with stage 1) + one per block conv1
    tied = [grp for grp in groups if len(grp.members) > 1]
    assert [len(grp.members) for grp in tied] == [10, 9, 9] and tied[0].members[0] == "conv1"
    assert len(groups) == 27 + 3
    # the same network from one rate per conv (55 = stem + 2 per block)
    full = [per[c] for c in dcff.fused_convs(zoo.build("resnet56"))]
    assert len(full) == 55
    assert dcff.training_graph(zoo.build("resnet56"), full)[0].param_shapes() == g.param_shapes()


def test_vgg16_thirteen_rates():
    g, groups = dcff.training_graph(zoo.build("vgg16"), dcff.parse_rates("[0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6"))
    assert [grp.m for grp in groups] == [32, 32, 76, 76, 166, 166, 166, 76, 76, 76, 76, 76, 76]
    assert round(flops.count_macs(g) / 1e6, 2) == 72.39  # lmbxmu: 72.77 M (their counter adds BN/ReLU)


@pytest.mark.parametrize("model, rates, msg", [
    ("resnet50", "[0.1]*36", r"has 36 numbers; resnet50 expects 1 .* or 49 \(one per conv\) or 37 \(lmbxmu"),
    ("resnet56", "[0.1]*31", r"or 55 \(one per conv\) or 30 \(lmbxmu: 27 block conv1 \+ 3 stage\)"),
    ("vgg16", "[0.1]*12", r"expects 1 \(one for every conv\) or 13 \(one per conv\)$"),
    ("vgg16", "[0.1]*12+[1.0]", r"dcff.rates\[12\] is 1.0, outside \[0, 1\)"),
    ("vgg16", "[0.1]*12+[-0.1]", r"dcff.rates\[12\] is -0.1"),
    ("resnet50", "[0.0]+[0.35,0.4,0.1]*9+[0.3,0.3,0.2]*7", "residual-tied convs .* layer3.1.conv3=0.1, layer3.2.conv3=0.2"),
    ("densenet40", "[0.1]*2", r"densenet40 expects 1 \(one for every conv\) or 39 \(one per conv\)$"),
])
def test_bad_rates_are_one_line_errors(model, rates, msg):
    with pytest.raises(UserError, match=msg) as e:
        dcff.conv_rates(zoo.build(model), dcff.parse_rates(rates))
    assert "\n" not in str(e.value)


def test_tied_group_shares_one_keep_set_scored_by_the_sum():
    g, groups = dcff.training_graph(zoo.build("resnet20", 10, (1, 8, 8)), [0.5] * 9 + [0.25] * 3)
    params = init_params(g, seed=3)
    t = 2.0
    fusion, keeps = dcff.select_and_fuse(params, groups, t)
    stage1 = next(grp for grp in groups if grp.name == "conv1")
    assert stage1.members == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert (stage1.n, stage1.m) == (16, 12)
    scores = sum(crit.dcff_importance(params[f"{c}.weight"], t) for c in stage1.members)
    assert np.array_equal(keeps["conv1"], crit.select(scores, 12))
    for c in stage1.members:
        want = crit.fusion_matrix(params[f"{c}.weight"], keeps["conv1"], t)
        np.testing.assert_allclose(fusion[f"{c}.fusion"], want, rtol=1e-6)
    assert 0.0 < dcff.softness(fusion) < 1.0
    assert dcff.softness({"a.fusion": np.eye(3)[[0, 2]]}) == 1.0


def test_export_is_fusion_times_weight_and_keeps_everything_else():
    g, groups = dcff.training_graph(zoo.build("resnet20", 10, (1, 8, 8)), [0.5] * 9 + [0.25] * 3)
    params = dcff.init_params(g, groups, seed=1, t=1.0)
    small, sp = dcff.export(g, params)
    assert small.param_shapes()["layer2.0.conv1.weight"] == (16, 12, 3, 3)
    assert "dcff_rates" in g.meta and "dcff_rates" not in small.meta
    P, W = params["layer2.0.conv1.fusion"], params["layer2.0.conv1.weight"]
    np.testing.assert_allclose(sp["layer2.0.conv1.weight"], np.einsum("mn,nihw->mihw", P, W), rtol=1e-5, atol=1e-7)
    assert np.array_equal(sp["layer2.0.bn1.running_var"], params["layer2.0.bn1.running_var"])
    assert set(sp) == set(small.param_shapes())
    assert flops.summary(small) == flops.summary(g)


def test_l1_baseline_keeps_the_highest_summed_norms_at_dcffs_widths():
    """The L1 baseline at DCFF's widths: every tied group keeps its filters of highest summed L1 norm."""
    from compress_core.surgery import l1_prune
    from tests.conftest import trained_like

    full = zoo.build("resnet20", 10, (1, 8, 8))
    fused, groups = dcff.training_graph(zoo.build("resnet20", 10, (1, 8, 8)), [0.5] * 9 + [0.25] * 3)
    params = trained_like(full, seed=4)
    small, sp = l1_prune(full, params, counts={g.name: g.m for g in groups})
    assert small.param_shapes() == dcff.export(fused, {k: np.zeros(s, np.float32)
                                                       for k, s in fused.param_shapes().items()})[0].param_shapes()
    stage1 = next(g for g in groups if g.name == "conv1")
    norms = sum(np.abs(params[f"{c}.weight"]).reshape(16, -1).sum(1) for c in stage1.members)
    keep = np.sort(np.argsort(-norms, kind="stable")[:stage1.m])
    assert np.array_equal(sp["layer1.1.bn2.weight"], params["layer1.1.bn2.weight"][keep])
    w = params["layer1.1.conv1.weight"]
    rows = np.sort(np.argsort(-np.abs(w).reshape(16, -1).sum(1), kind="stable")[:8])  # its own group: 16 -> 8
    assert np.array_equal(sp["layer1.1.conv1.weight"], w[rows][:, keep])


def test_warm_start_from_a_trained_model_keeps_its_function_when_fusion_is_hard():
    """At a temperature where fusion is a selection, a warm start whose dropped channels are silent
    (zero BN gamma and beta) computes what the unpruned model computes."""
    from tests import oracle
    from tests.conftest import trained_like

    full = zoo.build("resnet20", 10, (1, 8, 8))
    fused, groups = dcff.training_graph(zoo.build("resnet20", 10, (1, 8, 8)), [0.5] * 9 + [0.25] * 3)
    params = trained_like(full, seed=6)
    t = 1e4
    _, keeps = dcff.warm_start(full, params, fused, groups, t)
    for g in groups:
        for c in g.members:
            bn = c.rsplit("conv", 1)[0] + "bn" + c.rsplit("conv", 1)[1]
            dropped = np.setdiff1d(np.arange(g.n), keeps[g.name])
            params[f"{bn}.weight"][dropped] = params[f"{bn}.bias"][dropped] = 0.0
    warm, keeps2 = dcff.warm_start(full, params, fused, groups, t)
    assert all(np.array_equal(keeps[k], keeps2[k]) for k in keeps)  # BN does not enter the scores
    assert set(warm) == set(fused.param_shapes())
    assert warm["layer2.0.conv1.weight"].shape == (32, 12, 3, 3)  # all raw filters, kept inputs
    assert np.array_equal(warm["layer2.0.bn1.running_mean"], params["layer2.0.bn1.running_mean"][keeps["layer2.0.conv1"]])
    # up to the end of stage 1 the two compute the same function; from stage 2 on, the full network's
    # shortcut still copies stage 1 into the stream channels the cut drops, which later layers read
    small, sp = dcff.export(fused, warm)
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8))
    got = oracle.forward(small, sp, x)
    want = oracle.forward(full, params, x)
    np.testing.assert_allclose(got["layer1.2.relu2"], want["layer1.2.relu2"][:, keeps["conv1"]], atol=1e-4)
