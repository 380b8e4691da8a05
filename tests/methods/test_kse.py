"""KSE end to end on digits, TF/torch parity of its codes and compressed logits, centroid training, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress_core.data import config
from compress_core.ir import checkpoint, flops, zoo
from compress_core.recipes import kse
from methods import common
from methods import kse as kse_method
from tests.conftest import close, digits_teacher, trained_like

CONFIG = f"{common.HYPERPARAMS}/kse_resnet20_digits.py"
TINY = ["--config.finetune.epochs=1", "--config.finetune.batch_size=256", "--config.kse.latency_batch=8",
        "--config.kse.latency_repeats=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return digits_teacher(tmp_path_factory.mktemp("kse"), seed=11)


@pytest.fixture(scope="module")
def digits():
    cfg = config.load_config(CONFIG, ["kse.G=5"])
    return cfg, common.load_data(cfg)


@pytest.mark.parity
def test_tf_and_torch_give_the_same_codes_and_compressed_logits(backends, teacher, digits):
    cfg, splits = digits
    g, params, _ = checkpoint.load_checkpoint(teacher)
    out = {}
    for name, b in backends.items():
        codes, _ = kse_method.make_codes(cfg, g, b.get_weights(b.build(g, params)))
        small, sp, codes = kse.compress(g, params, codes)
        shared, shp = kse.shared_form(small, sp, codes)
        x = splits.test.x[:16]
        out[name] = (codes, b.forward(b.build(small, sp), x)[0], b.forward(b.build(shared, shp), x)[0])
    (c_torch, dense_torch, shared_torch), (c_tf, dense_tf, shared_tf) = out["torch"], out["tf"]
    assert any(not c.full.all() for c in c_torch.values())  # something is clustered
    for name in c_torch:
        assert np.array_equal(c_torch[name].channels, c_tf[name].channels)
        assert np.array_equal(c_torch[name].labels, c_tf[name].labels)
    assert close(dense_torch, dense_tf) < 1e-4
    # the two inference forms agree in each backend
    assert close(dense_torch, shared_torch) < 1e-4 and close(dense_tf, shared_tf) < 1e-4


def test_training_moves_centroids_and_keeps_assignments(backend, teacher, digits):
    cfg, splits = digits
    g, params, _ = checkpoint.load_checkpoint(teacher)
    codes, _ = kse_method.make_codes(cfg, g, params)
    small, sp, codes = kse.compress(g, params, codes)
    model = backend.build(small, sp)
    projector = kse_method.Projector(backend, model, codes)
    from backends.base import LossSpec

    trainer = backend.trainer(model, LossSpec(weight_decay=1e-4))
    projector.on_epoch(0, trainer)
    for _ in range(2):  # what common.fit does: a step, then the on_step hook
        trainer.step(splits.train.x[:64], splits.train.y[:64], 0.05)
        projector.on_step(0.05, trainer)
    after = backend.get_weights(model)
    name = "layer2.1.conv1"
    code = projector.codes[name]
    moved = False
    for j, (book, lab) in enumerate(zip(code.codebooks, code.labels)):
        # every kernel is its centroid, with the assignments fixed at clustering
        assert np.array_equal(after[f"{name}.weight"][:, j], book[lab])
        moved |= not np.allclose(book, codes[name].codebooks[j])
    assert moved
    assert not np.allclose(after["fc.weight"], sp["fc.weight"])  # the head trains too


@pytest.mark.parametrize("backend_name", ["torch", "tf"])
def test_kse_end_to_end_export_and_resume(backend_name, teacher, tmp_path, capsys):
    argv = ["--backend", backend_name, "--workdir", str(tmp_path / "w"), f"--config.model.weights={teacher}", *TINY]
    assert kse_method.cli(argv) == 0
    out = capsys.readouterr().out
    assert "exported form:" in out and "fine-tuned shared" in out
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert [r["model"] for r in m["rows"]] == ["baseline", "compressed", "fine-tuned dense", "fine-tuned shared"]
    assert m["dense_shared_max_diff"] < 1e-4
    base, dense = m["rows"][0], m["rows"][2]
    assert dense["macs"] < base["macs"] and m["paper_macs_total"] < dense["macs"]
    assert all(layer["per_level"][0] >= 1 for layer in m["layers"])  # every layer prunes its weakest channel
    # the export is an ordinary checkpoint of the faster form, which it names
    g, _, meta = checkpoint.load_checkpoint(m["checkpoint"])
    row = m["rows"][2 if m["form"] == "dense" else 3]
    assert meta["form"] == m["form"] and flops.count_macs(g) == row["macs"]
    if backend_name == "tf":
        return
    assert kse_method.cli(argv) == 0  # a rerun resumes: no clustering, no training
    assert "clustering skipped" in (tmp_path / "w" / "log.txt").read_text()
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["layers"] == m["layers"]


def _nan_teacher(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    p = trained_like(g)
    p["layer1.1.conv2.weight"][0, 0, 0, 0] = np.nan
    path = tmp_path / "nan.safetensors"
    checkpoint.save_checkpoint(str(path), g, p)
    return f"--config.model.weights={path}"


BAD = {
    "G below 2": (["--config.kse.G=1"], "kse.G"),
    "negative T": (["--config.kse.T=-1"], "kse.T"),
    "too few filters for the kNN": (["--config.kse.k=16"], "needs at least 17"),
    "NaN weights": ([_nan_teacher], "layer1.1.conv2.weight"),
    "layers matching nothing": (["--config.kse.layers=fc"], "matches no convolution"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_kse_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    args, needle = BAD[case]
    argv = ["--backend", "torch", "--workdir", str(tmp_path / "w"),
            *[a(tmp_path) if callable(a) else a for a in args]]
    assert kse_method.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "w").exists()
