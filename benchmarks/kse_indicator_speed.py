"""Time of the KSE indicator and kernel clustering for every conv of ResNet-56 and of a ResNet-50.

ResNet-56: the zoo's 54 block convs (He-initialised weights). ResNet-50: the
weight shapes of torchvision's ResNet-50 bottleneck convs (1x1, 3x3 and
downsample; stem and fc excluded, as the reference), filled with He-normal
values. G=5, T=1 (the reference's ImageNet setting), seed 0. Target: the
whole ResNet-50 in under 10 s on 2 cores.

    python benchmarks/kse_indicator_speed.py
"""

from __future__ import annotations

import re
import time

import numpy as np

from compress_core import kse, zoo
from compress_core.criteria.kse import kse_indicator
from compress_core.init import init_params


def resnet50_shapes() -> list[tuple[int, int, int, int]]:
    shapes, cin = [], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            shapes += [(width, cin, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if i == 0:
                shapes.append((4 * width, cin, 1, 1))
            cin = 4 * width
    return shapes


def timed(weights, G=5, T=1):
    t_ind = t_clu = 0.0
    pruned = clustered = kept = 0
    for w in weights:
        t = time.perf_counter()
        r = kse_indicator(w, G, T)
        t_ind += time.perf_counter() - t
        t = time.perf_counter()
        kse.cluster_layer(w, r.num_centroids, seed=0)
        t_clu += time.perf_counter() - t
        pruned += int((r.num_centroids == 0).sum())
        kept += int((r.num_centroids == w.shape[0]).sum())
        clustered += int(((r.num_centroids > 0) & (r.num_centroids < w.shape[0])).sum())
    return t_ind, t_clu, pruned, clustered, kept


def main() -> None:
    g = zoo.build("resnet56")
    p = init_params(g)
    r56 = [p[f"{n.name}.weight"] for n in g.of_op("conv") if re.fullmatch(r"layer\d+\.\d+\.conv\d", n.name)]
    rng = np.random.default_rng(0)
    r50 = [rng.normal(0, np.sqrt(2 / np.prod(s[1:])), s).astype(np.float32) for s in resnet50_shapes()]
    head = f"{'weights':<12}{'convs':>6}{'params':>10}{'indicator s':>13}{'k-means s':>11}{'total s':>9}" \
           f"{'pruned/clustered/kept channels':>32}"
    print(head)
    print("-" * len(head))
    for name, ws in (("ResNet-56", r56), ("ResNet-50", r50)):
        ti, tc, a, b, c = timed(ws)
        print(f"{name:<12}{len(ws):>6}{sum(w.size for w in ws) / 1e6:>9.2f}M{ti:>13.2f}{tc:>11.2f}{ti + tc:>9.2f}"
              f"{f'{a}/{b}/{c}':>32}")
    print("G=5, T=1, k=5, paper entropy sets; one process, wall time")


if __name__ == "__main__":
    main()
