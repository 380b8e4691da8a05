"""A kill at any instant loses at most the running epoch and changes nothing (both backends).

Every file operation of an epoch's commit (``tests.methods.kill_runner`` counts them) is
a kill point: a chain of runs, each killed with SIGKILL at the next position of the next
epoch and resumed by the following run, must end with the weights, best checkpoint and
history of one uninterrupted run, and leave no temporary file behind. The file protocol
is the same code for both backends: torch goes through every position, TensorFlow through
three (inside the set, before its commit, while mirroring it), which is what shows that a
resumed TF run retrains bit for bit what the killed one lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from compress_core.ir import checkpoint
from tests.conftest import tensorboard_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.train.batch_size=512"]
EPOCHS = 18  # enough for a kill at every position, each in its own epoch


def _run(tmp_path, backend, workdir, epochs, kill_epoch=0, position=0):
    count = tmp_path / f"count-{workdir}"
    cmd = [sys.executable, "-m", "tests.methods.kill_runner", str(kill_epoch), str(position), str(count), "--",
           "train", "--backend", backend, "--workdir", str(tmp_path / workdir), f"--config.train.epochs={epochs}",
           *TINY]
    run = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    return run, (int(count.read_text()) if count.exists() else None)


def _history(path):
    rows = json.loads(path.read_text())["history"]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_killed_at_every_write_of_an_epoch_resumes_to_the_uninterrupted_result(tmp_path, backend):
    # one uninterrupted run, which also counts the file operations of its epoch 2: the kill positions
    ref, count = _run(tmp_path, backend, "ref", EPOCHS, kill_epoch=2)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert count and 8 <= count < EPOCHS - 1  # last, best, optimizer, state, the rename, the mirrors
    positions = range(1, count + 1) if backend == "torch" else (2, count - 7, count - 2)
    for epoch, p in enumerate(positions, start=2):
        # the run resumes from epoch - 1 or epoch - 2 and dies in epoch `epoch`, at file operation p
        killed, _ = _run(tmp_path, backend, "chain", EPOCHS, kill_epoch=epoch, position=p)
        assert killed.returncode == -9, (p, killed.stderr[-2000:])
    done, _ = _run(tmp_path, backend, "chain", EPOCHS)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = tmp_path / "ref" / "train", tmp_path / "chain" / "train"
    assert _history(a / "state.json") == _history(b / "state.json")
    assert len(_history(b / "state.json")) == EPOCHS
    for name in ("last.safetensors", "best.safetensors"):
        wa, wb = checkpoint.load_checkpoint(str(a / name))[1], checkpoint.load_checkpoint(str(b / name))[1]
        assert all(np.array_equal(wa[k], wb[k]) for k in wa), name
    # the dashboard of the chain, as TensorBoard reads it, is the uninterrupted run's: no epoch missing or twice
    board = tensorboard_scalars(tmp_path / "ref" / "tb" / "train")
    assert board == tensorboard_scalars(tmp_path / "chain" / "tb" / "train")
    assert [s for s, _ in board["val/accuracy"]] == list(range(1, EPOCHS + 1))
    files = sorted(os.listdir(a))
    assert files == sorted(os.listdir(b)) == sorted(["best.safetensors", "last.safetensors", "state.json",
                                                     "optimizer.safetensors", f"epoch-{EPOCHS:06d}"])
