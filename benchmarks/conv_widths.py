"""Which channel widths do the convolution kernels like? Time per MAC of one 3x3 conv against its width.

A pruned width that is not a multiple of the CPU's vector block costs the time of the next
multiple (or more): the fast plans round widths to a ``multiple`` (``cdc.multiple``, the
planner's ``multiple``, ``benchmarks/speed.py --multiple``). Per map size (the CIFAR ResNets'
three stages at batch 64), a ``w -> w`` 3x3 conv (pad 1) for every width ``w`` in steps of 4,
built as a one-conv graph and run by each runtime (``torch``: the backend's channels-last
forward; ``tf``: the TF backend; ``ort``: ONNX Runtime on the exported file), all widths of one
runtime and size timed in turns. Printed: ms and ns per 1000 MACs; a width whose cost per MAC is
well above the next multiple's is one to round away. Last, per runtime, the multiple a CDC job
measures when ``cdc.multiple=0`` (the default; ``methods.kernel_widths.measured_multiple``: a
few widths on 32x32 maps, the fastest of 9 turns, the widest step they show).

    python benchmarks/conv_widths.py [--runtimes torch tf ort] [--batch 64] [--repeats 7]

Measured on a 2-core Intel Xeon with AVX-512 (the README's Speed section): in torch and TF the
costs step every 16 channels (a 24-wide conv on 16x16 maps costs as much as a 32-wide one in
torch), so 16 is the multiple there; a CPU with 8-float vectors (AVX2) is expected to step at 8.
ONNX Runtime's medians there varied too much between runs to read a step from by eye; the
measurement (the fastest of 9 turns) gives 16 for it too.
"""

from __future__ import annotations

import argparse

import numpy as np

from methods.kernel_widths import conv_ms, measured_multiple

SIZES = {32: 32, 16: 64, 8: 64}  # map size -> widest width timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", nargs="+", default=["torch", "tf", "ort"], choices=["torch", "tf", "ort"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    print(f"one w -> w 3x3 conv, batch {a.batch}, median of {a.repeats} in turns; ms (ns per 1000 MACs)")
    for runtime in a.runtimes:
        for size, widest in SIZES.items():
            widths = list(range(8, widest + 1, 4))
            times = conv_ms(runtime, widths, size, a.batch, a.repeats, reduce=np.median)
            cells = " ".join(f"{w}:{t:.2f}({1e9 * t / (a.batch * size * size * 9 * w * w):.1f})"
                             for w, t in zip(widths, times))
            print(f"{runtime:<6}{size:>3}x{size:<3} {cells}", flush=True)
    for runtime in a.runtimes:
        print(f"{runtime}: cdc.multiple=0 measures {measured_multiple(runtime)}", flush=True)


if __name__ == "__main__":
    main()
