"""Time and peak memory of the DCFF importance step on every conv of an ImageNet ResNet-50.

The 53 convs of the zoo's ``resnet50`` (stem, 48 bottleneck convs, 4 downsample
convs) with He-normal weights from ``init_params`` (float32, as a backend hands
them over). One importance step = distances + log-similarity + KL scores of a
layer (:func:`compress_core.criteria.dcff.dcff_importance`), at t = 1 (the first
epoch), t = 360 (t D ~ 720 for He-initialised filters, D ~ 2: exp would be
subnormal, which the criterion flushes to 0) and t = 1e4 (saturated schedule:
every off-diagonal p underflows).
Target: under 2 s for the whole network. Then the released code's n^3 formula
(:func:`dcff_importance_reference`) on the layers small enough to hold its
``[n, n, n]`` tensors, as ratios measured in this run. Peak memory is
tracemalloc's (numpy allocations), measured in a separate pass from the timings.

    OMP_NUM_THREADS=1 python benchmarks/dcff_importance_speed.py
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from compress_core.criteria.dcff import dcff_importance, dcff_importance_reference
from compress_core.ir import zoo
from compress_core.ir.init import init_params

NAIVE_LAYERS = ("layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv2", "layer1.0.conv3")


def timed(fn, *args, repeat: int = 3) -> float:
    """Best of ``repeat`` wall times (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def gram(w: np.ndarray) -> np.ndarray:
    """The float64 Gram matrix alone: the BLAS work any exact distance computation needs."""
    f = w.reshape(len(w), -1).astype(np.float64)
    return f @ f.T


def peak_mib(fn, *args) -> float:
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    g = zoo.build("resnet50", 1000, (3, 224, 224))
    params = init_params(g)
    weights = {n.name: params[f"{n.name}.weight"] for n in g.of_op("conv")}
    largest = max(weights, key=lambda k: weights[k].shape[0] ** 2)
    print(f"ResNet-50: {len(weights)} convs, {sum(w.size for w in weights.values()) / 1e6:.2f} M weights, "
          f"largest n = {weights[largest].shape[0]} ({largest})")
    head = f"{'step':<36}{'t':>8}{'time s':>9}{'peak MiB':>10}"
    print(head)
    print("-" * len(head))
    # timings interleaved layer by layer, so a load change on the shared machine hits all columns alike
    temps = (1.0, 360.0, 1e4)
    floor, totals = 0.0, dict.fromkeys(temps, 0.0)
    for w in weights.values():
        floor += timed(gram, w)
        for t in temps:
            totals[t] += timed(dcff_importance, w, t)
    print(f"{'float64 Gram F F^T only (floor)':<36}{'':>8}{floor:>9.3f}{'':>10}")
    for t in temps:
        peak = max(peak_mib(dcff_importance, w, t) for w in weights.values())
        print(f"{'all 53 convs, O(n^2) log-space':<36}{t:>8g}{totals[t]:>9.3f}{peak:>10.1f}"
              f"   {totals[t] / floor:.1f}x the Gram floor")
    print()
    head = (f"{'layer':<18}{'n':>6}{'d':>6}{'ours s':>9}{'n^3 s':>9}{'time x':>8}"
            f"{'ours MiB':>10}{'n^3 MiB':>10}{'mem x':>8}{'max rel diff':>14}")
    print(head)
    print("-" * len(head))
    for name in NAIVE_LAYERS:
        w = weights[name]
        ours, ref = dcff_importance(w, 1.0), dcff_importance_reference(w, 1.0, eps=0.0)
        t_ours, t_ref = timed(dcff_importance, w, 1.0), timed(dcff_importance_reference, w, 1.0, 0.0)
        m_ours, m_ref = peak_mib(dcff_importance, w, 1.0), peak_mib(dcff_importance_reference, w, 1.0, 0.0)
        diff = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
        print(f"{name:<18}{w.shape[0]:>6}{w[0].size:>6}{t_ours:>9.4f}{t_ref:>9.4f}{t_ref / t_ours:>8.1f}"
              f"{m_ours:>10.2f}{m_ref:>10.1f}{m_ref / m_ours:>8.0f}{diff:>14.1e}")
    print("t = 1, eps = 0 in the n^3 formula; best of 3 wall times, one process")


if __name__ == "__main__":
    main()
