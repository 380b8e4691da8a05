"""DCFF end to end on digits (shrunk), TF/torch parity of selections and fused weights, schedules, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from compress_core.data import config
from compress_core.ir import checkpoint, flops, zoo
from compress_core.recipes import dcff
from methods import common
from methods import dcff as dcff_method
from tests.conftest import close, tensorboard_scalars, trained_like

CONFIG = f"{common.HYPERPARAMS}/dcff_resnet20_digits.py"
TINY = ["--config.train.epochs=2", "--config.train.batch_size=256"]


@pytest.mark.parametrize("backend_name", ["torch", "tf"])
def test_dcff_end_to_end_export_and_resume(backend_name, tmp_path, capsys):
    workdir = tmp_path / "w"
    argv = ["--backend", backend_name, "--workdir", str(workdir), *TINY]
    # 2 epochs: the selection is computed at the start and recomputed once
    assert dcff_method.cli(argv) == 0
    assert "fused vs exported logits differ" in capsys.readouterr().out
    m = json.loads((workdir / "metrics.json").read_text())
    assert m["export_max_diff"] < 1e-5
    base, small = m["rows"]
    assert small["macs"] < base["macs"] and small["params"] < base["params"]
    assert m["widths"]["conv1"] == [16, 12] and m["widths"]["layer3.0.conv1"] == [64, 32]
    # one selection row per epoch, temperature rising from t_start, changes counted from epoch 2
    sel = m["selection"]
    assert [r["epoch"] for r in sel] == [1, 2] and sel[0]["t"] == 1.0 and sel[0]["t"] < sel[1]["t"]
    assert sel[0]["changed"] == {} and set(sel[1]["changed"]) == set(m["widths"])
    assert 0.0 < sel[0]["softness"] < sel[1]["softness"] <= 1.0
    # the export is an ordinary checkpoint: plain convs, no fusion buffers, the costs reported
    g, params, meta = checkpoint.load_checkpoint(m["checkpoint"])
    assert meta["method"] == "dcff" and not any(k.endswith(".fusion") for k in params)
    assert all("fused_from" not in n.attrs for n in g.nodes) and flops.summary(g) == {
        "macs": small["macs"], "params": small["params"]}
    # the dashboard: the history, the selection and the table's costs, as TensorBoard reads them
    board = tensorboard_scalars(workdir / "tb" / "train")
    history = json.loads((workdir / "train" / "state.json").read_text())["history"]
    f32 = np.float32
    assert board["val/accuracy"] == [(r["epoch"], f32(r["val_accuracy"])) for r in history]
    assert board["lr"] == [(r["epoch"], f32(r["lr"])) for r in history]
    assert {t for t in board if t.startswith("train/")} == {"train/loss", "train/ce", "train/wd"}
    assert board["train/loss"] == [(r["epoch"], f32(r["train_loss"])) for r in history]
    assert board["dcff/temperature"] == [(r["epoch"], f32(r["t"])) for r in sel]
    assert board["dcff/changed_filters"] == [(2, sum(sel[1]["changed"].values()))]
    report = tensorboard_scalars(workdir / "tb" / "report")
    assert report["compression/macs"] == [(i, f32(r["macs"])) for i, r in enumerate(m["rows"])]
    assert report["compression/params"] == [(i, f32(r["params"])) for i, r in enumerate(m["rows"])]
    if backend_name == "tf":
        return
    assert dcff_method.cli(argv) == 0  # a rerun resumes after the last epoch: no training
    assert "resuming after epoch 2" in (workdir / "log.txt").read_text()
    assert json.loads((workdir / "metrics.json").read_text())["selection"] == sel
    # nothing twice on the dashboard after the rerun
    assert tensorboard_scalars(workdir / "tb" / "train") == board
    assert tensorboard_scalars(workdir / "tb" / "report") == report


@pytest.mark.parity
def test_tf_and_torch_give_the_same_selections_and_fused_weights(backends, tmp_path):
    cfg = config.load_config(CONFIG)
    splits = common.load_data(cfg)
    graph, groups = dcff.training_graph(zoo.build("resnet20", 10, (1, 8, 8)), dcff.parse_rates(cfg.dcff.rates))
    path = str(tmp_path / "fused.safetensors")
    checkpoint.save_checkpoint(path, graph, dcff.init_params(graph, groups, seed=0) | {
        k: v for k, v in trained_like(graph, seed=2).items() if not k.endswith(".fusion")})
    x = splits.train.x[:64]
    out = {}
    for name, b in backends.items():
        g, params, _ = checkpoint.load_checkpoint(path)
        model = b.build(g, params)
        fusion, keeps = dcff.select_and_fuse(b.get_weights(model), groups, t=2.0)
        b.set_weights(model, fusion, strict=False)
        out[name] = keeps, b.get_weights(model), b.forward(model, x)[0]
    (k_torch, w_torch, l_torch), (k_tf, w_tf, l_tf) = out["torch"], out["tf"]
    assert all(np.array_equal(k_torch[g], k_tf[g]) for g in k_torch)
    for k in w_torch:
        assert close(w_torch[k], w_tf[k]) < 1e-4, k
    assert close(l_torch, l_tf) < 1e-4


def test_schedules_default_soft_and_paper_one_switch_away():
    cfg = config.load_config(CONFIG)
    t = [dcff_method.temperature_at(cfg, e) for e in range(cfg.train.epochs)]
    assert t[0] == 1.0 and bool(np.all(np.diff(t) > 0)) and t[-1] < cfg.dcff.t_end
    paper = config.load_config(CONFIG, ["dcff.schedule=paper", "train.epochs=300"])
    # the released code's per-epoch values: 1, 4622, 7616, 9052, ...
    assert [round(dcff_method.temperature_at(paper, e)) for e in range(4)] == [1, 4622, 7616, 9052]


def test_hyperparameter_files_validate():
    for name in ("dcff_resnet20_digits", "dcff_resnet56_cifar10", "dcff_vgg16_cifar10", "dcff_resnet50_imagenet"):
        cfg = config.load_config(f"{common.HYPERPARAMS}/{name}.py")
        assert cfg.dcff.schedule == "run"


BAD = {
    "rate list of the wrong length": (["--config.dcff.rates=[0.5]*9+[0.25]*2"], "has 11 numbers; resnet20 expects 1 (one for every conv) or 19 (one per conv) or 12 (lmbxmu"),
    "rate outside [0, 1)": (["--config.dcff.rates=[0.5]*9+[0.25]*2+[1.0]"], r"dcff.rates[11] is 1.0, outside [0, 1)"),
    "temperature of 0": (["--config.dcff.t_start=0"], "'dcff.t_start' must be > 0, got 0"),
    "unknown schedule": (["--config.dcff.schedule=fast"], "dcff.schedule"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_one_line_error_and_exit_2(case, tmp_path, capsys):
    overrides, msg = BAD[case]
    workdir = tmp_path / "w"
    assert dcff_method.cli(["--workdir", str(workdir), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err
    assert not os.path.exists(workdir)  # nothing written


def test_warm_start_from_a_trained_checkpoint(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    path = str(tmp_path / "base.safetensors")
    checkpoint.save_checkpoint(path, g, trained_like(g, seed=7))
    workdir = tmp_path / "w"
    argv = ["--workdir", str(workdir), f"--config.model.weights={path}", "--config.train.epochs=1",
            "--config.train.batch_size=256"]
    assert dcff_method.cli(argv) == 0
    assert "starting from" in (workdir / "log.txt").read_text()
    m = json.loads((workdir / "metrics.json").read_text())
    assert m["export_max_diff"] < 1e-5 and len(m["selection"]) == 1
    # a checkpoint of another network is refused before anything is written
    other = str(tmp_path / "other.safetensors")
    small = zoo.build("resnet20", 10, (1, 8, 8), {"layer1.0.conv1": 8})
    checkpoint.save_checkpoint(other, small, trained_like(small))
    assert dcff_method.cli(["--workdir", str(tmp_path / "x"), f"--config.model.weights={other}"]) == 2
    assert not os.path.exists(tmp_path / "x")
    # so is the right network trained on other data (3x32x32 images, not 1x8x8 digits)
    rgb = str(tmp_path / "rgb.safetensors")
    g32 = zoo.build("resnet20", 10, (3, 32, 32))
    checkpoint.save_checkpoint(rgb, g32, trained_like(g32))
    assert dcff_method.cli(["--workdir", str(tmp_path / "y"), f"--config.model.weights={rgb}"]) == 2
    assert not os.path.exists(tmp_path / "y")
