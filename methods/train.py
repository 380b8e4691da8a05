"""Train a zoo model from a hyperparameter file: ``python -m methods.train --backend tf|torch``.

Writes to the work directory: ``config.json`` (resolved config), ``train/last.safetensors``
and ``train/best.safetensors`` (best on the validation split), ``metrics.json`` and
``log.txt``. Rerunning with the same work directory resumes after the last finished epoch.
"""

from __future__ import annotations

import json
import os
import sys

from methods import common


def run(ctx: common.Context) -> dict:
    model = common.start_model(ctx, stage=None)
    c = common.cost(model)
    common.log.info("%s: %.2f M MACs (one multiply-add = one MAC), %.3f M params",
                    model.graph.arch, c["macs"] / 1e6, c["params"] / 1e6)
    state = common.fit(ctx, model, ctx.cfg.train, "train")
    val = common.evaluate(ctx.backend, model, ctx.splits.val)
    test = common.evaluate(ctx.backend, model, ctx.splits.test)
    metrics = {"model": model.graph.arch, "backend": ctx.backend.name, **c,
               "best_epoch": state["best_epoch"], "val_accuracy": val["accuracy"],
               "test_accuracy": test["accuracy"], "checkpoint": ctx.path("train", "best.safetensors"),
               "history": state["history"]}
    common.log.info("best epoch %d: val %.2f%%, test %.2f%%", state["best_epoch"], val["accuracy"],
                    test["accuracy"])
    common.write_metrics(ctx, metrics)
    return metrics


def baseline(backend: str, workdir: str, epochs: int) -> dict:
    """Train (or resume) the default digits baseline in ``workdir``; its ``metrics.json`` (benchmarks' shared first step)."""
    if cli(["--backend", backend, "--workdir", workdir, f"--config.train.epochs={epochs}"]) != 0:
        raise SystemExit(f"training the baseline in {workdir} failed")
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "resnet20_digits.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
