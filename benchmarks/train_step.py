"""Training-step time of CIFAR ResNet-20 and ResNet-56 per backend and precision, and the ratios.

    python benchmarks/train_step.py [--batch 128] [--steps 10] [--precisions float32,bfloat16]

Both backends train the same graph with the same loss (cross-entropy + weight
decay) and optimiser (Nesterov SGD) on the same random 32x32 batch; the table is
the median step time measured in this run, after warm-up steps. The precisions of
one model and backend are timed in turns (one step of each, again and again), so a
busy machine slows them alike; ``x/float32`` is the step-time ratio to float32
(mixed precision: ``OptimSpec.precision``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from backends.base import PRECISIONS, LossSpec, OptimSpec, get_backend
from compress_core.errors import UserError
from compress_core.ir import zoo
from methods.report import time_in_turns


def step_times(backend, graph, x, y, precisions: list[str], steps: int) -> list[float]:
    """Median step time (ms) of each precision, timed in turns."""
    calls = []
    for precision in precisions:
        trainer = backend.trainer(backend.build(graph), LossSpec(weight_decay=5e-4),
                                  OptimSpec(0.9, True, precision=precision))
        calls.append(lambda t=trainer: t.step(x, y, 0.01))
    return time_in_turns(calls, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--backends", default="torch,tf")
    p.add_argument("--precisions", default="float32", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads of each framework (0: its default)")
    args = p.parse_args()
    precisions = args.precisions.split(",")
    bad = [q for q in precisions if q not in PRECISIONS]
    if bad:
        raise SystemExit(f"error: unknown precision {bad[0]!r} (choose from: {', '.join(PRECISIONS)})")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    try:
        options = {"torch": {"threads": args.threads}, "tf": {"intra_threads": args.threads}}
        backends = {name: get_backend(name, **(options.get(name, {}) if args.threads else {}))
                    for name in args.backends.split(",")}
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    threads = args.threads or os.cpu_count()
    print(f"batch {args.batch}, 32x32, median of {args.steps} steps, {threads} intra-op threads")
    head = f"{'model':<10}{'backend':<9}" + "".join(f"{q + ' ms':>15}" for q in precisions)
    head += "".join(f"{q + '/float32':>18}" for q in precisions if q != "float32" and "float32" in precisions)
    print(head)
    tf_torch = {}
    for name in args.models.split(","):
        g = zoo.build(name)
        for b, backend in backends.items():
            ms = dict(zip(precisions, step_times(backend, g, x, y, precisions, args.steps)))
            tf_torch.setdefault(name, {})[b] = ms
            line = f"{name:<10}{b:<9}" + "".join(f"{ms[q]:>15.1f}" for q in precisions)
            if "float32" in ms:
                line += "".join(f"{ms[q] / ms['float32']:>18.2f}" for q in precisions if q != "float32")
            print(line)
    if {"tf", "torch"} <= set(backends):
        for name, by in tf_torch.items():
            print(f"{name}: tf/torch step time " + ", ".join(f"{q} {by['tf'][q] / by['torch'][q]:.2f}"
                                                          for q in precisions))


if __name__ == "__main__":
    main()
