"""``methods.export`` to TensorFlow files, as a user runs it, on the checkpoint of a short training
run: each format's logits checked against the backend's, the quantised file's test accuracy
reported beside the backend's, latencies printed; bad flags are one-line errors before any work."""

from __future__ import annotations

import json
import os

import pytest

from methods import export, train

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    assert train.cli(["--backend", "torch", "--workdir", str(work), "--config.train.epochs=1",
                      "--config.train.batch_size=256"]) == 0
    return str(work / "train" / "best.safetensors"), json.loads((work / "metrics.json").read_text())


def _export(tmp_path, checkpoint, fmt, out, *extra):
    return export.cli(["--backend", "tf", "--workdir", str(tmp_path / f"ex-{fmt}"), "--checkpoint", checkpoint,
                       "--format", fmt, "--out", str(tmp_path / out), "--repeats", "2", *extra])


def test_tf_formats_from_the_command_line(trained, tmp_path, capsys):
    trained, run = trained
    assert _export(tmp_path, trained, "tflite", "q.tflite", "--quantize", "dynamic") == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "ex-tflite" / "metrics.json").read_text())
    # the accuracy is the training run's own on the test split: the same data, loaded the same way
    assert m["quantize"] == "dynamic" and m["test_accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-9)
    assert m["accuracy_change"] == pytest.approx(m["export_test_accuracy"] - m["test_accuracy"])
    assert "quantised file" in out and f"({m['accuracy_change']:+.2f} points)" in out and "TFLite ms" in out
    for fmt, name in (("savedmodel", "net"), ("keras", "net.keras")):
        assert _export(tmp_path, trained, fmt, name) == 0
        m = json.loads((tmp_path / f"ex-{fmt}" / "metrics.json").read_text())
        assert m["max_relative_diff"] <= 1e-4 and [r["batch"] for r in m["latency"]] == [1, 32]
        assert all(r["export_ms"] > 0 and r["tf_ms"] > 0 for r in m["latency"])
    assert os.path.isdir(tmp_path / "net") and (tmp_path / "net.keras").stat().st_size > 0
    assert "Keras ms" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "needle"), [
    (["--format", "h5", "--out", "m.h5"], "unknown export format 'h5' (choose from: onnx, torch, savedmodel"),
    (["--format", "keras", "--out", "m.h5"], "a Keras file must end in .keras"),
    (["--format", "keras", "--out", "m.keras", "--quantize", "dynamic"], "keras files are not quantised"),
    (["--format", "tflite", "--out", "m.tflite", "--quantize", "int4"], "tflite files take one of: dynamic"),
    (["--format", "savedmodel", "--out", "taken"], "taken exists"),
])
def test_bad_flags_are_one_line_errors_and_write_nothing(trained, args, needle, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    args = [str(tmp_path / a) if i and args[i - 1] == "--out" else a for i, a in enumerate(args)]
    assert export.cli(["--backend", "tf", "--workdir", str(tmp_path / "ex"), "--checkpoint", trained[0], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(os.listdir(tmp_path)) == ["taken"] and os.listdir(tmp_path / "taken") == []


def test_every_format_is_written_by_the_backend_the_command_names(backends):
    for fmt, (owner, _) in export.FORMATS.items():
        assert owner is None and fmt == "onnx" or fmt in backends[owner].export_formats, fmt
