"""The speed judge: does a compressed network run faster in proportion to the MACs it saves?

One run times, per architecture and MAC target, the original network and the compressed
network of every method, on every runtime we ship, and prints the ratio

    real speedup / MAC reduction = (original ms / compressed ms) / (original MACs / compressed MACs)

(1.0: every saved MAC is saved time). Random weights (which channels a criterion keeps does
not change the time; the *shape* of its network does), each method's own network form:

* ``CDC``: the reference form (``cdc.stream=select``, any widths: every block reads its share
  of the whole residual stream through a channel selection), the stream cut as one channel group
  (``cdc.stream=group``, any widths) and that with widths rounded (``cdc.multiple``: ``--multiple``, 8
  by default, and twice it, 16, the block of AVX-512 kernels: ``benchmarks/conv_widths.py``; the run
  prints the multiple a CDC job measures on each runtime, ``cdc.multiple=0``, the default);
  the depth plan (``cdc.plan=depth``: residual blocks removed whole, evenly over the stages; no row
  for a network without a residual block with an identity shortcut, VGG-16);
  and the latency plan (``cdc.plan=latency``, widths rounded to ``--multiple``) searched on each
  runtime at the throughput batch (``CDC lat@torch``, ``@tf``, ``@ort``: each timed on every runtime,
  so the table shows what a plan tuned for one runtime gives on the others);
* ``Hinge``: the block-internal channels only (the residual stream stays whole, as the
  sparsity-inducing matrices sit inside the blocks; every conv of a plain network);
* ``DCFF``: the compact network of one uniform rate bisected to the target (residual-tied
  convs share their keep set, so the stream is cut);
* ``L1``: the channel-group layer's L1-norm baseline (``compress_core.surgery.l1_prune``),
  widths rounded like the fast plan;
* ``Tucker-2``: every 3x3 conv as 1x1-kxk-1x1 at one rank fraction bisected to the target
  (the ranks VBMF picks differ per layer; the structure is the same);
* ``KSE``: the shared-kernel form at G=4 (its MACs are what G gives, not the target, so it is timed
  at the first target only);
* ``TP L1``: Torch-Pruning's L1 magnitude pruning at one uniform ratio bisected to the same
  MAC target, ``round_to`` the same multiple (benchmark-only dependency; its row is left out
  when it is not installed). TP cannot trace the zoo ResNet-56's option-A shortcut (a channel
  selection), so there the convs writing the residual stream are declared ignored: TP cuts the
  block-internal channels, as the Hinge form does.

Runtimes: ``torch`` (the backend's ``forward``: straight-line fx code, BatchNorm folded,
channels-last), ``tf`` (the TF backend's session) and ``ort`` (ONNX Runtime on the file of
``compress_core.ir.onnx_export``). Per runtime and batch every network is timed in turns
(``--repeats`` turns; the ms columns are medians) so machine load weighs on all alike, the
original run again between every two networks; the speedup in the ratio is paired: the median
over the turns of the mean of the original's two times around a network over the network's, so
a change of load between turns, or between networks of one turn, weighs on both sides.

    python benchmarks/speed.py --no-latency                     # every form (about 45 minutes)
    python benchmarks/speed.py --targets 0.5                    # with the latency searches (over an hour)
    python benchmarks/speed.py --archs resnet56 --runtimes ort --repeats 5   # one quick cell
    python benchmarks/speed.py --no-latency --repeats 5 \\
        --networks "CDC select" "CDC group x8" "CDC group x16" "CDC depth" "TP L1 x8"  # the README's tables
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from compress_core.ir import flops, zoo
from compress_core.ir.graph import _pair
from compress_core.ir.init import init_params
from compress_core.surgery import channel_groups, l1_prune
from compress_core.surgery.plan import bisect_ratio

ARCHS = {"resnet56": (3, 32, 32), "vgg16": (3, 32, 32), "resnet50": (3, 224, 224), "mobilenetv2": (3, 224, 224)}
BATCH = {(3, 32, 32): 64, (3, 224, 224): 16}  # the throughput batch per input size
TORCHVISION = {"resnet50": "resnet50", "mobilenetv2": "mobilenet_v2"}
KSE = "KSE G=4"


def original(arch: str, shape):
    """The network at random weights: CIFAR nets from the zoo; ImageNet ones imported from torchvision
    (what a user brings), so Torch-Pruning prunes the very same module."""
    if arch in TORCHVISION:
        import torch

        from backends.torch import from_module
        from backends.torch.compat import torchvision_models
        torch.manual_seed(0)
        module = getattr(torchvision_models(), TORCHVISION[arch])(weights=None).eval()
        return from_module(module, shape)
    g = zoo.build(arch, 10 if shape[1] == 32 else 1000, shape)
    return g, init_params(g, 0)


def cdc_form(g, p, target: float, stream: str, multiple: int):
    from compress_core.recipes import cdc
    points = cdc.mask_points(g)
    ratio = cdc.ratio_for_macs(g, points, target, 1, multiple, stream)
    counts = cdc.uniform_counts(points, ratio, 1, multiple)
    keeps = cdc.select_top(points, [np.zeros(pt.width) for pt in points], counts, stream)
    return cdc.apply(g, p, points, keeps, stream)


def depth_form(g, p, target: float):
    """CDC's depth plan (``cdc.plan=depth``): residual blocks removed whole, evenly over the stages."""
    from compress_core.recipes import cdc
    points = cdc.mask_points(g)
    counts, _ = cdc.depth_counts(g, points, [np.zeros(pt.width) for pt in points], target)
    return cdc.network(g, p, points, counts, "group")


