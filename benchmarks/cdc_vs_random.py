"""CDC channel selection against random selection at the same widths, on digits.

    python benchmarks/cdc_vs_random.py [--backend torch] [--seeds 3] [--splits 1] [--first-split 0]
                                       [--mac-target 0.5] [--set finetune.lr=0.005 ...]

Per data split (``--splits``: config seeds ``--first-split``, +1, ...; each its own train/val/test
split, baseline and coarse groups): one baseline ResNet-20 is trained (the digits
config of ``methods.cdc_prune``); CDC keeps the highest-scoring channels of every
mask at the MAC target; random selection keeps the same number of channels per
mask, drawn uniformly (``--seeds`` draws). Every pruned network gets the same
fine-tuning; accuracy is shown after 0, 1 and the config's number of epochs
(validation / test; test accuracy is reported, never used for any choice). With
several splits, the last table pairs CDC with the mean of the random draws of the
same split (the test splits have ~270 images each, so one split cannot separate
methods that differ by a point).
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import numpy as np

from backends.base import get_backend
from compress_core.data.config import load_config
from compress_core.recipes import cdc
from methods import cdc_prune, common
from methods.cdc_distill import coarse_groups_for


def one_split(backend, seed: int, draws: int, mac_target: float, overrides: list[str]
              ) -> tuple[dict, list, float, list]:
    """Accuracies ``{selection: [draw][budget][val, test]}``, the budgets, the MAC share, the baseline."""
    cfg = load_config(f"{common.HYPERPARAMS}/cdc_resnet20_digits.py",
                      [f"cdc.mac_target={mac_target}", f"seed={seed}", *overrides])
    work = tempfile.mkdtemp(prefix="cdc-bench-")
    ctx = common.Context(cfg, backend, work, common.load_data(cfg))
    teacher = common.start_model(ctx)
    points = cdc.mask_points(teacher.graph)
    groups = coarse_groups_for(ctx, teacher)
    scores = cdc_prune.score_channels(ctx, teacher, points, groups)
    counts = cdc_prune.plan_counts(ctx, teacher.graph, points)
    candidates = {"cdc (gsd)": cdc.select_top(points, scores, counts)}
    for s in range(draws):
        rng = np.random.default_rng([100 + s, seed])
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
        results.setdefault(name.split(" #")[0], []).append(row)
    frac = 100.0 * cdc.macs_after(teacher.graph, points, counts) / common.cost(teacher)["macs"]
    base = [common.evaluate(backend, teacher, getattr(ctx.splits, s))["accuracy"] for s in ("val", "test")]
    return results, budgets, frac, base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch")
    p.add_argument("--seeds", type=int, default=3, help="random draws per split")
    p.add_argument("--splits", type=int, default=1, help="number of data splits")
    p.add_argument("--first-split", type=int, default=0,
                   help="config seed of the first split (fresh splits confirm a choice made on others)")
    p.add_argument("--mac-target", type=float, default=0.5, help="fraction of the MACs kept (default 0.5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. finetune.lr=0.005 (repeatable)")
    args = p.parse_args()
    logging.getLogger("compress").setLevel(logging.WARNING)
    backend = get_backend(args.backend)
    paired = []  # per split: [budget][val, test] of CDC minus the mean of the random draws
    levels = []  # per split: unpruned, CDC and mean random [val, test] after the longest fine-tune
    for seed in range(args.first_split, args.first_split + args.splits):
        results, budgets, frac, base = one_split(backend, seed, args.seeds, args.mac_target, args.overrides)
        print(f"{args.backend}, resnet20 on digits, split {seed}, pruned to {frac:.1f}% of the MACs; "
              f"unpruned: val {base[0]:.2f}, test {base[1]:.2f}")
        print(f"{'selection':<12}" + "".join(f"{f'ft {e} ep val/test':>22}" for e in budgets))
        means = {}
        for name, rows in results.items():
            means[name] = np.mean(np.array(rows), axis=0)
            print(f"{name + (f' x{len(rows)}' if len(rows) > 1 else ''):<12}"
                  + "".join(f"{v:>14.2f} /{t:>6.2f}" for v, t in means[name]))
        paired.append(means["cdc (gsd)"] - means["random"])
        levels.append([base, means["cdc (gsd)"][-1], means["random"][-1]])
        print(flush=True)
    if args.splits > 1:
        d = np.array(paired)  # [split, budget, val/test]
        print(f"CDC minus random (mean of {args.seeds} draws), {args.splits} splits (seeds {args.first_split}-"
              f"{args.first_split + args.splits - 1}): mean +- std over splits (standard error), splits where CDC "
              "is ahead")
        sd = d.std(axis=0, ddof=1)
        for j, e in enumerate(budgets):
            cells = [f"{name} {d[:, j, k].mean():+6.2f} +- {sd[j, k]:5.2f} ({sd[j, k] / np.sqrt(args.splits):4.2f}) "
                     f"({int((d[:, j, k] > 0).sum())}/{args.splits})" for k, name in enumerate(("val", "test"))]
            print(f"ft {e:>2} ep: " + "   ".join(cells))
        m = np.mean(np.array(levels), axis=0)
        print(f"mean over splits after {budgets[-1]} epochs, val / test: unpruned {m[0, 0]:.2f} / {m[0, 1]:.2f}, "
              f"CDC {m[1, 0]:.2f} / {m[1, 1]:.2f}, random {m[2, 0]:.2f} / {m[2, 1]:.2f}")


def _with_epochs(tcfg, epochs):
    c = tcfg.copy_and_resolve_references()
    c.unlock()
    c.epochs = epochs
    return c


if __name__ == "__main__":
    main()
