"""Pruned torchvision models in ONNX Runtime: does the latency fall with the MACs? Against Torch-Pruning.

For MobileNetV2, MobileNetV3-Small (depthwise convs, squeeze-and-excitation), DenseNet-121
(concatenations) and EfficientNet-B0 (squeeze-and-excitation, stochastic depth), random
initialisation (nothing is downloaded):

* ours: ``backends.torch.from_module``, then the L1-norm baseline of the channel-group layer
  (``compress_core.surgery.l1_prune``: every cuttable group, one uniform ratio, bisected to the MAC
  target), written with ``compress_core.ir.onnx_export``;
* Torch-Pruning (TP, a benchmark-only dependency): ``MagnitudePruner`` with its L1 importance, one
  uniform pruning ratio bisected to the same MAC target (the classifier left alone), the pruned
  module imported and written to ONNX by the same code, so only the pruning differs;
* each also with widths rounded to multiples of 8 (``multiple=8``; TP's ``round_to=8``): ONNX
  Runtime's CPU convolutions are several times slower on other widths.

The original and both pruned networks are timed in turns in one ONNX Runtime process (median of
``--repeats``); the ratio is real speedup / MAC reduction (1: every saved MAC is saved time).

    pip install torch-pruning     # benchmark only
    python benchmarks/import_prune_latency.py [--size 224] [--batch 1 16] [--target 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

FAMILIES = ("mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0")


def _bisect(cost, limit: float, hi: float = 0.95, grid: int = 19, steps: int = 8) -> float:
    """Smallest ratio with ``cost(ratio) <= limit``, else the ratio of least cost.

    The cost is not monotone in the ratio: with ``round_to`` a group whose rounded width would
    reach zero is left whole (ResNet-56 with its stream convs ignored: 50% of the MACs at ratio
    0.5, 100% at 0.9), so a plain bisection can end on a network TP did not prune at all. A grid
    finds the first ratio under the limit, a bisection refines it against the grid point before.
    """
    ratios = [hi * (i + 1) / grid for i in range(grid)]
    costs = [cost(r) for r in ratios]
    under = [i for i, c in enumerate(costs) if c <= limit]
    if not under:
        return ratios[int(np.argmin(costs))]
    lo, hi = (ratios[under[0] - 1] if under[0] else 0.0), ratios[under[0]]
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cost(mid) <= limit else (mid, hi)
    return hi


def torch_pruning_l1(make, shape, target: float, round_to: int | None = None, ignored=()):
    """Torch-Pruning's L1 magnitude pruning at one uniform ratio reaching ``target`` of the MACs
    (widths rounded to multiples of ``round_to``, its option; the outputs of the submodules named in
    ``ignored`` left whole)."""
    import torch_pruning as tp

    example = torch.randn(1, *shape)
    base = tp.utils.count_ops_and_params(make(), example)[0]

    def pruned(ratio):
        model = make()
        keep = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
        keep += [model.get_submodule(name) for name in ignored]
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=keep, round_to=round_to)
        pruner.step()
        return model

    def cost(ratio):
        return tp.utils.count_ops_and_params(pruned(ratio), example)[0]

    return pruned(_bisect(cost, target * base)).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    a = ap.parse_args()
    from backends.torch import from_module
    from backends.torch.compat import torchvision_models
    from compress_core.ir import flops
    from compress_core.surgery import l1_prune
    from methods.report import ort_sessions, time_in_turns

    models = torchvision_models()
    shape = (3, a.size, a.size)
    print(f"ONNX Runtime (CPU), {shape[1]}x{shape[2]}, MAC target {a.target:.0%}, median of {a.repeats}, "
          f"contestants timed in turns; ratio = speedup / MAC reduction")
    print(f"{'model':<20}{'pruning':<14}{'MACs %':>8}" + "".join(f"{f'ms@{b}':>10}{'ratio':>7}" for b in a.batch))
    for name in a.families:
        def make(name=name):
            torch.manual_seed(0)
            return getattr(models, name)(weights=None).eval()

        graph, params = from_module(make(), shape)
        nets = {"original": (graph, params), "ours: L1": l1_prune(graph, params, mac_target=a.target),
                "ours: L1, x8": l1_prune(graph, params, mac_target=a.target, multiple=8)}
        try:
            nets["TP: L1"] = from_module(torch_pruning_l1(make, shape, a.target), shape)
            nets["TP: L1, x8"] = from_module(torch_pruning_l1(make, shape, a.target, 8), shape)
        except ImportError:
            print("  (torch-pruning is not installed: its rows are left out)")
        sessions = dict(zip(nets, ort_sessions(list(nets.values()))))
        macs = {k: flops.count_macs(g) for k, (g, _) in nets.items()}
        ms = {}
        for b in a.batch:
            x = np.random.default_rng(0).normal(size=(b, *shape)).astype(np.float32)
            times = time_in_turns([lambda s=s, x=x: s.run(None, {"input": x}) for s in sessions.values()], a.repeats)
            ms[b] = dict(zip(sessions, times))
        for k in nets:
            cells = ""
            for b in a.batch:
                speedup, reduction = ms[b]["original"] / ms[b][k], macs["original"] / macs[k]
                cells += f"{ms[b][k]:>10.2f}{speedup / reduction if k != 'original' else 1.0:>7.2f}"
            print(f"{name:<20}{k:<14}{100 * macs[k] / macs['original']:>8.1f}{cells}")


if __name__ == "__main__":
    main()
