"""Export a checkpoint: ``python -m methods.export --checkpoint FILE --format onnx|torch --out PATH``.

Writes a file that runs without this library: ``onnx`` (written from the graph and its
numpy weights with the ``onnx`` package, checked with ``onnx.checker``, run here with
ONNX Runtime) or ``torch`` (a ``torch.export`` program of a plain ``nn.Module`` whose
``state_dict`` has the canonical names; ``torch.export.load(PATH).module()`` runs it). The checkpoint may be
an original or a compressed network from any method and either backend. The export's
logits on validation images (random inputs when the checkpoint takes other inputs than the
config's data) must equal the backend's within 1e-4 (relative to the largest
logit), or the command fails; its latency at batch 1 and at the throughput batch is
printed next to the backend's, timed in turns. ``metrics.json`` in the work directory
(default: the config's, plus ``/<backend>/export``) records both.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from compress_core.errors import UserError
from compress_core.ir import checkpoint, flops
from compress_core.ir.onnx_export import to_onnx
from methods import common, distributed, report

FORMATS = ("onnx", "torch")
TOLERANCE = 1e-4


def _onnx_runner(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running the ONNX file needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": np.asarray(x, np.float32)})[0]


def export(backend, graph, params, fmt: str, out: str):
    """Write ``graph`` with ``params`` to ``out`` in format ``fmt``; a callable running the written file."""
    if fmt == "onnx":
        to_onnx(graph, params, out)
        return _onnx_runner(out)
    from backends.base import get_backend

    exporter = backend if fmt in backend.export_formats else get_backend("torch")
    exporter.export(graph, params, out, fmt)
    return exporter.load_exported(out, fmt)


def run(ctx: common.Context) -> dict:
    if not distributed.is_main():  # one file, written and timed once: the other ranks of a launch idle
        return {}
    args = ctx.args
    graph, params, _ = checkpoint.load_checkpoint(args.checkpoint)
    model = ctx.backend.build(graph, params)
    runner = export(ctx.backend, graph, params, args.format, args.out)
    x = _inputs(ctx, graph, 64)
    want = ctx.backend.forward(model, x)[0]
    got = runner(x)
    diff = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the exported {args.format} file's logits differ from the {ctx.backend.name} "
                           f"backend's by {diff:.2e} (relative), more than {TOLERANCE}")
    runtime = "ONNX Runtime" if args.format == "onnx" else "torch.export"
    rows = []
    for batch in (1, report.THROUGHPUT_BATCH):
        xb = _inputs(ctx, graph, batch)
        ms = report.time_in_turns([lambda xb=xb: ctx.backend.forward(model, xb), lambda xb=xb: runner(xb)],
                                  args.repeats)
        rows.append({"batch": batch, f"{ctx.backend.name}_ms": ms[0], "export_ms": ms[1]})
    print(f"exported {graph.arch} ({flops.count_macs(graph) / 1e6:.2f} M MACs) to {args.out} ({args.format}); "
          f"logits equal the {ctx.backend.name} backend's within {diff:.1e}")
    print(f"{'batch':>6}{f'{ctx.backend.name} backend ms':>22}{f'{runtime} ms':>20}")
    for r in rows:
        print(f"{r['batch']:>6}{r[f'{ctx.backend.name}_ms']:>22.2f}{r['export_ms']:>20.2f}")
    metrics = {"checkpoint": args.checkpoint, "format": args.format, "out": args.out, "backend": ctx.backend.name,
               "max_relative_diff": diff, "latency": rows, **flops.summary(graph)}
    common.write_metrics(ctx, metrics)
    return metrics


def _inputs(ctx: common.Context, graph, n: int) -> np.ndarray:
    """``n`` validation images when the checkpoint takes the config's data, else seeded normal inputs."""
    val = ctx.splits.val.x
    if tuple(val.shape[1:]) == graph.input_shape:
        return np.resize(val, (n, *graph.input_shape)).astype(np.float32)
    return np.random.default_rng(0).normal(size=(n, *graph.input_shape)).astype(np.float32)


def _flags(p):
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of this library")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="the file to write (must not exist)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes per runtime and batch")


def check(ctx: common.Context) -> None:
    a = ctx.args
    if a.format not in FORMATS:
        raise UserError(f"unknown export format '{a.format}' (choose from: {', '.join(FORMATS)})")
    if os.path.exists(a.out):
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
