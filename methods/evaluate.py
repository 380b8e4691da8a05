"""Evaluate a checkpoint: ``python -m methods.evaluate --backend tf|torch --checkpoint FILE``.

Prints accuracy on the validation and test splits of the config's data set
(the same splits the training run used, given the same config and seed), MACs
and parameters, and writes them to ``<workdir>/metrics.json`` (default work
directory: the config's, plus ``/eval``). The checkpoint may come from either backend.
"""

from __future__ import annotations

import sys

from methods import common


def run(ctx: common.Context) -> dict:
    path = ctx.args.checkpoint
    model = common.load_model(ctx.backend, path, ctx.splits)
    metrics = {"checkpoint": path, "model": model.graph.arch, "backend": ctx.backend.name,
               **common.cost(model)}
    for split in ("val", "test"):
        m = common.evaluate(ctx.backend, model, getattr(ctx.splits, split))
        metrics.update({f"{split}_accuracy": m["accuracy"], f"{split}_loss": m["loss"]})
    print(f"{metrics['model']}: {metrics['macs'] / 1e6:.2f} M MACs, {metrics['params'] / 1e6:.3f} M params, "
          f"val {metrics['val_accuracy']:.2f}%, test {metrics['test_accuracy']:.2f}%")
    common.write_metrics(ctx, metrics)
    return metrics


def _flags(p):
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of this library")


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "resnet20_digits.py", argv, extra=_flags, subdir="eval")


if __name__ == "__main__":
    sys.exit(cli())
