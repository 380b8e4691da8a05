"""Training-step time of CIFAR ResNet-20 and ResNet-56 per backend, and the TF/torch ratio.

    python benchmarks/train_step.py [--batch 128] [--steps 10]

Both backends train the same graph with the same loss (cross-entropy + weight
decay) and optimiser (Nesterov SGD) on the same random 32x32 batch; the table is
the median step time measured in this run, after warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from backends.base import LossSpec, OptimSpec, get_backend
from compress_core.ir import zoo


def median_step(backend, graph, x, y, steps: int) -> float:
    model = backend.build(graph)
    trainer = backend.trainer(model, LossSpec(weight_decay=5e-4), OptimSpec(0.9, True))
    for _ in range(3):
        trainer.step(x, y, 0.01)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.step(x, y, 0.01)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--models", default="resnet20,resnet56")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    backends = {name: get_backend(name) for name in ("torch", "tf")}
    print(f"batch {args.batch}, 32x32, median of {args.steps} steps, {os.cpu_count()} CPU threads")
    print(f"{'model':<10}{'torch ms':>10}{'tf ms':>10}{'tf/torch':>10}")
    for name in args.models.split(","):
        g = zoo.build(name)
        t = {b: 1000 * median_step(be, g, x, y, args.steps) for b, be in backends.items()}
        print(f"{name:<10}{t['torch']:>10.1f}{t['tf']:>10.1f}{t['tf'] / t['torch']:>10.2f}")


if __name__ == "__main__":
    main()
