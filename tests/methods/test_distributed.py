"""Data-parallel runs on each framework's own engine give the results of one process (both backends).

The processes are launched here on localhost, as a user would: ``torchrun --nproc_per_node=2``
(gloo; for TensorFlow the same launcher, its collectives over a ``tf.distribute.Server`` cluster),
and two launches acting as two machines (torch: two ``torchrun --nnodes=2`` agents meeting at a
c10d rendezvous; TensorFlow: two processes with their ``TF_CONFIG``). The network has no batch
statistics, so two processes sharing each global batch must end, after 3 epochs, with the weights
of one process within float32 round-off (1e-5); one rank is killed with SIGKILL in the last epoch
and the rerun, on the two "machines", resumes and still ends there. CDC's scoring pass on two
processes gives the one-process scores (class statistics merged exactly) and the same pruning,
and DCFF's per-epoch selection, made by rank 0 and sent to the other, trains as one process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from compress_core.ir import checkpoint
from methods import cdc_prune, dcff, distributed, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NET = "--config.model.source=module:tests.methods.plain_net:make"
TRAIN = [NET, "--config.train.epochs=3", "--config.train.batch_size=100"]  # 13 steps, the last of 57 images
CDC = [NET, "--config.cdc.block_threshold=-1", "--config.distill.enabled=False", "--config.distill.dca_weight=0",
       "--config.finetune.epochs=3", "--config.finetune.batch_size=100", "--config.cdc.score_batch_size=100",
       "--config.cdc.multiple=1"]  # plain_net is too narrow for widths rounded to 8 to reach half the MACs
DCFF = [NET, "--config.dcff.rates=[0.4]", "--config.train.epochs=2", "--config.train.batch_size=100"]
TIMEOUT = 300


def _ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (torchrun's, then TensorFlow's workers)."""
    rng = np.random.default_rng()
    for _ in range(100):
        base = int(rng.integers(20000, 60000))
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TF_CONFIG")}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def _torchrun(*flags) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags]


def _launch(*cmds, envs=None) -> list[subprocess.CompletedProcess]:
    """Start every command at once (they meet each other), wait for all of them; whatever still runs
    after the timeout is killed with its whole process group (a launcher's workers too)."""
    envs = envs or [_env()] * len(cmds)
    procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for c, e in zip(cmds, envs)]
    out = []
    try:
        for cmd, p in zip(cmds, procs):
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


def _two_machines(backend: str, calls: list[str]) -> list[subprocess.CompletedProcess]:
    """``tests.methods.dist_runner <calls>`` on two simulated machines of one process each."""
    port = _ports(2)
    if backend == "torch":
        cmd = _torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-machines",
                        "-m", "tests.methods.dist_runner", *calls)
        return _launch(cmd, cmd)
    workers = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    envs = [_env(TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
            for i in range(2)]
    cmd = [sys.executable, "-m", "tests.methods.dist_runner", *calls]
    return _launch(cmd, cmd, envs=envs)


def _weights(path) -> dict:
    return checkpoint.load_checkpoint(str(path))[1]


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _files(root) -> list[str]:
    """The run's files; TensorBoard event files as their folders (their names hold the time of writing,
    and a resumed stage opens one more)."""
    paths = (os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    return sorted({os.path.dirname(p) + "/<events>" if "tfevents" in p else p for p in paths})


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_two_processes_train_and_prune_as_one_and_a_killed_rank_resumes(backend, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_args = ["--backend", backend, *TRAIN]
    cdc_args = ["--backend", backend, f"--config.model.weights={one / 'train' / 'train' / 'best.safetensors'}", *CDC]
    # the reference: one process (this one)
    assert not distributed.active()
    assert train.cli(["--workdir", str(one / "train"), *train_args]) == 0
    assert cdc_prune.cli(["--workdir", str(one / "cdc"), *cdc_args]) == 0
    assert dcff.cli(["--workdir", str(one / "dcff"), "--backend", backend, *DCFF]) == 0
    # two processes on one machine; rank 1 is killed when it reaches the last epoch
    killed, = _launch(_torchrun("--nproc_per_node=2", f"--master_port={_ports(3)}", "-m", "tests.methods.dist_runner",
                                "--kill", "1:2", "train", "--workdir", str(two / "train"), *train_args))
    assert killed.returncode != 0
    assert "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]  # torchrun's report of the SIGKILL
    done = sorted(os.listdir(two / "train" / "train"))
    assert "epoch-000001" in done or "epoch-000002" in done, done
    assert not (two / "train" / "metrics.json").exists()
    # the rerun on two machines (one process each) resumes from the last complete epoch, then prunes
    runs = _two_machines(backend, ["train", "--workdir", str(two / "train"), *train_args, "::",
                                   "cdc_prune", "--workdir", str(two / "cdc"), *cdc_args, "::",
                                   "dcff", "--workdir", str(two / "dcff"), "--backend", backend, *DCFF])
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    log = (two / "train" / "log.txt").read_text()
    assert "2 processes" in log and "[train] resuming after epoch" in log
    # 3 epochs shared by two processes: the weights and history of one
    last = ("train", "last.safetensors")
    assert _max_diff(_weights(two.joinpath("train", *last)), _weights(one.joinpath("train", *last))) < 1e-5
    a, b = (json.loads((w / "train" / "train" / "state.json").read_text())["history"] for w in (one, two))
    assert [r["val_accuracy"] for r in a] == [r["val_accuracy"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_ce", "train_wd", "val_loss"):
            assert abs(ra[k] - rb[k]) < 1e-5, (k, ra[k], rb[k])
    # CDC: the scores of one pass over all images, the same channels kept, fine-tuning as one process
    s1, s2 = np.load(one / "cdc" / "scores.npz"), np.load(two / "cdc" / "scores.npz")
    assert sorted(s1.files) == sorted(s2.files) and any(k.startswith("score_") for k in s1.files)
    for k in s1.files:
        if k.startswith("score_"):  # the same per-image sums, merged in another order: float64 round-off
            np.testing.assert_allclose(s2[k], s1[k], rtol=1e-10, atol=1e-12 * np.abs(s1[k]).max())
        else:
            np.testing.assert_array_equal(s2[k], s1[k])
    assert _max_diff(_weights(two / "cdc" / "pruned.safetensors"), _weights(one / "cdc" / "pruned.safetensors")) == 0
    last = ("finetune", "last.safetensors")
    assert _max_diff(_weights(two.joinpath("cdc", *last)), _weights(one.joinpath("cdc", *last))) < 1e-5
    # DCFF: rank 0's selection, fused alike by both ranks, trains as one process
    keeps = [json.loads((w / "dcff" / "selection.json").read_text())["keeps"] for w in (one, two)]
    assert keeps[0] == keeps[1] and keeps[0]
    assert _max_diff(_weights(two / "dcff" / "dcff.safetensors"), _weights(one / "dcff" / "dcff.safetensors")) < 1e-5
    # only rank 0 wrote: the files of one process, nothing more
    for stage in ("train", "cdc", "dcff"):
        assert _files(two / stage) == _files(one / stage)


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_sync_bn_where_the_device_has_none_is_refused_before_any_work(backend, tmp_path, capsys):
    assert train.cli(["--backend", backend, "--workdir", str(tmp_path / "w"), "--sync-bn", *TRAIN]) == 2
    assert "--sync-bn" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_malformed_tf_config_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert train.cli(["--backend", "tf", "--workdir", str(tmp_path / "w"), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TF_CONFIG") and err.count("\n") == 1
    assert not (tmp_path / "w").exists()
