"""Hinge vs L1-norm filter pruning on digits (ResNet-20): accuracy against MACs at two targets.

``python benchmarks/hinge_accuracy_macs.py [--backend torch] [--targets 0.5 0.3] [--workdir runs/bench_hinge]``

One baseline is trained (hyperparams/hinge_resnet20_digits.py), then for every target:
Hinge (search, threshold search, fine-tuning with distillation) and L1-norm filter
pruning fine-tuned with the same budget and loss. On ResNet-20 Hinge *decomposes*
every block conv (the block outputs feed residual additions), so there are no
"same widths" to prune: the L1 network prunes the block-internal channels (``conv1``
filters, the ``conv2`` inputs) by the smallest-L1-norm rule with one uniform ratio,
chosen so its MACs match Hinge's. Prints one table; MACs: one multiply-add = one MAC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from compress_core.ir import checkpoint, flops
from compress_core.surgery import channel_groups, group_of, l1_prune
from compress_core.surgery.structure import residual_blocks
from methods import common
from methods import hinge as hinge_method

CONFIG = os.path.join(common.HYPERPARAMS, "hinge_resnet20_digits.py")


def matched_l1(graph, params, macs: int):
    """L1-norm pruning of every block's inner channels (the first conv of each residual branch) to at
    most ``macs`` MACs (one uniform ratio, the shared planner's bisection)."""
    groups = channel_groups(graph)
    inner = [group_of(groups, b.branch[0]).id for b in residual_blocks(graph)]
    return l1_prune(graph, params, only=inner, mac_target=macs / flops.count_macs(graph))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    ap.add_argument("--workdir", default="runs/bench_hinge")
    a = ap.parse_args(argv)
    base_dir = os.path.join(a.workdir, f"{a.backend}_t{a.targets[0]}")
    rows = []
    for i, target in enumerate(a.targets):
        work = os.path.join(a.workdir, f"{a.backend}_t{target}")
        extra = [] if i == 0 else [f"--config.model.weights={os.path.join(base_dir, 'baseline', 'best.safetensors')}"]
        argv_h = ["--backend", a.backend, "--config", CONFIG, "--workdir", work, f"--config.hinge.ratio={target}",
                  *extra]
        if hinge_method.cli(argv_h) != 0:
            return 1
        with open(os.path.join(work, "metrics.json")) as f:
            m = json.load(f)
        base, hinge_row = m["rows"][0], m["rows"][2]
        if i == 0:
            rows.append(("unpruned", base))
        rows.append((f"Hinge {target}", hinge_row))
        # L1-norm pruning at Hinge's MACs, same fine-tuning budget and loss
        ctx = common.prepare(["--backend", a.backend, "--config", CONFIG, "--workdir", work + "_l1",
                              f"--config.hinge.ratio={target}"], "L1 baseline", CONFIG)
        teacher = common.load_model(ctx.backend, os.path.join(base_dir, "baseline", "best.safetensors"), ctx.splits)
        g, p = matched_l1(teacher.graph, ctx.backend.get_weights(teacher), hinge_row["macs"])
        student = ctx.backend.build(g, p)
        hinge_method.finetune(ctx, student, teacher)
        checkpoint.save_checkpoint(ctx.path("l1.safetensors"), g, ctx.backend.get_weights(student))
        rows.append((f"L1-norm {target}", common.summary_row(ctx, "l1", student)))
    ref = rows[0][1]
    print(f"\nbackend {a.backend}; digits, ResNet-20; L1-norm MACs at most Hinge's (Hinge decomposes here)")
    print(f"{'model':<16}{'MACs':>10}{'MAC ratio':>11}{'params':>10}{'val %':>8}{'test %':>8}")
    for name, r in rows:
        print(f"{name:<16}{r['macs'] / 1e6:>9.3f}M{r['macs'] / ref['macs']:>11.4f}{r['params'] / 1e3:>9.1f}k"
              f"{r['val_accuracy']:>8.2f}{r['test_accuracy']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