def latency_form(g, p, target: float, multiple: int, runtime: str, batch: int, repeats: int):
    """CDC's latency plan (``cdc.plan=latency``): widths rounded to ``multiple`` chosen by timing on
    ``runtime`` at ``batch``, the stream cut as a group."""
    from compress_core.recipes import cdc
    from methods.report import networks_ms
    points = cdc.mask_points(g)
    found = cdc.latency_counts(g, points, target, lambda plans: networks_ms(
        runtime, [cdc.network(g, p, points, k, "group") for k in plans], batch, repeats), 1, multiple, "group")
    return cdc.network(g, p, points, found.counts, "group")


def hinge_form(g, p, target: float):
    inner = [gr.id for gr in channel_groups(g) if gr.cuttable and len(gr.producers) == 1
             and not any(m.kind == "select_out" for m in gr.members)]
    return l1_prune(g, p, only=inner, mac_target=target)


def dcff_form(g, p, target: float):
    from compress_core.recipes import dcff

    def compact(rate):
        graph, groups = dcff.training_graph(g, [rate])
        return dcff.export(graph, dcff.init_params(graph, groups))

    base = flops.count_macs(g)
    rate = bisect_ratio(lambda r: flops.count_macs(compact(min(r, 0.99))[0]), target * base, "DCFF target", 1e-3)
    return compact(min(rate, 0.99))


def tucker2_form(g, p, target: float):
    from compress_core.recipes import decompose
    convs = [n for n in g.of_op("conv") if max(_pair(n.attrs["k"])) > 1
             and n.attrs["groups"] == 1 and min(n.attrs["out"], g.in_channels(n.name)) >= 8]

    def ranks(f):
        return {n.name: (max(1, round(f * n.attrs["out"])), max(1, round(f * g.in_channels(n.name)))) for n in convs}

    def shaped(f):  # the structure only: the cost is the graph's, weights are filled in once at the end
        reps = [decompose.tucker2_conv(g, p, n.name, r, n_iter_max=1) for n in convs for r in [ranks(f)[n.name]]]
        return decompose.apply(g, p, reps)

    base = flops.count_macs(g)
    f = 1.0 - bisect_ratio(lambda r: flops.count_macs(shaped(1.0 - r)[0]), target * base, "Tucker-2 target", 2e-2)
    return shaped(f)


