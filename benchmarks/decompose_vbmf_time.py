"""Time of EVBMF Tucker-2 rank selection for every conv of a ResNet-50-sized set of weights (target: < 2 s).

    python benchmarks/decompose_vbmf_time.py [--repeats 3]

The weights are random with a planted low-rank part (the time does not depend on
the values); shapes are those of torchvision's ResNet-50 (53 convs, 23.5 M conv
weights). Two EVBMF problems per conv (output and input unfoldings; one for a 1x1 conv, whose
unfoldings are transposes of each other). The last rows time the same EVBMF from full-SVD
singular values of both unfoldings, for the speed-up ratio and a check that the ranks agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_core.criteria import lowrank


def resnet50_conv_shapes() -> list[tuple[int, int, int, int]]:
    shapes, cin = [(64, 3, 7, 7)], 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            shapes += [(planes, cin, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            if i == 0:
                shapes.append((planes * 4, cin, 1, 1))  # projection shortcut
            cin = planes * 4
    return shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    weights = []
    for s in resnet50_conv_shapes():
        r = max(1, min(s[0], s[1]) // 4)
        low = np.einsum("or,ri->oi", rng.normal(size=(s[0], r)), rng.normal(size=(r, s[1])))[:, :, None, None]
        weights.append((0.01 * (low + 3 * rng.normal(size=s))).astype(np.float32))
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ranks = [lowrank.tucker2_ranks(w) for w in weights]
        times.append(time.perf_counter() - t)
    big = max(range(len(weights)), key=lambda i: weights[i].size)
    t = time.perf_counter()
    lowrank.tucker2_ranks(weights[big])
    t_big = time.perf_counter() - t
    # the same EVBMF from full-SVD singular values (the previous implementation's cost), once
    t = time.perf_counter()
    svd_ranks = [tuple(lowrank.evbmf_spectrum(np.linalg.svd(m, compute_uv=False) ** 2, *sorted(m.shape)).rank
                       for m in (lowrank.unfold(w.astype(np.float64), 0), lowrank.unfold(w.astype(np.float64), 1)))
                 for w in weights]
    t_svd = time.perf_counter() - t
    print(f"{len(weights)} convs, {sum(w.size for w in weights) / 1e6:.1f} M weights, {os.cpu_count()} CPU threads")
    print(f"{'':<40}{'seconds':>10}{'vs 2 s target':>15}")
    print(f"{'all convs, median of ' + str(args.repeats):<40}{np.median(times):>10.2f}{np.median(times) / 2:>15.2f}")
    print(f"{'largest conv ' + str(weights[big].shape):<40}{t_big:>10.3f}{t_big / 2:>15.3f}")
    print(f"{'all convs, SVD singular values (once)':<40}{t_svd:>10.2f}{t_svd / 2:>15.2f}")
    print(f"speed-up of the Gram-eigenvalue path over full SVDs: {t_svd / np.median(times):.1f}x; "
          f"same ranks: {svd_ranks == ranks}")
    print(f"ranks of the first 4 convs: {ranks[:4]}")


if __name__ == "__main__":
    main()
