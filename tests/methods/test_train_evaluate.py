"""methods.train and methods.evaluate end to end, as a user runs them, on shrunken configs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from compress_core.ir import checkpoint
from methods import common, evaluate, train

# ResNet-20 on digits, shrunk: 2 epochs of large batches
TINY = ["--config.train.epochs=2", "--config.train.batch_size=256"]


def _run(cli, tmp_path, *args, workdir="run", backend="torch"):
    return cli(["--backend", backend, "--workdir", str(tmp_path / workdir), *TINY, *args])


def _metrics(tmp_path, workdir="run"):
    with open(tmp_path / workdir / "metrics.json") as f:
        return json.load(f)


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_train_writes_run_and_evaluate_agrees_across_backends(tmp_path, backend):
    assert _run(train.cli, tmp_path, backend=backend) == 0
    m = _metrics(tmp_path)
    assert m["macs"] == 2_516_608 and len(m["history"]) == 2  # resnet20 at 8x8: 40.55 M / 16 + head
    assert m["val_accuracy"] > 30  # 2 epochs: clearly learning (10 classes: chance is 10%)
    for f in ("config.json", "log.txt", "train/best.safetensors", "train/last.safetensors"):
        assert os.path.exists(tmp_path / "run" / f), f
    other = "tf" if backend == "torch" else "torch"
    ckpt = str(tmp_path / "run" / "train" / "best.safetensors")
    assert evaluate.cli(["--backend", other, "--checkpoint", ckpt, "--workdir", str(tmp_path / "ev")]) == 0
    e = _metrics(tmp_path, "ev")
    assert e["val_accuracy"] == pytest.approx(m["val_accuracy"], abs=1e-9)
    assert e["test_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-9)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    assert _run(train.cli, tmp_path, workdir="full") == 0
    real = common.learning_rate

    def interrupt_at_second_epoch(epoch, *a, **k):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(epoch, *a, **k)

    monkeypatch.setattr(common, "learning_rate", interrupt_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(train.cli, tmp_path, workdir="cut")
    monkeypatch.setattr(common, "learning_rate", real)
    assert json.loads((tmp_path / "cut" / "train" / "state.json").read_text())["epoch"] == 1
    assert _run(train.cli, tmp_path, workdir="cut") == 0
    a = checkpoint.load_checkpoint(str(tmp_path / "full" / "train" / "last.safetensors"))[1]
    b = checkpoint.load_checkpoint(str(tmp_path / "cut" / "train" / "last.safetensors"))[1]
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) < 1e-6
    assert _metrics(tmp_path, "cut")["history"][1]["epoch"] == 2


def test_existing_run_with_other_config_is_not_overwritten(tmp_path, capsys):
    assert _run(train.cli, tmp_path) == 0
    before = (tmp_path / "run" / "config.json").read_bytes()
    assert _run(train.cli, tmp_path, "--config.train.lr=0.5") == 2
    assert "train.lr" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_bytes() == before
