"""Real CPU latency of CDC-pruned networks against the original, per backend.

Half the MACs is not half the time. For each case the original network, the
network pruned to the MAC target with any widths (what ``cdc.multiple=1``
gives: widths such as 10, 19, 38) and with widths rounded to multiples of 8
(``cdc.multiple=8``; the ratio is searched again, so it lands a little below
the target), each in two forms: ``select`` (the reference: every block reads its
share of the residual stream through a channel selection, the stream stays whole)
and ``group`` (``cdc.stream=group``: the stream is cut as one channel group). Which channels are kept does not change the time, so the first
``k`` of every mask are kept. All models of one backend are timed in turns
(median of ``--repeats``); speedups are against the original of the same
backend and batch.

    python benchmarks/cdc_latency.py [--batch 1 32 128] [--repeats 15] [--mac-target 0.5] [--cases resnet56]
"""

from __future__ import annotations

import argparse

import numpy as np

from backends.base import get_backend
from compress_core.ir import flops, zoo
from compress_core.ir.init import init_params
from compress_core.recipes import cdc
from methods.report import interleaved_ms

CASES = {"resnet20 digits 8x8": ("resnet20", (1, 8, 8)), "resnet56 32x32": ("resnet56", (3, 32, 32))}


def variants(name: str, shape, mac_target: float) -> dict:
    """``{label: (graph, params)}``: the original and the two pruned networks."""
    g = zoo.build(name, 10, shape)
    p = init_params(g, 0)
    points = cdc.mask_points(g)
    out = {"original": (g, p)}
    for stream in cdc.STREAMS:
        for label, multiple in ((stream, 1), (f"{stream}, x8", 8)):
            ratio = cdc.ratio_for_macs(g, points, mac_target, 1, multiple, stream)
            counts = cdc.uniform_counts(points, ratio, 1, multiple)
            keeps = cdc.select_top(points, [np.zeros(pt.width) for pt in points], counts, stream)
            out[label] = cdc.apply(g, p, points, keeps, stream)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--mac-target", type=float, default=0.5)
    ap.add_argument("--cases", nargs="+", default=[c.split()[0] for c in CASES], help="model names of CASES to run")
    args = ap.parse_args()
    print(f"median of {args.repeats} forward passes, models timed in turns; speedup = original ms / model ms")
    print(f"{'backend':<8}{'case':<22}{'model':<14}{'MACs %':>8}"
          + "".join(f"{f'ms@{b}':>10}{'speedup':>9}" for b in args.batch))
    for case, (name, shape) in CASES.items():
        if name not in args.cases:
            continue
        models = variants(name, shape, args.mac_target)
        base_macs = flops.count_macs(models["original"][0])
        for bname in ("torch", "tf"):
            backend = get_backend(bname)
            built = [backend.build(g, p) for g, p in models.values()]
            ms = {b: interleaved_ms(backend, built, b, args.repeats) for b in args.batch}
            for i, (label, (g, _)) in enumerate(models.items()):
                cells = "".join(f"{ms[b][i]:>10.2f}{ms[b][0] / ms[b][i]:>9.2f}" for b in args.batch)
                print(f"{bname:<8}{case:<22}{label:<14}{100 * flops.count_macs(g) / base_macs:>8.1f}{cells}")


if __name__ == "__main__":
    main()
