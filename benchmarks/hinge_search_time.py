"""Time of one Hinge search epoch relative to one plain training epoch (target: at most 1.3x).

``python benchmarks/hinge_search_time.py [--backends torch tf] [--repeats 3] [--model resnet20] [--size 32]``

Plain and search epochs train the same network with the sparsity matrices attached
(and "original" the network without them), over the digits training split at batch
64. The search epoch adds what Hinge adds: the
per-parameter learning rates, the matrices' gradients returned by every step and
the gradient-ratio rate adjustment (``p1``, on for ResNets) and, after every step,
reading the matrices, the numpy proximal step and writing them back. Epochs are timed in turns (plain, search,
plain, ...) so that the load of a shared machine weighs on both alike; the table
shows medians and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backends.base import LossSpec, OptimSpec, get_backend
from compress_core import data
from compress_core.data import config
from compress_core.ir import flops, zoo
from compress_core.ir.init import init_params
from compress_core.recipes import hinge
from methods import common
from methods import hinge as hinge_method

CONFIG = f"{common.HYPERPARAMS}/hinge_resnet20_digits.py"


def epoch(trainer, splits, batch: int, on_step=None) -> tuple[float, float]:
    """Wall time of one epoch and, of it, the time spent after the steps (the proximal step)."""
    start, extra = time.perf_counter(), 0.0
    for x, y in data.iterate_batches(splits.train, batch, True, np.random.default_rng(0)):
        trainer.step(x, y, 0.1)
        if on_step:
            t = time.perf_counter()
            on_step(0.1, trainer)
            extra += time.perf_counter() - t
    return time.perf_counter() - start, extra


def measure(backend_name: str, model_name: str, repeats: int, size: int = 0) -> tuple[float, ...]:
    cfg = config.load_config(CONFIG, [f"model.source={model_name}"])
    splits = common.load_data(cfg)
    if size:  # CIFAR-sized synthetic images instead of 8x8 digits, as many as the digits training split
        ds = data.synthetic_dataset(len(splits.train), 10, (3, size, size), seed=0)
        splits = data.DataSplits(ds, ds, ds, 10, np.zeros(3), np.ones(3))
    b = get_backend(backend_name)
    g = zoo.build(model_name, splits.num_classes, splits.train.x.shape[1:])
    graph, params, place = hinge.attach(g, init_params(g, 0))
    ctx = common.Context(cfg, b, "", splits)
    plain_model, search_model = b.build(graph, params), b.build(graph, params)
    loss = LossSpec(weight_decay=1e-4)
    plain = b.trainer(plain_model, loss, OptimSpec(0.9, False))
    original = b.trainer(b.build(g, init_params(g, 0)), loss, OptimSpec(0.9, False))
    runner = hinge_method.Search(ctx, search_model, place, flops.count_macs(g), params)
    search = b.trainer(search_model, loss, runner.optim())
    epoch(original, splits, 64)  # warm-up: graph building, allocator
    epoch(plain, splits, 64)
    epoch(search, splits, 64, runner.on_step)
    times = {"original": [], "plain": [], "search": [], "prox": []}
    for _ in range(repeats):
        times["original"].append(epoch(original, splits, 64)[0])
        times["plain"].append(epoch(plain, splits, 64)[0])
        total, prox = epoch(search, splits, 64, runner.on_step)
        times["search"].append(total)
        times["prox"].append(prox)
    return tuple(float(np.median(times[k])) for k in ("original", "plain", "search", "prox"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["torch", "tf"])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=0, help="synthetic 3xSxS images instead of digits (e.g. 32)")
    a = ap.parse_args(argv)
    rows = [(name, *measure(name, a.model, a.repeats, a.size)) for name in a.backends]
    what = f"synthetic 3x{a.size}x{a.size} images" if a.size else "digits train split"
    print(f"\n{a.model} with Hinge matrices, {what}, batch 64; medians of {a.repeats} epochs")
    print("original: the network without matrices; plain: with them, ordinary SGD; search: Hinge's epoch")
    print("prox s: the part of the search epoch spent reading, thresholding and writing the matrices")
    print(f"{'backend':<8}{'original s':>11}{'plain s':>9}{'search s':>10}{'prox s':>8}{'search/plain':>14}"
          f"{'search/original':>17}{'(plain+prox)/plain':>20}")
    for name, o, p, s, x in rows:
        print(f"{name:<8}{o:>11.2f}{p:>9.2f}{s:>10.2f}{x:>8.2f}{s / p:>14.2f}{s / o:>17.2f}{(p + x) / p:>20.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
