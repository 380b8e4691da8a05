"""The dashboard's event files: what a resumed stage writes, read back by TensorBoard's own loader."""

from __future__ import annotations

import numpy as np

from methods.dashboard import Dashboard, read_scalars
from tests.conftest import tensorboard_scalars


def _row(epoch, acc):
    return {"epoch": epoch, "lr": 0.1 / epoch, "time_s": 1.0, "train_loss": 2.0 / epoch, "train_ce": 1.5 / epoch,
            "val_accuracy": acc, "val_loss": 0.5}


def test_a_resumed_stage_hides_unfinished_epochs_and_writes_nothing_twice(tmp_path):
    killed = Dashboard(str(tmp_path))
    killed.begin("train", 1)
    killed.epoch("train", _row(1, 50.0))
    killed.epoch("train", _row(2, 60.0))
    killed.scalars("train", 2, {"hinge/mac_ratio_at_tau0": 0.9})  # a method's value after epoch 2
    killed.epoch("train", _row(3, 61.0))  # written, then killed before epoch 3 was committed
    killed.scalars("train", 4, {"dcff/temperature": 9.0})
    killed.close()
    resumed = Dashboard(str(tmp_path))
    resumed.begin("train", 3)  # two epochs committed
    resumed.scalars("train", 2, {"hinge/mac_ratio_at_tau0": 0.9})  # recomputed on resume: not written again
    resumed.epoch("train", _row(3, 70.0))
    resumed.scalars("train", 4, {"dcff/temperature": 8.0})
    resumed.close()
    board = tensorboard_scalars(tmp_path / "train")
    assert board["val/accuracy"] == [(1, 50.0), (2, 60.0), (3, 70.0)]
    assert board["hinge/mac_ratio_at_tau0"] == [(2, np.float32(0.9))]
    assert board["dcff/temperature"] == [(4, 8.0)]
    assert set(board) == {"lr", "train/loss", "train/ce", "val/accuracy", "hinge/mac_ratio_at_tau0",
                          "dcff/temperature"}  # time and validation loss are not on the dashboard
    assert read_scalars(str(tmp_path / "train")) == board  # the reader the resume uses agrees with TensorBoard's
    # a rerun's table replaces the previous one
    for macs in (100, 50):
        d = Dashboard(str(tmp_path))
        d.table([{"macs": 200, "params": 20}, {"macs": macs, "params": 10}])
        d.close()
    assert tensorboard_scalars(tmp_path / "report")["compression/macs"] == [(0, 200.0), (1, 50.0)]


def test_switched_off_writes_nothing(tmp_path):
    d = Dashboard.open(str(tmp_path / "tb"), enabled=False)
    d.begin("train", 1)
    d.epoch("train", _row(1, 50.0))
    d.table([{"macs": 1, "params": 1}])
    d.close()
    assert not d.on and not (tmp_path / "tb").exists()
