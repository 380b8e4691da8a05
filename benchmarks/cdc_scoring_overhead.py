"""Cost of the CDC statistics pass relative to a plain inference pass over the same data.

    python benchmarks/cdc_scoring_overhead.py [--images 1024] [--repeats 9]

For each backend and model: the time of ``predict`` over the data (inference
only) and of the scoring pass of ``methods.cdc_prune`` (inference with every
mask's tap reduced to per-image sums and norms and folded into ``ClassStats``
accumulators), medians of interleaved repeats in one run (the order alternates
and each pass follows a warm-up batch); the ratio is the median of the per-repeat
ratios. Target: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backends.base import get_backend
from compress_core import data
from compress_core.data.config import load_config
from compress_core.ir import zoo
from compress_core.recipes import cdc
from methods import cdc_prune, common

CASES = {"resnet20 digits 8x8": ("resnet20", (1, 8, 8)), "resnet56 32x32": ("resnet56", (3, 32, 32))}


def time_case(backend, ctx, model, points, groups, args) -> tuple[list[float], list[float]]:
    """Seconds of ``args.repeats`` inference passes and scoring passes over ``ctx.splits.train``."""
    ds = ctx.splits.train
    runs = {"infer": lambda: backend.predict(model, (x for x, _ in data.iterate_batches(ds, args.batch, False))),
            "score": lambda: cdc_prune.score_channels(ctx, model, points, groups)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    warm = next(iter(data.iterate_batches(ds, args.batch, False)))[0]
    for r in range(args.repeats):
        # alternate the order and warm up before each timing: whichever pass ran first after
        # the other one paid for the switch (~50 ms on torch, enough to flip a digits ratio)
        for k in ("infer", "score") if r % 2 == 0 else ("score", "infer"):
            backend.forward(model, warm)
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
    return times["infer"], times["score"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    cfg = load_config(f"{common.HYPERPARAMS}/cdc_resnet20_digits.py", [f"cdc.score_batch_size={args.batch}"])
    print(f"{args.images} images, batch {args.batch}, median of {args.repeats} interleaved repeats")
    print(f"{'backend':<8}{'case':<22}{'infer s':>9}{'score s':>9}{'ratio':>7}")
    for bname in ("torch", "tf"):
        backend = get_backend(bname)
        for case, (name, shape) in CASES.items():
            ds = data.synthetic_dataset(args.images, 10, shape, seed=0)
            splits = data.DataSplits(ds, ds, ds, 10, np.zeros(shape[0]), np.ones(shape[0]))
            ctx = common.Context(cfg, backend, "/tmp", splits)
            g = zoo.build(name, 10, shape)
            model = backend.build(g)
            points = cdc.mask_points(g)
            groups = np.arange(10) % 4
            t_inf, t_score = time_case(backend, ctx, model, points, groups, args)
            ratio = float(np.median(np.array(t_score) / np.array(t_inf)))  # paired: robust to drifting load
            print(f"{bname:<8}{case:<22}{np.median(t_inf):>9.3f}{np.median(t_score):>9.3f}{ratio:>7.2f}")


if __name__ == "__main__":
    main()