def kse_form(g, p):
    import re

    from compress_core.criteria.kse import kse_indicator
    from compress_core.recipes import kse
    codes = {n.name: kse.cluster_layer(p[f"{n.name}.weight"], kse_indicator(p[f"{n.name}.weight"], 4).num_centroids)
             for n in g.of_op("conv") if re.fullmatch(r"layer\d+\.\d+\.conv\d", n.name)}
    dense, dp, dcodes = kse.compress(g, p, codes)
    return kse.shared_form(dense, dp, dcodes)


def tp_form(arch: str, g, p, shape, target: float, multiple: int):
    # a sibling script (benchmarks/ is on the path)
    from import_prune_latency import torch_pruning_l1

    from backends.torch import from_module
    from backends.torch.export import to_module

    if arch in TORCHVISION:
        import torch

        from backends.torch.compat import torchvision_models

        def make():
            torch.manual_seed(0)
            return getattr(torchvision_models(), TORCHVISION[arch])(weights=None).eval()
        ignored = ()
    else:
        def make():
            return to_module(g, p)
        # TP cannot trace a channel selection (the option-A shortcut): the convs writing a stream a
        # selection reads keep their outputs, as a TP user would have to declare
        ignored = [m.node for gr in channel_groups(g) if any(m.kind.startswith("select") for m in gr.members)
                   for m in gr.of_kind("out")]
    return from_module(torch_pruning_l1(make, shape, target, multiple, ignored), shape)


def builders(arch: str, g, p, shape, target: float, multiple: int, tp: bool, kse: bool = True,
             latency: tuple[str, ...] = (), search_repeats: int = 5) -> dict:
    """``{label: a function building (graph, params)}`` of every compressed form of :func:`networks` (nothing
    is built until a function is called: ``g`` and ``p`` may be None to list the labels)."""
    out = {
        "CDC select": lambda: cdc_form(g, p, target, "select", 1),
        "CDC group": lambda: cdc_form(g, p, target, "group", 1),
        f"CDC group x{multiple}": lambda: cdc_form(g, p, target, "group", multiple),
        f"CDC group x{2 * multiple}": lambda: cdc_form(g, p, target, "group", 2 * multiple),
        "CDC depth": lambda: depth_form(g, p, target),
        **{f"CDC lat@{rt}": lambda rt=rt: latency_form(g, p, target, multiple, rt, BATCH[shape], search_repeats)
           for rt in latency},
        "Hinge": lambda: hinge_form(g, p, target),
        "DCFF": lambda: dcff_form(g, p, target),
        f"L1 x{multiple}": lambda: l1_prune(g, p, mac_target=target, multiple=multiple),
        "Tucker-2": lambda: tucker2_form(g, p, target),
    }
    if arch in ("resnet56",) and kse:
        out[KSE] = lambda: kse_form(g, p)
    if tp:
        out[f"TP L1 x{multiple}"] = lambda: tp_form(arch, g, p, shape, target, multiple)
    return out


