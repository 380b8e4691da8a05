"""Export a checkpoint: ``python -m methods.export --checkpoint FILE --format FORMAT --out PATH``.

Writes a file that runs without this library: ``onnx`` (written from the graph and its
numpy weights with the ``onnx`` package, checked with ``onnx.checker``, run here with
ONNX Runtime), ``torch`` (a ``torch.export`` program of a plain ``nn.Module`` whose
``state_dict`` has the canonical names; ``torch.export.load(PATH).module()`` runs it),
``savedmodel`` (a TensorFlow SavedModel directory; ``tf.saved_model.load(PATH)`` runs it),
``tflite`` (a TFLite flatbuffer for ``tf.lite.Interpreter``; ``--quantize dynamic`` for
dynamic-range int8 weights) or ``keras`` (a Keras 3 ``.keras`` file of standard layers for
``keras.models.load_model``). Every file takes NCHW float32 ``input`` of any batch size and
returns ``logits``. The checkpoint may be an original or a compressed network from any
method and either backend. The export's logits on validation images (random inputs when the
checkpoint takes other inputs than the config's data) must equal the backend's within 1e-4
(relative to the largest logit), or the command fails; a quantised file is not held to that:
its test-split accuracy is printed next to the backend's instead. Its latency at batch 1 and
at the throughput batch is printed next to the backend's, timed in turns. ``metrics.json`` in
the work directory (default: the config's, plus ``/<backend>/export``) records all of it.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from compress_core import data
from compress_core.errors import UserError
from compress_core.ir import checkpoint, flops
from compress_core.ir.onnx_export import to_onnx
from compress_core.schedule import classification_metrics
from methods import common, distributed, report

#: format -> the backend that writes it (None: written from numpy) and the runtime that runs it
FORMATS = {"onnx": (None, "ONNX Runtime"), "torch": ("torch", "torch.export"),
           "savedmodel": ("tf", "TF SavedModel"), "tflite": ("tf", "TFLite"), "keras": ("tf", "Keras")}
#: post-training quantisations, by format
QUANTIZE = {"tflite": ("dynamic",)}
TOLERANCE = 1e-4


def _onnx_runner(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running the ONNX file needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": np.asarray(x, np.float32)})[0]


def export(backend, graph, params, fmt: str, out: str, quantize: str | None = None):
    """Write ``graph`` with ``params`` to ``out`` in format ``fmt``; a callable running the written file."""
    if fmt == "onnx":
        to_onnx(graph, params, out)
        return _onnx_runner(out)
    from backends.base import get_backend

    exporter = backend if fmt in backend.export_formats else get_backend(FORMATS[fmt][0])
    exporter.export(graph, params, out, fmt, quantize)
    return exporter.load_exported(out, fmt)


def run(ctx: common.Context) -> dict:
    if not distributed.is_main():  # one file, written and timed once: the other ranks of a launch idle
        return {}
    args = ctx.args
    graph, params, _ = checkpoint.load_checkpoint(args.checkpoint)
    model = ctx.backend.build(graph, params)
    runner = export(ctx.backend, graph, params, args.format, args.out, args.quantize)
    x = _inputs(ctx, graph, 64)
    want = ctx.backend.forward(model, x)[0]
    got = runner(x)
    diff = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    if not diff <= TOLERANCE and args.quantize is None:
        raise RuntimeError(f"the exported {args.format} file's logits differ from the {ctx.backend.name} "
                           f"backend's by {diff:.2e} (relative), more than {TOLERANCE}")
    runtime = FORMATS[args.format][1]
    rows = []
    for batch in (1, report.THROUGHPUT_BATCH):
        xb = _inputs(ctx, graph, batch)
        ms = report.time_in_turns([lambda xb=xb: ctx.backend.forward(model, xb), lambda xb=xb: runner(xb)],
                                  args.repeats)
        rows.append({"batch": batch, f"{ctx.backend.name}_ms": ms[0], "export_ms": ms[1]})
    kind = f"{args.format}, {args.quantize} quantisation" if args.quantize else args.format
    print(f"exported {graph.arch} ({flops.count_macs(graph) / 1e6:.2f} M MACs) to {args.out} ({kind}); "
          f"logits {'equal' if diff <= TOLERANCE else 'differ from'} the {ctx.backend.name} backend's "
          f"{'within' if diff <= TOLERANCE else 'by'} {diff:.1e}")
    metrics = {"checkpoint": args.checkpoint, "format": args.format, "quantize": args.quantize, "out": args.out,
               "backend": ctx.backend.name, "max_relative_diff": diff, "latency": rows, **flops.summary(graph)}
    if args.quantize:
        metrics.update(_accuracy_change(ctx, graph, model, runner, x, want, got))
    print(f"{'batch':>6}{f'{ctx.backend.name} backend ms':>22}{f'{runtime} ms':>20}")
    for r in rows:
        print(f"{r['batch']:>6}{r[f'{ctx.backend.name}_ms']:>22.2f}{r['export_ms']:>20.2f}")
    common.write_metrics(ctx, metrics)
    return metrics


def _accuracy_change(ctx: common.Context, graph, model, runner, x, want, got) -> dict:
    """A quantised file against the backend: test-split accuracy when the checkpoint takes the
    config's data, else the share of ``x`` (random inputs) on which both pick the same class."""
    test = ctx.splits.test
    if tuple(test.x.shape[1:]) != graph.input_shape or len(test) == 0:
        agree = 100.0 * float(np.mean(np.argmax(got, 1) == np.argmax(want, 1)))
        print(f"the quantised file picks the backend's class on {agree:.1f}% of {len(x)} random inputs "
              f"(the checkpoint does not take the config's data: no accuracy)")
        return {"top1_agreement": agree}
    logits: tuple[list, list] = ([], [])
    for b, _ in tqdm(data.iterate_batches(test, 256, False), total=data.num_batches(len(test), 256),
                     desc="test accuracy", leave=False):
        logits[0].append(ctx.backend.forward(model, b)[0])
        logits[1].append(runner(b))
    ours, theirs = (classification_metrics(np.concatenate(v), test.y) for v in logits)
    change = theirs["accuracy"] - ours["accuracy"]
    print(f"test accuracy ({ctx.cfg.data.name}, {len(test)} images): {ctx.backend.name} backend "
          f"{ours['accuracy']:.2f}%, quantised file {theirs['accuracy']:.2f}% ({change:+.2f} points)")
    return {"test_accuracy": ours["accuracy"], "export_test_accuracy": theirs["accuracy"], "accuracy_change": change}


