"""CDC channel selection against random selection at the same widths, on digits.

    python benchmarks/cdc_vs_random.py [--backend torch] [--seeds 3]

One baseline ResNet-20 is trained (the digits config of ``methods.cdc_prune``);
CDC keeps the highest-scoring channels of every mask at about half the MACs;
random selection keeps the same number of channels per mask, drawn uniformly
(one draw per seed, the table shows the mean). Every pruned network gets the same
fine-tuning; accuracy is shown after 0, 1 and the config's number of epochs
(validation / test; test accuracy is reported, never used for any choice).
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
    p.add_argument("--mac-target", type=float, default=0.5, help="fraction of the MACs kept (default 0.5)")
    args = p.parse_args()
    logging.getLogger("compress").setLevel(logging.WARNING)
    cfg = load_config(f"{common.HYPERPARAMS}/cdc_resnet20_digits.py", [f"cdc.mac_target={args.mac_target}"])
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
    budgets = sorted({0, 1, cfg.finetune.epochs})
    weights = backend.get_weights(teacher)
    results: dict[str, list] = {}
    for i, (name, keeps) in enumerate(candidates.items()):
        graph, params = cdc.apply(teacher.graph, weights, points, keeps)
        row = []
        for epochs in budgets:
            model = backend.build(graph, params)
            if epochs:
                common.fit(ctx, model, _with_epochs(cfg.finetune, epochs), f"ft_{i}_{epochs}")
            row.append([common.evaluate(backend, model, getattr(ctx.splits, s))["accuracy"] for s in ("val", "test")])
        results[name.split(" #")[0]] = results.get(name.split(" #")[0], []) + [row]
    frac = 100.0 * cdc.macs_after(teacher.graph, points, counts) / common.cost(teacher)["macs"]
    base = [common.evaluate(backend, teacher, getattr(ctx.splits, s))["accuracy"] for s in ("val", "test")]
    print(f"{args.backend}, resnet20 on digits, pruned to {frac:.1f}% of the MACs; "
          f"unpruned: val {base[0]:.2f}, test {base[1]:.2f}")
    print(f"{'selection':<12}" + "".join(f"{f'ft {e} ep val/test':>22}" for e in budgets))
    for name, rows in results.items():
        mean = np.mean(np.array(rows), axis=0)
        print(f"{name + (f' x{len(rows)}' if len(rows) > 1 else ''):<12}"
              + "".join(f"{v:>14.2f} /{t:>6.2f}" for v, t in mean))


def _with_epochs(tcfg, epochs):
    c = tcfg.copy_and_resolve_references()
    c.unlock()
    c.epochs = epochs
    return c


if __name__ == "__main__":
    main()
