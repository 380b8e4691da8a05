"""Real CPU latency of CDC-pruned networks against the original, per backend.

Half the MACs is not half the time. For each case the original network, the
network pruned to the MAC target with any widths (what ``cdc.multiple=1``
gives: widths such as 10, 19, 38) and with widths rounded to multiples of 8
(``cdc.multiple=8``; the ratio is searched again, so it lands a little below
the target). Which channels are kept does not change the time, so the first
``k`` of every mask are kept. All models of one backend are timed in turns
(median of ``--repeats``); speedups are against the original of the same
backend and batch.

    python benchmarks/cdc_latency.py [--batch 1 32 128] [--repeats 15] [--mac-target 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np

from backends.base import get_backend
from compress_core import cdc, flops, zoo
from compress_core.init import init_params
from methods.common import interleaved_ms

CASES = {"resnet20 digits 8x8": ("resnet20", (1, 8, 8)), "resnet56 32x32": ("resnet56", (3, 32, 32))}


def variants(name: str, shape, mac_target: float) -> dict:
    """``{label: (graph, params)}``: the original and the two pruned networks."""
    g = zoo.build(name, 10, shape)
    p = init_params(g, 0)
    points = cdc.mask_points(g)
    out = {"original": (g, p)}
    for label, multiple in (("pruned", 1), ("pruned, x8", 8)):
        counts = cdc.uniform_counts(points, cdc.ratio_for_macs(g, points, mac_target, 1, multiple), 1, multiple)
        out[label] = cdc.apply(g, p, points, [np.arange(k) for k in counts])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--mac-target", type=float, default=0.5)
    args = ap.parse_args()
    print(f"median of {args.repeats} forward passes, models timed in turns; speedup = original ms / model ms")
    print(f"{'backend':<8}{'case':<22}{'model':<12}{'MACs %':>8}"
          + "".join(f"{f'ms@{b}':>10}{'speedup':>9}" for b in args.batch))
    for case, (name, shape) in CASES.items():
        models = variants(name, shape, args.mac_target)
        base_macs = flops.count_macs(models["original"][0])
        for bname in ("torch", "tf"):
            backend = get_backend(bname)
            built = [backend.build(g, p) for g, p in models.values()]
            ms = {b: interleaved_ms(backend, built, b, args.repeats) for b in args.batch}
            for i, (label, (g, _)) in enumerate(models.items()):
                cells = "".join(f"{ms[b][i]:>10.2f}{ms[b][0] / ms[b][i]:>9.2f}" for b in args.batch)
                print(f"{bname:<8}{case:<22}{label:<12}{100 * flops.count_macs(g) / base_macs:>8.1f}{cells}")


if __name__ == "__main__":
    main()