def _inputs(ctx: common.Context, graph, n: int) -> np.ndarray:
    """``n`` validation images when the checkpoint takes the config's data, else seeded normal inputs."""
    val = ctx.splits.val.x
    if tuple(val.shape[1:]) == graph.input_shape:
        return np.resize(val, (n, *graph.input_shape)).astype(np.float32)
    return np.random.default_rng(0).normal(size=(n, *graph.input_shape)).astype(np.float32)


def _flags(p):
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of this library")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="the file (a directory for savedmodel) to write; must not exist")
    p.add_argument("--quantize", default=None,
                   help="post-training quantisation: " + "; ".join(f"{f}: {', '.join(q)}" for f, q in QUANTIZE.items()))
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes per runtime and batch")


def check(ctx: common.Context) -> None:
    a = ctx.args
    if a.format not in FORMATS:
        raise UserError(f"unknown export format '{a.format}' (choose from: {', '.join(FORMATS)})")
    if a.quantize is not None and a.quantize not in QUANTIZE.get(a.format, ()):
        allowed = QUANTIZE.get(a.format)
        raise UserError(f"--quantize {a.quantize}: " + (f"{a.format} files take one of: {', '.join(allowed)}" if allowed
                        else f"{a.format} files are not quantised (only: {', '.join(QUANTIZE)})"))
    if a.format == "keras" and not a.out.endswith(".keras"):
        raise UserError(f"--out {a.out}: a Keras file must end in .keras (keras.models.load_model refuses others)")
    if os.path.lexists(a.out):
        raise UserError(f"{a.out} exists; choose another --out (an export never overwrites a file)")
    parent = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(parent):
        raise UserError(f"the folder of --out does not exist: {parent}")
    if a.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {a.repeats}")


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "resnet20_digits.py", argv, extra=_flags, subdir="export",
                       check=check, match_data=False)


if __name__ == "__main__":
    sys.exit(cli())
