"""Graphs, the zoo, MAC/parameter counting, channel groups and checkpoints (numpy only)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import checkpoint, flops, zoo
from compress_core.ir.graph import Graph
from compress_core.ir.init import init_params
from compress_core.surgery import channel_groups


def test_resnet56_macs_and_params_by_hand():
    # 3x3 convs at 32x32: stem 3*16*9*1024 = 442,368; stage 1: 18 convs of 16*16*9*1024 = 2,359,296.
    # Stages 2 and 3: the first conv reads half the channels (1,179,648), the 17 others 2,359,296 each
    # (channels double, area quarters). FC 64*10. Total 125,485,696 MACs.
    stem, full, half = 442_368, 2_359_296, 1_179_648
    assert flops.count_macs(zoo.build("resnet56")) == stem + 18 * full + 2 * (half + 17 * full) + 640
    assert flops.count_macs(zoo.build("resnet56")) == 125_485_696
    # params: conv weights + BN (gamma, beta) + FC weight and bias
    convs = 16 * 27 + 18 * 2304 + (16 * 32 * 9 + 17 * 9216) + (32 * 64 * 9 + 17 * 36864)
    bns = 2 * (16 + 18 * 16 + 18 * 32 + 18 * 64)
    assert flops.count_params(zoo.build("resnet56")) == convs + bns + 650


def test_zoo_sizes_match_the_literature():
    # param counts of the CIFAR literature (10 classes): ResNet-20 0.27 M, ResNet-110 1.73 M,
    # ResNet-164 1.70 M, VGG-16 (DCFF/HRank variant) 14.98 M, DenseNet-40 1.06 M
    expect = {"resnet20": 0.27, "resnet110": 1.73, "resnet164": 1.70, "vgg16": 14.99, "densenet40": 1.06}
    for name, m in expect.items():
        assert flops.count_params(zoo.build(name)) / 1e6 == pytest.approx(m, abs=0.01), name
    assert flops.count_macs(zoo.build("resnet20")) == 40_551_040


def test_any_width_plan_builds_and_is_checked():
    g = zoo.build("resnet20", 10, (3, 8, 8), widths={"layer1.0.conv1": 5, "conv1": 7, "layer2.0.conv2": 20})
    shapes = g.shapes()
    assert shapes["layer1.0.conv1"][0] == 5 and shapes["conv1"][0] == 7
    assert g["layer1.0.shortcut"].attrs["src"].count(-1) == 9  # 7 -> 16 stream: option-A zero channels
    assert shapes["layer2.2.relu2"][0] == 20
    with pytest.raises(UserError, match="layer9"):
        zoo.build("resnet20", widths={"layer9.0.conv1": 3})
    with pytest.raises(UserError, match="layer1.1.conv2"):
        zoo.build("resnet20", widths={"layer1.1.conv2": 3})
    with pytest.raises(UserError, match="positive"):
        zoo.build("vgg16", widths={"features.0": 0})
    # bottleneck and wide blocks: every layer adding into a stream must have its width
    for name, layer, want in (("resnet50", "layer2.1.conv3", 512), ("resnext20", "layer2.0.shortcut.0", 128),
                              ("wrn16_10", "layer2.0.shortcut.0", 320)):
        with pytest.raises(UserError, match=f"'{layer}' is 7 but the residual stream is {want}"):
            zoo.build(name, widths={layer: 7})
    assert zoo.build("densenet40", widths={"dense1.0.conv": 6}).shapes()["trans1.conv"][0] == 24 + 11 * 12 + 6


def test_graph_json_round_trip_and_bad_graphs():
    g = zoo.build("densenet40", 100, (3, 16, 16))
    h = Graph.from_json(g.to_json())
    assert h.to_json() == g.to_json() and h.param_shapes() == g.param_shapes()
    with pytest.raises(UserError, match="unknown model"):
        zoo.build("alexnet")
    with pytest.raises(UserError, match="6n\\+2"):
        zoo.resnet_cifar(depth=21)


def test_channel_groups_of_densenet_offsets_and_vgg_chain():
    groups = {g.id: g for g in channel_groups(zoo.build("densenet40"))}
    readers = {(m.node, m.offset) for m in groups["dense1.1.conv"].members if m.kind == "in"}
    assert ("dense1.2.conv", 24 + 12) in readers  # read after the stem's 24 and dense1.0's 12
    vgg = {g.id: g for g in channel_groups(zoo.build("vgg16"))}
    assert [(m.node, m.kind) for m in vgg["features.0"].members] == [
        ("features.0", "out"), ("features.0.bn", "bn"), ("features.1", "in")]
    assert [m.node for m in vgg["features.12"].readers] == ["classifier.0"]


def test_checkpoint_round_trip_and_errors(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    p = init_params(g, seed=1)
    path = str(tmp_path / "a.safetensors")
    checkpoint.save_checkpoint(path, g, p, {"note": "x"})
    g2, p2, meta = checkpoint.load_checkpoint(path)
    assert g2.to_json() == g.to_json() and meta == {"note": "x"}
    assert all(np.array_equal(p[k], p2[k]) for k in p)
    with pytest.raises(UserError, match="not found"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load_checkpoint(str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="do not match model 'resnet32'"):
        checkpoint.save_checkpoint(path, zoo.build("resnet32", 10, (1, 8, 8)), {**p})
    assert checkpoint.load_checkpoint(path)[0].arch == "resnet20"  # the failed save left the file alone


def test_core_and_methods_import_no_framework():
    """Every module of compress_core and methods (found on disk, so a new one is covered), and backends.base."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    modules = ["backends.base"]
    for package in ("compress_core", "methods"):
        for folder, _, files in os.walk(os.path.join(root, package)):
            rel = os.path.relpath(folder, root).replace(os.sep, ".")
            modules += [f"{rel}.{f[:-3]}" if f != "__init__.py" else rel for f in sorted(files) if f.endswith(".py")]
    assert len(modules) > 30 and "methods.cdc_prune" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "    bad = [f for f in ('torch', 'tensorflow', 'keras') if f in sys.modules]\n"
            "    if bad:\n"
            "        print(m, 'imports', bad); sys.exit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_core_api_paths_stay_importable():
    """The numpy entry points users call, at the paths the public API names (modules may move behind them)."""
    import importlib

    api = {"compress_core.criteria.discriminant": ["gsd_scores", "abs_snr_scores", "fdr_scores", "t_test_scores",
                                                   "di_scores", "ClassStats"],
           "compress_core.criteria.dca": ["dca_subspace"],
           "compress_core.criteria.kse": ["kse_indicator"],
           "compress_core.criteria.dcff": ["temperature", "dcff_importance", "dcff_fuse"],
           "compress_core.lowrank": ["evbmf_rank", "evbmf", "tucker2_ranks", "tucker2", "cp"],
           "compress_core.group_sparsity": ["group_prox"],
           "compress_core.flops": ["count_macs", "count_params", "summary"],
           "compress_core.surgery": ["channel_groups", "plan", "prune", "l1_prune"]}
    for module, names in api.items():
        m = importlib.import_module(module)
        assert all(callable(getattr(m, n)) for n in names), module


def test_googlenet_and_mobilenetv2_sizes():
    """The CIFAR GoogLeNet of KSE/HRank (6.15 M params, 1.52 G FLOPs in HRank's table) and MobileNetV2
    (torchvision's 3,504,872 parameters and 300 M MACs at 224x224; CIFAR strides on small inputs)."""
    g = zoo.build("googlenet", 10, (3, 32, 32))
    assert flops.count_params(g) == 6_166_250 and round(flops.count_macs(g) / 1e9, 2) == 1.52
    assert g.shapes()["b5.cat"] == (1024, 8, 8)
    m = zoo.build("mobilenetv2", 1000, (3, 224, 224))
    assert flops.count_params(m) == 3_504_872 and round(flops.count_macs(m) / 1e6) == 301
    assert m.shapes()["features.18.2"] == (1280, 7, 7)
    assert zoo.build("mobilenetv2", 10, (3, 32, 32)).shapes()["features.18.2"] == (1280, 4, 4)  # CIFAR strides
