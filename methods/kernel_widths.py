"""Which channel widths a runtime's convolution kernels like, measured on this machine.

A CPU conv kernel computes channels in blocks of its vector width (16 floats with AVX-512, 8 with AVX2, 4 with
NEON), so a width between two multiples of the block costs about what the next multiple costs: a 24-wide 3x3 conv
took as long as a 32-wide one in torch on an AVX-512 Xeon. The fast plans round widths to a multiple
(``cdc.multiple``); ``cdc.multiple=0`` (the default) asks :func:`measured_multiple` for it, on the backend the job
runs on.
"""

from __future__ import annotations

import numpy as np

#: the multiples tried, widest first, each with the share at which it is the kernels' step: a width half-way
#: between two multiples must cost at least this share of the next multiple's time, averaged over the two pairs
#: timed (a time proportional to the MACs gives 0.63, one proportional to the width 0.79; a kernel that steps at
#: 16 gave 0.88-1.14 for 16 and 0.64-0.78 for 32 over twelve runs on the build machine). 16 is taken on weaker
#: evidence than 32: a multiple of 16 is one of AVX2's 8 too, so a wrong 16 costs only coarser widths, where 32 is
#: wider than any CPU's vector
STEP_SHARE = {32: 0.9, 16: 0.8}
CANDIDATES = tuple(STEP_SHARE)
#: the multiple when no candidate's step is measured: an 8-float vector unit (AVX2), and a multiple of NEON's 4
FALLBACK = 8


def one_conv(width: int, size: int):
    """A ``width -> width`` 3x3 conv (pad 1) on ``size x size`` maps as a one-node graph."""
    from compress_core.ir.graph import Graph, Node, conv_node
    return Graph(f"conv{width}", (width, size, size), [Node("input", "input"), conv_node("conv", "input", width)],
                 "conv")


def conv_ms(runtime: str, widths, size: int = 32, batch: int = 32, repeats: int = 9, backend=None,
            reduce=min) -> list[float]:
    """Time (ms) of one ``w -> w`` 3x3 conv for each width on ``runtime``, all widths timed in turns, ``reduce``
    of the ``repeats`` turns (``backend``: as :func:`methods.report.forward_calls`). By default the fastest, not
    the median: the load of a shared machine only ever adds time, and a step decided from medians flipped
    between runs there."""
    from compress_core.ir.init import init_params
    from methods.report import networks_ms
    nets = [(g, init_params(g, 0)) for w in widths for g in [one_conv(w, size)]]
    return networks_ms(runtime, nets, batch, repeats, backend, reduce)


def pick_multiple(ms: dict[int, float]) -> tuple[int, dict[int, float]]:
    """The widest candidate whose step the times ``{width: ms}`` show, and each tried candidate's measured share
    (the mean over ``k = 1, 2`` of ``ms[(k + 1/2) m] / ms[(k + 1) m]``)."""
    shares = {}
    for m in CANDIDATES:
        shares[m] = float(np.mean([ms[k * m + m // 2] / ms[(k + 1) * m] for k in (1, 2)]))
        if shares[m] >= STEP_SHARE[m]:
            return m, shares
    return FALLBACK, shares


def widths_timed() -> list[int]:
    """Every width :func:`pick_multiple` reads."""
    return sorted({w for m in CANDIDATES for k in (1, 2) for w in (k * m + m // 2, (k + 1) * m)})


_MEASURED: dict[str, tuple[int, dict[int, float]]] = {}


def measured_multiple(runtime: str, backend=None, log=None) -> int:
    """The width multiple ``runtime``'s 3x3 convs step at on this machine (``backend``: the job's instance of
    that backend, None: a new one), measured once per process: a few seconds, convs of the widths
    :func:`widths_timed` on 32x32 maps at batch 32, in turns."""
    if runtime not in _MEASURED:
        widths = widths_timed()
        _MEASURED[runtime] = pick_multiple(dict(zip(widths, conv_ms(runtime, widths, backend=backend))))
        if log is not None:
            m, shares = _MEASURED[runtime]
            log.info("width multiple measured on %s: %d (a conv half-way between two multiples takes %s of the "
                     "next multiple's time; a step from %s)", runtime, m,
                     ", ".join(f"{s:.2f} at {c}" for c, s in shares.items()),
                     ", ".join(f"{t} at {c}" for c, t in STEP_SHARE.items()))
    return _MEASURED[runtime][0]
