"""Bad input is refused before any work: one line on stderr, exit 2, nothing written or overwritten.

Every case runs the command as a user would, without a teacher checkpoint, so a check that
only happened after training the baseline would be caught writing files.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from compress_core import fileio
from compress_core.ir import checkpoint, zoo
from compress_core.ir.init import init_params
from methods import cdc_prune, decompose, evaluate, kse, train
from tests.conftest import tensorboard_scalars, trained_like

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(tmp_path, body):
    p = tmp_path / "hp.py"
    p.write_text(body)
    return str(p)


def _file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _npy(tmp_path, values):
    p = tmp_path / "coarse.npy"
    np.save(p, np.asarray(values))
    return str(p)


def _checkpoint_with_graph(tmp_path, graph_text):
    p = tmp_path / "bad-graph.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(p),
              metadata={"format": checkpoint.FORMAT, "graph": graph_text, "meta": "{}"})
    return str(p)


def _nan_checkpoint(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    params = init_params(g)
    params["layer1.0.conv1.weight"][0, 0, 0, 0] = np.nan
    p = str(tmp_path / "nan.safetensors")
    checkpoint.save_checkpoint(p, g, params)
    return p


def _a_file(tmp_path):
    p = tmp_path / "a-file"
    p.write_text("x")
    return str(p)


def _corrupt(tmp_path):
    p = tmp_path / "corrupt.safetensors"
    p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return str(p)


def _other_arch(tmp_path):
    g = zoo.build("resnet32", 10, (1, 8, 8))
    p = str(tmp_path / "resnet32.safetensors")
    checkpoint.save_checkpoint(p, g, init_params(g))
    return p


CASES = {
    "unknown field": (train.cli, ["--config.train.epochz=3"], "train.epochz"),
    "wrong type": (train.cli, ["--config.train.epochs=0.5"], "0.5"),
    "unknown backend": (train.cli, ["--backend", "jax"], "jax"),
    "missing checkpoint": (evaluate.cli, ["--checkpoint", "/nonexistent/x.safetensors"], "/nonexistent"),
    "corrupt checkpoint": (evaluate.cli, ["--checkpoint", _corrupt], "corrupt"),
    "other architecture": (train.cli, [lambda t: f"--config.model.weights={_other_arch(t)}"], "resnet32"),
    "data path without files": (train.cli, ["--config.data.name=cifar10", lambda t: f"--config.data.path={t}"],
                                "missing file"),
    "bad value": (train.cli, ["--config.train.momentum=1.5"], "train.momentum"),
    "get_config raises": (train.cli, [lambda t: "--config=" + _config(t, "def get_config():\n    return 1 / 0\n")],
                          "ZeroDivisionError"),
    "config import fails": (train.cli, [lambda t: "--config=" + _config(t, "import no_such_module_here\n")],
                            "no_such_module_here"),
    "validate raises": (train.cli, [lambda t: "--config=" + _config(
        t, "from hyperparams.resnet20_digits import get_config\n\ndef validate(cfg):\n    raise KeyError('oops')\n")],
        "KeyError"),
    "graph metadata not JSON": (evaluate.cli, [lambda t: "--checkpoint=" + _checkpoint_with_graph(t, "{not json")],
                                "corrupt graph"),
    "graph metadata not a graph": (evaluate.cli, [lambda t: "--checkpoint=" + _checkpoint_with_graph(
        t, json.dumps({"arch": "x", "input_shape": [1, 8, 8], "output": "c", "nodes": [
            {"name": "input", "op": "input", "inputs": [], "attrs": {}},
            {"name": "c", "op": "conv", "inputs": ["input"], "attrs": {"out": 4}}]}))], "corrupt graph"),
    "NaN weights": (evaluate.cli, [lambda t: "--checkpoint=" + _nan_checkpoint(t)], "NaN"),
    "seed -1": (train.cli, ["--config.seed=-1"], "seed"),
    "num_coarse not below the classes": (cdc_prune.cli, ["--config.cdc.num_coarse=10"], "cdc.num_coarse"),
    "missing coarse-label file": (cdc_prune.cli, ["--config.cdc.coarse_labels=/nonexistent/groups.txt"],
                                  "not found"),
    "coarse-label file too short": (cdc_prune.cli, [lambda t: "--config.cdc.coarse_labels=" + _file(
        t, "c.txt", "0 1 2")], "3 entries"),
    "coarse-label file of floats": (cdc_prune.cli, [lambda t: "--config.cdc.coarse_labels=" + _npy(
        t, np.linspace(0, 1, 10))], "integer"),
    "unknown dca_tap": (cdc_prune.cli, ["--config.distill.dca_tap=layer9.relu"], "layer9.relu"),
    "finetune.batch_size 0": (cdc_prune.cli, ["--config.finetune.batch_size=0"], "finetune.batch_size"),
    "predefined plan without widths": (cdc_prune.cli, ["--config.cdc.plan=predefined"], "cdc.widths"),
    "cdc.multiple -1": (cdc_prune.cli, ["--config.cdc.multiple=-1"], "cdc.multiple"),
    "cdc.min_width 0": (cdc_prune.cli, ["--config.cdc.min_width=0"], "cdc.min_width"),
    "kse finetune.epochs -1": (kse.cli, ["--config.finetune.epochs=-1"], "finetune.epochs"),
    "decompose finetune.lr -1": (decompose.cli, ["--config.finetune.lr=-1"], "finetune.lr"),
    "unknown precision": (train.cli, ["--config.train.precision=float8"], "train.precision"),
    "distill precision": (cdc_prune.cli, ["--config.distill.precision=half"], "distill.precision"),
    "data.workers -2": (train.cli, ["--config.data.workers=-2"], "data.workers"),
    "log.tensorboard not a switch": (train.cli, ["--config.log.tensorboard=maybe"], "log.tensorboard"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_any_work(case, tmp_path, capsys):
    cli, args, needle = CASES[case]
    args = [a(tmp_path) if callable(a) else a for a in args]
    workdir = tmp_path / "untouched"
    argv = ([] if "--backend" in args else ["--backend", "torch"]) + ["--workdir", str(workdir), *args]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not workdir.exists()


def _unwritable_places(tmp_path):
    places = {"a file": (_a_file(tmp_path), "is a file"),
              "under a file": (os.path.join(_a_file(tmp_path), "run"), "is a file"),
              "empty": ("", "empty"),
              "in /proc": ("/proc/1/compress-run", "not writable")}
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        places["read-only folder"] = (str(ro / "run"), "not writable")
    return places


def test_unusable_work_directories_are_refused(tmp_path, capsys):
    for what, (workdir, needle) in _unwritable_places(tmp_path).items():
        assert train.cli(["--backend", "torch", "--workdir", workdir]) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, (what, err)


def test_a_nan_loss_stops_with_the_stage_and_epoch_and_keeps_the_last_good_epoch(tmp_path, capsys):
    # the second epoch's learning rate (0.1 * 1e12) makes the loss overflow
    argv = ["--backend", "torch", "--workdir", str(tmp_path / "w"), "--config.train.epochs=3",
            "--config.train.batch_size=256", "--config.train.schedule=step", "--config.train.milestones=(1,)",
            "--config.train.gamma=1e12"]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the log lines of epoch 1
    assert err.startswith("error: [train]") and "epoch 2" in err and "last.safetensors (epoch 1)" in err, err
    stage = tmp_path / "w" / "train"
    assert json.loads((stage / "state.json").read_text())["epoch"] == 1
    weights = checkpoint.load_checkpoint(str(stage / "last.safetensors"))[1]
    assert all(np.all(np.isfinite(v)) for v in weights.values())
    assert not (tmp_path / "w" / "metrics.json").exists()
    # the dashboard was flushed and closed on the error: epoch 1 is there
    assert [s for s, _ in tensorboard_scalars(tmp_path / "w" / "tb" / "train")["val/accuracy"]] == [1]


def test_evaluate_never_overwrites_another_commands_results(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.cli(["--backend", "torch", "--workdir", str(run), "--config.train.epochs=1",
                      "--config.train.batch_size=512"]) == 0
    before = {f: (run / f).read_bytes() for f in ("metrics.json", "config.json")}
    ckpt = str(run / "train" / "best.safetensors")
    assert evaluate.cli(["--backend", "torch", "--checkpoint", ckpt, "--workdir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "methods.train run" in err
    assert {f: (run / f).read_bytes() for f in before} == before


def test_default_work_directory_is_per_backend_and_files_share_one_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        for backend in ("tf", "torch"):
            assert train.cli(["--backend", backend, "--config.train.epochs=1", "--config.train.batch_size=512"]) == 0
    finally:
        os.umask(old)
    for backend in ("tf", "torch"):
        run = tmp_path / "runs" / "resnet20_digits" / backend
        modes = {f: stat.S_IMODE(os.stat(run / f).st_mode) for f in
                 ("config.json", "log.txt", "metrics.json", "train/best.safetensors", "train/state.json",
                  "train/optimizer.safetensors")}
        assert set(modes.values()) == {0o644}, modes
        json.loads((run / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))


def test_json_files_are_strict(tmp_path):
    p = str(tmp_path / "m.json")
    fileio.atomic_write_json(p, {"loss": float("nan"), "rows": [float("inf"), np.float32(1.5)]})
    with open(p) as f:
        text = f.read()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "loss": None, "rows": [None, 1.5]}


def test_cli_hides_tensorflow_start_up_noise(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    ckpt = str(tmp_path / "m.safetensors")
    checkpoint.save_checkpoint(ckpt, g, trained_like(g))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "methods.evaluate", "--backend", "tf", "--checkpoint", ckpt,
                        "--workdir", str(tmp_path / "ev")], cwd=ROOT, env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    for noise in ("oneDNN", "cuInit", "absl", "cuda", "I0000", "E0000"):
        assert noise not in r.stderr, r.stderr


def test_gitignore_covers_the_virtual_environment_and_runs():
    with open(os.path.join(ROOT, ".gitignore")) as f:
        lines = f.read().split()
    assert ".venv/" in lines and "runs/" in lines