def networks(arch: str, shape, target: float, multiple: int, tp: bool, kse: bool = True,
             latency: tuple[str, ...] = (), search_repeats: int = 5, only=()) -> dict:
    """``{label: (graph, params)}`` for one architecture and MAC target (``kse``: with the KSE row, whose
    MACs do not depend on the target; ``latency``: the runtimes a CDC latency plan is searched on, at the
    throughput batch, ``search_repeats`` timed passes per network; ``only``: these labels, none: all)."""
    g, p = original(arch, shape)
    out = {"original": (g, p)}
    for label, build in builders(arch, g, p, shape, target, multiple, tp, kse, latency, search_repeats).items():
        if only and label not in only:
            continue
        start = time.perf_counter()
        try:
            out[label] = build()
        except Exception as e:  # noqa: BLE001 - a form that does not apply to this architecture is a row left out, said
            print(f"  ({arch}: {label} left out: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        print(f"  ({arch}: {label} built in {time.perf_counter() - start:.1f} s)", flush=True)
    return out


def conv_calls(graph, batch: int) -> tuple[list[str], list]:
    """Every conv of ``graph`` as a call on an input of its shape in torch (channels-last, as the backend
    runs it): ``(names, calls)``."""
    import torch
    import torch.nn.functional as F
    shapes = graph.shapes()
    calls, names = [], []
    for n in graph.of_op("conv"):
        a, cin = n.attrs, graph.in_channels(n.name)
        x = torch.randn(batch, *shapes[n.inputs[0]]).contiguous(memory_format=torch.channels_last)
        w = torch.randn(a["out"], cin // a["groups"], *_pair(a["k"])).contiguous(memory_format=torch.channels_last)
        pad = a["pad"] if len(_pair(a["pad"])) == 2 else 0

        def call(x=x, w=w, a=a, pad=pad):
            with torch.no_grad():
                F.conv2d(x, w, None, a["stride"], pad, a["dilation"], a["groups"])
        calls.append(call)
        names.append(n.name)
    return names, calls


def _conv_of(graph, name: str) -> str | None:
    """The conv an ONNX Runtime kernel named ``name`` computes: ORT names a conv it fused with the
    BatchNorm, ReLU or residual add after it by the last fused node (``_nchwc`` appended in its blocked
    layout); walked back through those to the conv (None: not a conv of ``graph``)."""
    name = name.removesuffix("_nchwc")
    n = graph[name] if name in graph else None  # noqa: SIM401 - a Graph has no get()
    while n is not None and n.op not in ("conv", "select"):
        if n.op in ("bn", "relu"):
            n = graph[n.inputs[0]]
        elif n.op == "add":  # the operand the conv wrote (through its BatchNorm), not the stream
            n = next((graph[i] for i in n.inputs if graph[i].op in ("bn", "conv")), None)
        else:
            return None
    return None if n is None else n.name


def ort_layer_ms(nets: list, batch: int, repeats: int) -> list[dict[str, float]]:
    """Median kernel time (ms) of every node of each ``(graph, params)`` in ONNX Runtime, from its profiler,
    inside the whole network (a conv timed alone would pay the layout reorders the network avoids); the
    networks run in turns. Convs (fused or not) are keyed by the graph's conv name, other kernels by op."""
    import json
    import os
    import tempfile

    from methods.report import ort_sessions
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        def profiled(opts, k):
            opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, str(k))
        sessions = ort_sessions(nets, configure=profiled)
        xs = [np.random.default_rng(0).normal(size=(batch, *g.input_shape)).astype(np.float32) for g, _ in nets]
        for _ in range(repeats + 1):  # the first run of each is warm-up
            for s, x in zip(sessions, xs):
                s.run(None, {"input": x})
        for s, (g, _) in zip(sessions, nets):
            with open(s.end_profiling()) as f:
                events = json.load(f)
            runs: dict[str, list[float]] = {}
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    name, op = e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?")
                    key = (_conv_of(g, name) if op in ("Conv", "FusedConv") else None) or f"({op})"
                    runs.setdefault(key, []).append(e["dur"] / 1e3)
            # a key's runs per pass (several kernels of one op): summed per pass, median over passes
            out.append({k: float(np.median(np.reshape(v, (repeats + 1, -1))[1:].sum(1))) for k, v in runs.items()})
    return out


def per_layer(arch: str, nets: dict, label: str, batch: int, repeats: int, runtime: str = "torch") -> None:
    """Where ``label``'s time goes against the original's, conv by conv (the ten biggest shortfalls: time
    spent beyond what the layer's MAC reduction would give). torch: the convs of both networks alone, timed
    in one set of turns (timed apart, the same unchanged conv measured up to 1.8x apart on this machine);
    ort: every kernel inside the two whole networks (:func:`ort_layer_ms`), the kernels that are not convs
    (layout reorders, unfused adds) summed by op."""
    from methods.report import time_in_turns
    g0, g1 = nets["original"][0], nets[label][0]
    m0s = {c.name: c.macs for c in flops.layer_costs(g0)}
    m1s = {c.name: c.macs for c in flops.layer_costs(g1)}
    if runtime == "ort":
        base, ours = ort_layer_ms([nets["original"], nets[label]], batch, repeats)
        what = "every kernel in the network"
    else:
        n0, c0 = conv_calls(g0, batch)
        n1, c1 = conv_calls(g1, batch)
        times = time_in_turns(c0 + c1, repeats)
        base, ours = dict(zip(n0, times[:len(n0)])), dict(zip(n1, times[len(n0):]))
        what = "convs alone"
    rows = []
    for k, t in ours.items():
        t0, m, m0 = base.get(k), m1s.get(k, 0), m0s.get(k, 0)
        expected = t0 * m / m0 if t0 is not None and m0 else t0
        rows.append((t - expected if expected is not None else t, k, t0, m0, t, m))
    total0, total = sum(base.values()), sum(ours.values())
    conv0 = sum(m0s[k] for k in base if k in m0s)
    conv1 = sum(m1s[k] for k in ours if k in m1s)
    print(f"\n{arch} {label} in {runtime}, batch {batch}: {what} {total0:.2f} -> {total:.2f} ms "
          f"(x{total0 / total:.2f} faster for x{conv0 / max(conv1, 1):.2f} fewer conv MACs); the ten biggest shortfalls:")
    print(f"{'layer':<28}{'ms':>8}{'MMACs':>8}{'-> ms':>8}{'MMACs':>8}{'speedup':>9}{'MAC red.':>9}")
    for _, k, t0, m0, t, m in sorted(rows, reverse=True)[:10]:
        before = f"{t0:>8.3f}{m0 / 1e6:>8.2f}" if t0 is not None else f"{'':>16}"
        ratio = f"{t0 / t:>9.2f}{m0 / m:>9.2f}" if t0 is not None and m else ""
        print(f"{k:<28}{before}{t:>8.3f}{m / 1e6:>8.2f}{ratio}")


def bracketed(calls: list, keys: list[str], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Time ``calls`` (labelled ``keys``) in turns; ``({label: median ms}, {label: paired speedup})``.
    With an ``"original"`` among them it runs between every two networks (original, A, original, B, ...,
    original: each turn), and a network's speedup is the median over the turns of the mean of the two
    original times around it over its own: a change of machine load within a turn (20% between
    neighbours on a shared VM) weighs on both sides of each pair. Without one: no speedups."""
    from methods.report import samples_in_turns
    if "original" not in keys:
        samples = samples_in_turns(calls, repeats)
        return {k: float(np.median(t)) for k, t in zip(keys, samples)}, {}
    base, others = calls[keys.index("original")], [k for k in keys if k != "original"]
    order = [base]
    for k, call in zip(keys, calls):
        if k != "original":
            order += [call, base]
    samples = np.asarray(samples_in_turns(order, repeats))  # (2 * len(others) + 1, repeats)
    around = (samples[0:-1:2] + samples[2::2]) / 2  # the original's times before and after each network
    ms = {"original": float(np.median(samples[0::2]))}
    ms.update((k, float(np.median(t))) for k, t in zip(others, samples[1::2]))
    pairs = {"original": 1.0}
    pairs.update((k, float(np.median(o / t))) for k, o, t in zip(others, around, samples[1::2]))
    return ms, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--runtimes", nargs="+", default=["torch", "tf", "ort"], choices=["torch", "tf", "ort"])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--multiple", type=int, default=8,
                    help="width multiple of the fast plans (and TP's round_to); CDC is also timed at twice it")
    ap.add_argument("--no-tp", action="store_true", help="leave out the Torch-Pruning reference rows")
    ap.add_argument("--no-latency", action="store_true",
                    help="leave out the CDC latency plans (one searched on each runtime: minutes per network)")
    ap.add_argument("--search-repeats", type=int, default=5, help="timed passes per network in a latency search")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    ap.add_argument("--ort-spinning", action="store_true",
                    help="ONNX Runtime's default thread spinning (off here: sessions timed in turns slow each other "
                         "with it, methods.report.ort_sessions)")
    ap.add_argument("--layers", nargs="*", default=[], metavar="NETWORK",
                    help="also time the convs of these networks (labels as printed) one by one against the original's "
                         "(in torch and in ONNX Runtime, those of --runtimes)")
    ap.add_argument("--networks", nargs="*", default=[], metavar="NETWORK",
                    help="time only these networks (labels as printed) beside the original (default: all)")
    a = ap.parse_args()
    latency = () if a.no_latency else tuple(a.runtimes)
    known = {k for arch in a.archs for k in builders(arch, None, None, ARCHS[arch], 0.5, a.multiple, not a.no_tp,
                                                      latency=latency)}
    for flag, labels in (("--layers", a.layers), ("--networks", a.networks)):
        unknown = [label for label in labels if label not in known]
        if unknown:  # checked before hours of timing
            ap.error(f"{flag}: no network labelled {unknown[0]!r} in this run (labels: {', '.join(sorted(known))})")
    from methods.kernel_widths import measured_multiple
    from methods.report import forward_calls
    print("the width multiple a CDC job measures here (cdc.multiple=0, the default): "
          + ", ".join(f"{r} {measured_multiple(r)}" for r in a.runtimes), flush=True)
    print(f"real speedup / MAC reduction per runtime; median of {a.repeats}, networks timed in turns; "
          f"batch 1 and the throughput batch ({', '.join(f'{s[1]}x{s[2]}: {b}' for s, b in BATCH.items())})")
    head = f"{'arch':<12}{'target':>7}  {'network':<15}{'MACs %':>7}"
    for r in a.runtimes:
        head += f"{r + ' ms@1':>12}{'ms@N':>9}{'ratio':>7}"
    lines = [head, "-" * len(head)]
    for arch in a.archs:
        shape = ARCHS[arch]
        for target in a.targets:
            # KSE's shared form (seconds per batch, see the README) is timed at the first target only
            nets = networks(arch, shape, target, a.multiple, not a.no_tp, kse=target == a.targets[0],
                            latency=latency, search_repeats=a.search_repeats,
                            only=set(a.networks) | set(a.layers) if a.networks else set())
            macs = {k: flops.count_macs(g) for k, (g, _) in nets.items()}
            ms, speedup = {}, {}
            for runtime in a.runtimes:
                calls = dict(zip(nets, forward_calls(runtime, list(nets.values()), a.threads,
                                                     spinning=a.ort_spinning)))
                # a network hundreds of times slower than the rest (KSE's shared form: seconds and gigabytes
                # per batch) is timed after them, not in their turns, where it would evict their caches
                turns = [([k for k in nets if k != KSE], a.repeats), ([k for k in nets if k == KSE], 3)]
                for b in (1, BATCH[shape]):
                    x = np.random.default_rng(0).normal(size=(b, *shape)).astype(np.float32)
                    ms[runtime, b], speedup[runtime, b] = {}, {}
                    for keys, repeats in turns:
                        times, pairs = bracketed([lambda c=calls[k], x=x: c(x) for k in keys], keys, repeats)
                        ms[runtime, b].update(times)
                        speedup[runtime, b].update(pairs)
                    for k in nets:
                        speedup[runtime, b].setdefault(k, ms[runtime, b]["original"] / ms[runtime, b][k])
                del calls
            for k in nets:
                row = f"{arch:<12}{target:>7.2f}  {k:<15}{100 * macs[k] / macs['original']:>7.1f}"
                for r in a.runtimes:
                    one, many = ms[r, 1][k], ms[r, BATCH[shape]][k]
                    ratio = speedup[r, BATCH[shape]][k] / (macs["original"] / macs[k])
                    row += f"{one:>12.2f}{many:>9.2f}{ratio:>7.2f}"
                lines.append(row)
                print(row, flush=True)
            for label in a.layers:
                for runtime in (r for r in a.runtimes if r in ("torch", "ort")):
                    if label in nets:
                        per_layer(arch, nets, label, BATCH[shape], a.repeats, runtime)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
