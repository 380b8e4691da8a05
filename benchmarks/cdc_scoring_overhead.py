"""Cost of the CDC statistics pass relative to a plain inference pass over the same data.

    python benchmarks/cdc_scoring_overhead.py [--images 1024] [--repeats 3]

For each backend and model: the time of ``predict`` over the data (inference
only) and of the scoring pass of ``methods.cdc_prune`` (inference with every
mask's tap fetched and folded into ``ClassStats`` accumulators), median of
interleaved repeats in one run. Target: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backends.base import get_backend
from compress_core import cdc, data, zoo
from compress_core.config import load_config
from methods import cdc_prune, common

CASES = {"resnet20 digits 8x8": ("resnet20", (1, 8, 8)), "resnet56 32x32": ("resnet56", (3, 32, 32))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
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
            t_inf, t_score = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                backend.predict(model, (x for x, _ in data.iterate_batches(ds, args.batch, False)))
                t_inf.append(time.perf_counter() - t)
                t = time.perf_counter()
                cdc_prune.score_channels(ctx, model, points, groups)
                t_score.append(time.perf_counter() - t)
            a, b = float(np.median(t_inf)), float(np.median(t_score))
            print(f"{bname:<8}{case:<22}{a:>9.3f}{b:>9.3f}{b / a:>7.2f}")


if __name__ == "__main__":
    main()
