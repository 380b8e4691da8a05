"""methods.decompose end to end on digits, TF/torch parity of ranks and logits, the latency guard, bad input."""

from __future__ import annotations

import glob
import json

import numpy as np
import pytest

from compress_core.data import config
from compress_core.ir import checkpoint, flops
from methods import common
from methods import decompose as method
from tests.conftest import close, digits_teacher

CONFIG = f"{common.HYPERPARAMS}/decompose_resnet20_digits.py"
LAYERS = "--config.decompose.layers=('layer1.0.conv1','layer3.2.conv2','fc')"
TINY = ["--config.finetune.epochs=1", "--config.finetune.batch_size=256", "--config.decompose.latency_guard=false",
        "--config.decompose.report_repeats=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return digits_teacher(tmp_path_factory.mktemp("t"), seed=5)


@pytest.mark.parity
def test_tf_and_torch_give_the_same_ranks_and_decomposed_logits(backends, teacher, tmp_path):
    cfg = config.load_config(CONFIG, [LAYERS, "decompose.latency_guard=false"])
    splits = common.load_data(cfg)
    out = {}
    for name, b in backends.items():
        ctx = common.Context(cfg, b, str(tmp_path / name), splits)
        model = common.load_model(b, teacher, splits)
        reps, records = method.plan(ctx, model.graph, b.get_weights(model), method.candidates(model.graph, cfg.decompose))
        graph, params = method.decompose.apply(model.graph, b.get_weights(model), reps)
        out[name] = (records, graph, params)
    ranks = {n: [(r["layer"], r.get("ranks", r.get("rank"))) for r in rec] for n, (rec, _, _) in out.items()}
    assert ranks["torch"] == ranks["tf"] and all(r is not None for _, r in ranks["torch"])
    # a checkpoint decomposed by torch gives the same logits in TF (and TF's own decomposition agrees)
    x = splits.test.x[:32]
    _, g, p = out["torch"]
    logits = {n: b.forward(b.build(g, p), x)[0] for n, b in backends.items()}
    assert close(logits["torch"], logits["tf"]) < 1e-4
    _, g_tf, p_tf = out["tf"]
    assert close(logits["torch"], backends["tf"].forward(backends["tf"].build(g_tf, p_tf), x)[0]) < 1e-4


@pytest.mark.parametrize("backend,extra", [("torch", []),
                                           ("tf", ["--config.decompose.method=cp", "--config.decompose.fc=diagonal",
                                                   "--config.decompose.layers=('layer1.0.conv1','fc')"])])
def test_decompose_end_to_end_and_resume(backend, extra, teacher, tmp_path, capsys):
    argv = ["--backend", backend, "--workdir", str(tmp_path / "w"), f"--config.model.weights={teacher}",
            LAYERS, *TINY, *extra]
    assert method.cli(argv) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    names = [r["model"] for r in m["rows"]]
    assert names[0] == "baseline" and names[1] == "decomposed" and "speedup" in out
    kept = {r["layer"]: r for r in m["layers"] if r["kept"]}
    assert "layer1.0.conv1" in kept and "fc" in kept
    diagonal = "--config.decompose.fc=diagonal" in extra
    assert names[-1] == ("diagonal FC" if diagonal else "fine-tuned")
    assert kept["fc"]["kind"] == ("diagonal" if diagonal else "svd")
    g, params, _ = checkpoint.load_checkpoint(m["checkpoint"])
    assert flops.count_macs(g) == m["rows"][-1]["macs"] < m["rows"][0]["macs"]
    assert ("layer1.0.conv1.vertical" if diagonal else "layer1.0.conv1.core") in g
    if diagonal:  # 64 -> 10: ten weights, read straight off the pooled vector
        assert g["fc"].op == "diagonal" and params["fc.weight"].shape == (10,)
        assert names[2:] == ["diagonal FC, no reg.", "fine-tuned (diag. reg.)", "diagonal FC"]
    else:  # resuming is backend-independent: checked once, on the cheaper backend
        assert method.cli(argv) == 0
        assert "decomposition skipped" in (tmp_path / "w" / "log.txt").read_text()


def test_diagonal_regulariser_is_a_proximal_step_scaled_by_the_lr(teacher, tmp_path):
    """After a step at lr 0.1 with lam 10: off-diagonal weights / (1 + 0.1 * 10) = / 2, nothing else moves."""
    from backends.base import get_backend

    cfg = config.load_config(CONFIG, ["decompose.diag_lambda=10.0"])
    ctx = common.Context(cfg, get_backend("torch"), str(tmp_path), common.load_data(cfg))
    model = common.load_model(ctx.backend, teacher)
    before = ctx.backend.get_weights(model)
    method.diagonal_prox(ctx, model, ["fc"])(0.1, None)
    after = ctx.backend.get_weights(model)
    w, d = before["fc.weight"], np.eye(10, 64, dtype=bool)
    np.testing.assert_allclose(after["fc.weight"], np.where(d, w, w / 2), rtol=1e-6)
    assert all(np.array_equal(after[k], v) for k, v in before.items() if k != "fc.weight")


def test_latency_guard_times_both_sequences_and_keeps_only_faster_ones(teacher, tmp_path):
    from backends.base import get_backend

    cfg = config.load_config(CONFIG, ["decompose.latency_repeats=3", "decompose.latency_batch=8"])
    ctx = common.Context(cfg, get_backend("torch"), str(tmp_path), common.load_data(cfg))
    model = common.load_model(ctx.backend, teacher)
    params = ctx.backend.get_weights(model)
    _, records = method.plan(ctx, model.graph, params, ["layer3.2.conv2"])
    rec = records[0]
    assert rec["ms_dense"] > 0 and rec["ms_factorised"] > 0
    assert rec["kept"] == (rec["ms_factorised"] < rec["ms_dense"])
    assert rec["kept"] or "slower on this machine" in rec["reason"]


@pytest.mark.parametrize("path", sorted(glob.glob(f"{common.HYPERPARAMS}/decompose_*.py")))
def test_every_decompose_file_loads_and_validates(path):
    cfg = config.load_config(path, [])
    assert cfg.decompose.method in ("tucker2", "cp") and cfg.decompose.diag_lambda > 0
    assert cfg.finetune.epochs >= 1


BAD = {
    "rank larger than the dimension": ("--config.decompose.ranks=(('layer1.0.conv1',17,4),)", "outside [0, 16]"),
    "negative rank": ("--config.decompose.ranks=(('fc',-2),)", "rank -2"),
    "unknown layer": ("--config.decompose.layers=('layer9.conv',)", "no layer named 'layer9.conv'"),
    "unknown method": ("--config.decompose.method=svd", "decompose.method"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_decompose_bad_input_is_one_line_exit_2(case, teacher, tmp_path, capsys):
    arg, needle = BAD[case]
    argv = ["--backend", "torch", "--workdir", str(tmp_path / "w"), f"--config.model.weights={teacher}", arg]
    assert method.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1], err
    assert not (tmp_path / "w").exists()
