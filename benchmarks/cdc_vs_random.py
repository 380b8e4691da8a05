"""CDC channel selection against random selection at the same widths, on digits.

    python benchmarks/cdc_vs_random.py [--backend torch] [--seeds 3]

One baseline ResNet-20 is trained (the digits config of ``methods.cdc_prune``);
CDC keeps the highest-scoring channels of every mask at about half the MACs;
random selection keeps the same number of channels per mask, drawn uniformly
(one draw per seed). Every pruned network gets the same fine-tuning. Prints
validation and test accuracy before and after fine-tuning (test accuracy is
reported, never used for any choice).
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import numpy as np

from backends.base import get_backend
from compress_core import cdc
from compress_core.config import load_config
from methods import cdc_prune, common
from methods.cdc_distill import coarse_groups_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("compress").setLevel(logging.WARNING)
    cfg = load_config(f"{common.HYPERPARAMS}/cdc_resnet20_digits.py")
    backend = get_backend(args.backend)
    work = tempfile.mkdtemp(prefix="cdc-bench-")
    ctx = common.Context(cfg, backend, work, common.load_data(cfg))
    teacher = cdc_prune.get_teacher(ctx)
    points = cdc.mask_points(teacher.graph)
    groups = coarse_groups_for(ctx, teacher)
    scores = cdc_prune.score_channels(ctx, teacher, points, groups)
    counts = cdc_prune.plan_counts(ctx, teacher.graph, points)
    candidates = {"cdc (gsd)": cdc.select_top(scores, counts)}
    for s in range(args.seeds):
        rng = np.random.default_rng(100 + s)
        candidates[f"random #{s + 1}"] = [np.sort(rng.choice(pt.width, k, replace=False))
                                          for pt, k in zip(points, counts)]
    base = {split: common.evaluate(backend, teacher, getattr(ctx.splits, split))["accuracy"] for split in ("val", "test")}
    print(f"{args.backend}, resnet20 on digits, fine-tuning {cfg.finetune.epochs} epochs per network")
    print(f"{'selection':<14}{'MAC %':>7}{'val pre':>9}{'test pre':>9}{'val ft':>8}{'test ft':>8}")
    print(f"{'unpruned':<14}{100.0:>7.1f}{base['val']:>9.2f}{base['test']:>9.2f}{base['val']:>8.2f}{base['test']:>8.2f}")
    weights = backend.get_weights(teacher)
    for i, (name, keeps) in enumerate(candidates.items()):
        graph, params = cdc.apply(teacher.graph, weights, points, keeps)
        model = backend.build(graph, params)
        pre = [common.evaluate(backend, model, getattr(ctx.splits, s))["accuracy"] for s in ("val", "test")]
        common.fit(ctx, model, cfg.finetune, f"finetune_{i}")
        post = [common.evaluate(backend, model, getattr(ctx.splits, s))["accuracy"] for s in ("val", "test")]
        frac = 100.0 * common.cost(model)["macs"] / common.cost(teacher)["macs"]
        print(f"{name:<14}{frac:>7.1f}{pre[0]:>9.2f}{pre[1]:>9.2f}{post[0]:>8.2f}{post[1]:>8.2f}")


if __name__ == "__main__":
    main()
