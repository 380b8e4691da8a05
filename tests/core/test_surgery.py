"""The channel-group layer: groups found from structure, one-pass pruning, the shared planner.

The property test cuts random units of random groups of every zoo model (and of a
decomposed and a diagonal-head network): the pruned network computes, in both
backends, what the original computes with every reader's columns of the removed
channels zeroed; its MACs are what the planner predicts; a checkpoint keeps it.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import checkpoint, flops, zoo
from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from compress_core.recipes import decompose
from compress_core.surgery import channel_groups, l1_norms, mask, plan, prune
from compress_core.surgery.plan import macs_with_counts, round_width
from compress_core.surgery.structure import block_index, residual_blocks
from tests import oracle
from tests.conftest import close, trained_like


def _decomposed():
    g = zoo.build("resnet20", 10, (3, 8, 8))
    p = trained_like(g)
    reps = [decompose.tucker2_conv(g, p, "layer2.1.conv1", (8, 8)),
            decompose.cp_conv(g, p, "layer3.0.conv2", rank=12),
            decompose.svd_dense(g, p, "fc", rank=6)]
    return decompose.apply(g, p, reps)


def _diagonal_head():
    g = zoo.build("vgg16", 10, (3, 8, 8))
    p = trained_like(g)
    return decompose.apply(g, p, [decompose.diagonal_dense(g, p, "classifier.0")])


def _zoo(name, shape):
    def make():
        g = zoo.build(name, 10, shape)
        return g, trained_like(g)
    return make


MODELS = {"resnet20": _zoo("resnet20", (1, 8, 8)), "resnet164": _zoo("resnet164", (3, 8, 8)),
          "vgg16": _zoo("vgg16", (3, 8, 8)), "densenet40": _zoo("densenet40", (3, 8, 8)),
          "resnext20": _zoo("resnext20", (3, 8, 8)), "wrn16_10": _zoo("wrn16_10", (3, 8, 8)),
          "resnet50": _zoo("resnet50", (3, 32, 32)), "decomposed": _decomposed, "diagonal-head": _diagonal_head}


def _random_keep(groups, seed):
    rng = np.random.default_rng(seed)
    cut = [g for g in groups if g.cuttable]
    chosen = rng.choice(len(cut), size=min(8, len(cut)), replace=False)
    return {cut[i].id: rng.choice(cut[i].width, size=rng.integers(1, cut[i].width + 1), replace=False)
            for i in chosen}


@pytest.mark.parametrize("model", list(MODELS))
def test_pruned_network_is_the_masked_original_in_every_backend(model, backends, tmp_path):
    g, p = MODELS[model]()
    groups = channel_groups(g)
    x = np.random.default_rng(1).normal(size=(3, *g.input_shape)).astype(np.float32)
    for seed in range(2):
        keep = _random_keep(groups, seed)
        small, sp = prune(g, p, keep, groups)
        masked, mp = mask(g, p, keep, groups)
        assert flops.count_macs(small) == macs_with_counts(g, {k: len(v) for k, v in keep.items()}, groups)
        assert flops.count_macs(small) < flops.count_macs(g)
        path = str(tmp_path / f"{model}-{seed}.safetensors")
        checkpoint.save_checkpoint(path, small, sp)
        small2, sp2, _ = checkpoint.load_checkpoint(path)
        for name, be in backends.items():
            want = be.forward(be.build(masked, mp), x)[0]
            assert close(want, be.forward(be.build(small, sp), x)[0]) < 1e-5, (name, seed)
            if seed == 0:
                assert close(want, be.forward(be.build(small2, sp2), x)[0]) < 1e-5, name


def _chain():
    """Every tie and member kind on one small graph: a depthwise conv with a multiplier, a grouped
    conv, a concatenation, a select reading and a flatten before a dense layer."""
    nodes = [Node("input", "input"),
             conv_node("a", "input", 6), bn_node("a.bn", "a"), Node("a.r", "relu", ("a.bn",)),
             conv_node("dw", "a.r", 12, groups=6), bn_node("dw.bn", "dw"),
             conv_node("b", "dw.bn", 4, k=1, pad=0),
             Node("cat", "concat", ("a.r", "b")),
             conv_node("g2", "cat", 10, k=1, pad=0, groups=1),
             conv_node("gr", "g2", 10, groups=5), Node("gr.r", "relu", ("gr",)),
             Node("sel", "select", ("gr.r",), {"stride": 2, "src": (9, 0, -1, 3)}),
             Node("fl", "flatten", ("sel",)),
             Node("fc", "dense", ("fl",), {"out": 3, "bias": True})]
    return Graph("chain", (2, 6, 6), nodes, "fc")


def test_groups_of_every_tie_kind():
    g = _chain()
    by = {x.id: x for x in channel_groups(g)}
    assert set(by) == {"input", "a", "b", "g2", "sel", "fc"}
    a = by["a"]  # the depthwise conv belongs to its input's group: 6 units, 2 outputs each
    assert a.width == 6 and a.cuttable
    kinds = {(m.node, m.kind): m for m in a.members}
    assert kinds[("dw", "grouped")].size == 2 and kinds[("dw.bn", "bn")].size == 2
    assert kinds[("g2", "in")].offset == 0 and kinds[("b", "in")].size == 2
    assert {(m.node, m.offset) for m in by["b"].members if m.kind == "in"} == {("g2", 6)}  # after a's 6 in the concat
    assert by["g2"].width == 5 and {m.size for m in by["g2"].members} == {2}  # whole conv groups of 'gr'
    sel = by["sel"]  # the select's 4 channels, each 9 columns of the flattened 3x3 map
    assert [(m.node, m.kind, m.expand) for m in sel.members] == [("sel", "select_out", 1), ("fc", "in", 9)]
    assert not by["input"].cuttable and not by["fc"].cuttable


def test_hand_checked_cut_of_the_chain():
    g = _chain()
    p = trained_like(g)
    small, sp = prune(g, p, {"a": [1, 4], "g2": [0, 3], "sel": [0, 2, 3]})
    assert small["dw"].attrs["out"] == 4 and small["dw"].attrs["groups"] == 2
    assert np.array_equal(sp["dw.weight"], p["dw.weight"][[2, 3, 8, 9]])
    assert np.array_equal(sp["g2.weight"], p["g2.weight"][[0, 1, 6, 7]][:, [1, 4, 6, 7, 8, 9]])
    assert small["gr"].attrs["groups"] == 2 and np.array_equal(sp["gr.weight"], p["gr.weight"][[0, 1, 6, 7]])
    # 'gr' kept its channels 0, 1, 6, 7: the select's sources 9 -> removed (zeros), 0 -> 0, 3 -> removed
    assert small["sel"].attrs["src"] == (-1, -1, -1)
    cols = np.concatenate([np.arange(9 * j, 9 * j + 9) for j in (0, 2, 3)])
    assert np.array_equal(sp["fc.weight"], p["fc.weight"][:, cols])
    x = np.random.default_rng(0).normal(size=(2, 2, 6, 6))
    masked, mp = mask(g, p, {"a": [1, 4], "g2": [0, 3], "sel": [0, 2, 3]})
    assert close(oracle.forward(masked, mp, x)["fc"], oracle.forward(small, sp, x)["fc"]) < 1e-6


@pytest.mark.parametrize(("keep", "needle"), [
    ({"fc": [0]}, "network output"), ({"input": [0]}, "network input"), ({"nope": [0]}, "no channel group"),
    ({"layer1.0.conv1": [16]}, "outside [0, 16)"), ({"layer1.0.conv1": []}, "at least one"),
    ({"layer1.0.conv1": [1, 1]}, "repeats"), ({"layer1.0.conv1": [0.5]}, "integer")])
def test_bad_keep_sets_are_one_line_errors(keep, needle):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace(")", r"\)")) as e:
        prune(g, trained_like(g), keep)
    assert "\n" not in str(e.value)


def test_planner_ratios_counts_targets_and_rounding():
    g = zoo.build("resnet56", 10, (3, 32, 32))
    p = trained_like(g)
    groups = channel_groups(g)
    scores = {k: v for k, v in l1_norms(g, p, groups).items() if k.endswith("conv1") and k != "conv1"}
    keep = plan(g, scores, ratio=0.45, groups=groups)
    # 16 - floor(7.2) = 9, 32 - floor(14.4) = 18, 64 - floor(28.8) = 36; the highest L1 norms
    assert {len(v) for k, v in keep.items() if k.startswith("layer1")} == {9}
    assert {len(v) for k, v in keep.items() if k.startswith("layer3")} == {36}
    k = "layer2.3.conv1"
    assert set(keep[k]) == set(np.argsort(-scores[k], kind="stable")[:18])
    assert {len(v) for v in plan(g, scores, ratio=0.9, min_width=4, multiple=8, groups=groups).values()} == {8}
    # nearest multiple, halves up, at least one multiple; min_width raised to a multiple; at most the width
    assert [round_width(k, 64, 1, 8) for k in (1, 11, 12, 43, 44, 61)] == [8, 8, 16, 40, 48, 64]
    assert round_width(5, 64, 12, 8) == 16 and round_width(20, 20, 1, 8) == 20 and round_width(7, 64) == 7
    counts = {gid: 5 for gid in scores}
    assert {len(v) for v in plan(g, scores, counts=counts, groups=groups).values()} == {5}
    base = flops.count_macs(g)
    for ranking in ("local", "global"):
        keep = plan(g, scores, mac_target=0.7, ranking=ranking, groups=groups)
        macs = flops.count_macs(prune(g, p, keep, groups)[0])
        assert 0.6 * base < macs <= 0.7 * base
    with pytest.raises(UserError, match="cannot be reached"):
        plan(g, scores, mac_target=0.3, min_width=16, groups=groups)  # stage 1 (a third of the MACs) stays


def test_blocks_come_from_the_structure_not_the_names():
    g = zoo.build("resnet20", 10, (3, 32, 32))
    renamed = {n.name: f"n{i}" for i, n in enumerate(g.nodes)}
    renamed["input"] = "input"
    other = Graph("other", g.input_shape, [Node(renamed[n.name], n.op, tuple(renamed[i] for i in n.inputs), n.attrs)
                                           for n in g.nodes], renamed[g.output])
    assert [len(b.branch) for b in residual_blocks(other)] == [2] * 9
    idx = block_index(other)
    assert [idx[renamed[f"layer{s}.{i}.conv1"]] for s in (1, 2, 3) for i in range(3)] == list(range(9))
    assert [b.add for b in residual_blocks(g)] == [f"layer{s}.{i}.add" for s in (1, 2, 3) for i in range(3)]
    assert {len(c.id) > 0 for c in channel_groups(other)} == {True}
