"""Every method end to end on a user's own PyTorch model (``model.source=module:...``), and its
compressed result exported to ONNX (``methods.export`` checks the ONNX Runtime logits against the
backend's); bad sources and weights are one-line errors before any work."""

from __future__ import annotations

import json

import pytest

from methods import cdc_prune, dcff, decompose, evaluate, export, hinge, kse, train

SOURCE = "--config.model.source=module:tests.methods.custom_net:make"
ONE = "--config.train.epochs=1", "--config.train.batch_size=256"
METHODS = {  # one short run each; the settings that name zoo layers get values for this model
    "train": (train, [*ONE], "train/best.safetensors"),
    "cdc_prune": (cdc_prune, [*ONE, "--config.cdc.block_threshold=-1", "--config.distill.dca_weight=0",
                              "--config.finetune.epochs=1", "--config.distill.epochs=1",
                              "--config.finetune.batch_size=256", "--config.distill.batch_size=256",
                              "--config.cdc.stream=group"], "distill/best.safetensors"),
    "kse": (kse, [*ONE, "--config.kse.layers=all", "--config.finetune.epochs=1", "--config.finetune.batch_size=256"],
            "kse.safetensors"),
    "decompose": (decompose, [*ONE, "--config.finetune.epochs=1", "--config.finetune.batch_size=256",
                              "--config.decompose.latency_guard=false", "--config.decompose.weakening=0.5"],
                  "final.safetensors"),
    "hinge": (hinge, [*ONE, "--config.search.epochs=1", "--config.search.batch_size=256",
                      "--config.finetune.epochs=1", "--config.finetune.batch_size=256"], "hinge.safetensors"),
    "dcff": (dcff, ["--config.train.epochs=1", "--config.train.batch_size=256", "--config.dcff.rates=[0.5]"],
             "dcff.safetensors"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_an_imported_module_and_exports_to_onnx(name, tmp_path):
    module, args, result = METHODS[name]
    work = tmp_path / "w"
    assert module.cli(["--backend", "torch", "--workdir", str(work), SOURCE, *args]) == 0
    m = json.loads((work / "metrics.json").read_text())
    if "rows" in m:  # the compression methods' common report
        assert m["rows"][-1]["macs"] <= m["rows"][0]["macs"]
    out = tmp_path / "model.onnx"
    assert export.cli(["--backend", "torch", "--workdir", str(tmp_path / "ex"), "--checkpoint", str(work / result),
                       "--format", "onnx", "--out", str(out), "--repeats", "2"]) == 0
    e = json.loads((tmp_path / "ex" / "metrics.json").read_text())
    assert e["max_relative_diff"] <= 1e-4 and out.stat().st_size > 0


def test_state_dict_weights_load_into_the_source_and_the_tf_backend_runs_it(tmp_path):
    import torch

    from tests.methods.custom_net import make

    net = make()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    for backend in ("torch", "tf"):
        assert evaluate.cli(["--backend", backend, "--workdir", str(tmp_path / backend), SOURCE,
                             f"--config.model.weights={tmp_path / 'w.pth'}", "--checkpoint",
                             str(_checkpoint(tmp_path, net))]) == 0
    a, b = (json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("torch", "tf"))
    assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)


def _checkpoint(tmp_path, net):
    from backends.torch import from_module
    from compress_core.ir import checkpoint

    graph, params = from_module(net, (1, 8, 8), "tests.methods.custom_net:make")
    path = tmp_path / "imported.safetensors"
    checkpoint.save_checkpoint(str(path), graph, params)
    return path


def _state_dict(tmp_path, change):
    import torch

    from tests.methods.custom_net import make

    sd = make().state_dict()
    change(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return str(path)


BAD = {
    "not a callable": (["--config.model.source=module:tests.methods.custom_net:nothing"], "no callable 'nothing'"),
    "no such package": (["--config.model.source=module:no_such_package.x:make"], "cannot import no_such_package"),
    "callable that fails": (["--config.model.source=module:numpy:zeros"], "calling zeros() failed"),
    "returns no module": (["--config.model.source=module:os:getcwd"], "getcwd() returned str, not a torch.nn.Module"),
    "malformed source": (["--config.model.source=module:tests.methods.custom_net"], "module:package.path:callable"),
    "other shapes": ([SOURCE, lambda t: "--config.model.weights=" + _state_dict(
        t, lambda sd: sd.update({"conv1.weight": sd["conv1.weight"][:8]}))], "'conv1.weight' has shape (8, 16, 3, 3)"),
    "missing keys": ([SOURCE, lambda t: "--config.model.weights=" + _state_dict(t, lambda sd: sd.pop("conv1.weight"))],
                     "missing ['conv1.weight']"),
    "input shape the model rejects": ([SOURCE, "--config.data.name=synthetic"], "rejects inputs of shape (3, 8, 8)"),
    "input_shape unlike the data": ([SOURCE, "--config.model.input_shape=(3, 8, 8)"], "model.input_shape"),
    "other input size than the data": (["--config.model.input_shape=(1, 16, 16)"], "the data has inputs of shape"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_are_one_line_errors_before_any_work(case, tmp_path, capsys):
    args = [a(tmp_path) if callable(a) else a for a in BAD[case][0]]
    work = tmp_path / "untouched"
    assert train.cli(["--backend", "torch", "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and BAD[case][1] in err, err
    assert not work.exists()
