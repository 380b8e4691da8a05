"""cdc_distill on a student straight from cdc_prune, before any fine-tuning (and on a dead tap)."""

from __future__ import annotations

import json

import pytest

from backends.base import get_backend
from compress_core.data import config
from compress_core.ir import checkpoint
from methods import cdc_distill, cdc_prune, common
from tests.conftest import digits_teacher

TAP = "layer2.2.relu1"  # the DCA tap of cdc_resnet20_digits.py
TINY = ["--config.distill.epochs=1", "--config.distill.batch_size=256", "--config.distill.dca_refit_every=1"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``(teacher, student)`` checkpoints: cdc_prune's ``pruned.safetensors``, which precedes fine-tuning."""
    d = tmp_path_factory.mktemp("prune")
    teacher = digits_teacher(d, seed=11)
    cfg = config.load_config(f"{common.HYPERPARAMS}/cdc_resnet20_digits.py", [f"model.weights={teacher}"])
    splits, backend = common.load_data(cfg), get_backend("torch")
    ctx = common.Context(cfg, backend, str(d), splits)
    cdc_prune.prune(ctx, common.load_model(backend, teacher, splits))  # the scoring and cut alone
    return teacher, ctx.path("pruned.safetensors")


@pytest.fixture(autouse=True)
def few_align_images(monkeypatch):
    monkeypatch.setattr(cdc_distill, "ALIGN_IMAGES", 256)  # one batch per model for the Procrustes fit


def _distill(backend, teacher, student, workdir):
    argv = ["--backend", backend, "--teacher", teacher, "--student", student, "--workdir", str(workdir), *TINY]
    assert cdc_distill.cli(argv) == 0
    m = json.loads((workdir / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= m[f"student_{split}_accuracy"] <= 100
    return m, (workdir / "log.txt").read_text()


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_distilling_the_pruned_network_before_fine_tuning(pruned, backend, tmp_path):
    teacher, student = pruned
    m, log = _distill(backend, teacher, student, tmp_path / "d")
    assert m["student"] == student and m["backend"] == backend
    assert "student DCA subspace refitted at epoch 0 (4 components)" in log  # the 4 coarse groups
    hist = json.loads((tmp_path / "d" / "distill" / "state.json").read_text())["history"]
    assert "train_feature" in hist[0]


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_a_dead_student_tap_turns_the_dca_term_off(pruned, backend, tmp_path):
    # BN scale and shift 0 before the tap's ReLU: the tap is all zeros, so no DCA component exists
    teacher, student = pruned
    g, params, _ = checkpoint.load_checkpoint(student)
    for kind in ("weight", "bias"):
        params[f"layer2.2.bn1.{kind}"] = 0 * params[f"layer2.2.bn1.{kind}"]
    dead = str(tmp_path / "dead.safetensors")
    checkpoint.save_checkpoint(dead, g, params)
    _, log = _distill(backend, teacher, dead, tmp_path / "d")
    assert "span 0 dimension(s): fitting the 0 DCA component(s) that exist, not 4" in log
    assert "the student has 0 DCA component(s), the teacher 4: matching 0" in log
    assert "DCA term off until the next refit" in log
    hist = json.loads((tmp_path / "d" / "distill" / "state.json").read_text())["history"]
    assert hist[0]["train_feature"] == 0
