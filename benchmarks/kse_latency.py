"""Real CPU latency of KSE's two inference forms against the original network, per backend.

ResNet-56 at 32x32 (He-initialised weights, BN statistics as after training),
compressed with G=4, T=0 (paper entropy sets): the dense form (one ordinary conv
per layer with the rebuilt kernel, what the reference runs) and the shared-
activation form (depthwise conv over the centroids, gather, grouped 1x1 sum).
Median forward time in one run, the three networks timed in turns; ratios to the original
of the same backend.

    python benchmarks/kse_latency.py [--batch 1 32]
"""

from __future__ import annotations

import argparse
import re

from backends.base import get_backend
from compress_core.criteria.kse import kse_indicator
from compress_core.ir import flops, zoo
from compress_core.ir.init import init_params
from compress_core.recipes import kse
from methods.report import interleaved_ms


def forms(name="resnet56", G=4):
    g = zoo.build(name)
    p = init_params(g)
    codes = {n.name: kse.cluster_layer(p[f"{n.name}.weight"], kse_indicator(p[f"{n.name}.weight"], G).num_centroids)
             for n in g.of_op("conv") if re.fullmatch(r"layer\d+\.\d+\.conv\d", n.name)}
    dense, dp, dcodes = kse.compress(g, p, codes)
    shared, sp = kse.shared_form(dense, dp, dcodes)
    return {"original": (g, p), "dense": (dense, dp), "shared": (shared, sp)}, kse.paper_costs(dense, dcodes)


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    a.add_argument("--repeats", type=int, default=10)
    args = a.parse_args()
    nets, paper = forms()
    head = f"{'backend':<8}{'form':<10}{'MACs (graph)':>14}" + "".join(f"{f'ms@{b}':>10}{'ratio':>7}" for b in args.batch)
    print(head)
    print("-" * len(head))
    for bname in ("torch", "tf"):
        backend = get_backend(bname)
        models = [backend.build(g, p) for g, p in nets.values()]
        ms = {b: interleaved_ms(backend, models, b, args.repeats) for b in args.batch}  # the forms in turns
        for i, (form, (g, _)) in enumerate(nets.items()):
            cells = "".join(f"{ms[b][i]:>10.2f}{ms[b][i] / ms[b][0]:>7.2f}" for b in args.batch)
            print(f"{bname:<8}{form:<10}{flops.count_macs(g) / 1e6:>13.2f}M{cells}")
    print(f"paper accounting of the KSE layers: {paper['macs'] / 1e6:.2f}M MACs + {paper['adds'] / 1e6:.2f}M additions "
          f"(shared form's graph counts those additions as MACs of the 1x1 sum)")
    print("ratio: latency / the original's on the same backend and batch; median of repeated CPU forward passes")


if __name__ == "__main__":
    main()
