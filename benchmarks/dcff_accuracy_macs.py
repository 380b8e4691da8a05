"""DCFF accuracy vs MACs on digits (ResNet-20): DCFF against L1-norm filter pruning at the same widths.

For two rate levels, three compact networks of identical shape:

* ``dcff``: ``methods.dcff`` from scratch, default schedule (``dcff.schedule=run``);
* ``dcff paper t``: the same with the released code's schedule (``dcff.schedule=paper``);
* ``dcff from base``: ``methods.dcff`` started from the trained unpruned model
  (``model.weights``) at a tenth of the learning rate, as the L1 fine-tuning;
* ``l1``: the trained unpruned model (``methods.train``) pruned by filter L1 norm
  (tied convs: the sum of their norms) to the same widths, then fine-tuned for the
  same number of epochs at a tenth of the learning rate.

Plus the unpruned model. Everything is measured in this run, on one backend:

    python benchmarks/dcff_accuracy_macs.py [--backend torch] [--workdir runs/bench_dcff] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backends.base import get_backend
from compress_core.data import config
from compress_core.ir import checkpoint
from compress_core.recipes import dcff
from compress_core.surgery import l1_prune
from methods import common, train
from methods import dcff as dcff_method

LEVELS = {"A": "[0.5]*9+[0.25]*3", "B": "[0.75]*9+[0.5]*3"}
DIGITS = os.path.join(common.HYPERPARAMS, "resnet20_digits.py")


def l1_pruned(backend_name: str, base_ckpt: str, rates: str, workdir: str, epochs: int) -> dict:
    """Filter-L1 pruning of the trained model to DCFF's widths, fine-tuned ``epochs`` epochs."""
    full, params, _ = checkpoint.load_checkpoint(base_ckpt)
    _, groups = dcff.training_graph(full, dcff.parse_rates(rates))
    small, small_params = l1_prune(full, params, counts={g.name: g.m for g in groups})
    cfg = config.load_config(DIGITS, [f"train.epochs={epochs}", "train.lr=0.01"])
    ctx = common.Context(cfg, get_backend(backend_name), workdir, common.load_data(cfg))
    os.makedirs(workdir, exist_ok=True)
    model = ctx.backend.build(small, small_params)
    pruned = common.summary_row(ctx, "l1 pruned", model)
    common.fit(ctx, model, cfg.train, "finetune")
    return {"pruned": pruned, "finetuned": common.summary_row(ctx, "l1", model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch")
    p.add_argument("--workdir", default="runs/bench_dcff")
    p.add_argument("--epochs", type=int, default=15, help="baseline, DCFF and fine-tuning epochs")
    a = p.parse_args()
    base_dir = os.path.join(a.workdir, "baseline")
    base = train.baseline(a.backend, base_dir, a.epochs)
    rows = [("unpruned", "-", base["macs"], base["params"], base["test_accuracy"], "")]
    for level, rates in LEVELS.items():
        warm = [f"--config.model.weights={base['checkpoint']}", "--config.train.lr=0.01"]
        for name, extra in (("dcff", []), ("dcff paper t", ["--config.dcff.schedule=paper"]),
                            ("dcff from base", warm)):
            wd = os.path.join(a.workdir, f"{level}_{name.replace(' ', '_')}")
            assert dcff_method.cli(["--backend", a.backend, "--workdir", wd, f"--config.dcff.rates={rates}",
                                    f"--config.train.epochs={a.epochs}", *extra]) == 0
            with open(os.path.join(wd, "metrics.json")) as f:
                m = json.load(f)
            moved = sum(sum(s["changed"].values()) for s in m["selection"])
            r = m["rows"][1]
            rows.append((name, level, r["macs"], r["params"], r["test_accuracy"], f"{moved} kept indices changed"))
        lr = l1_pruned(a.backend, base["checkpoint"], rates, os.path.join(a.workdir, f"{level}_l1"), a.epochs)
        r = lr["finetuned"]
        rows.append(("l1 + fine-tune", level, r["macs"], r["params"], r["test_accuracy"],
                     f"{lr['pruned']['test_accuracy']:.2f}% before fine-tuning"))
    print(f"\nDCFF vs L1 on digits, ResNet-20, backend {a.backend}, "
          f"{a.epochs} epochs each (L1: after a {a.epochs}-epoch baseline); levels: "
          + ", ".join(f"{k} = {v}" for k, v in LEVELS.items()))
    head = f"{'model':<16}{'level':>6}{'MACs':>10}{'x fewer':>9}{'params':>10}{'test %':>8}  note"
    print(head)
    print("-" * (len(head) + 30))
    for name, level, macs, params, acc, note in rows:
        print(f"{name:<16}{level:>6}{macs / 1e6:>9.3f}M{base['macs'] / macs:>9.2f}{params / 1e3:>9.1f}k"
              f"{acc:>8.2f}  {note}")
    print("MACs: one multiply-add = one MAC; test split of digits (270 images, one run, no error bars)")


if __name__ == "__main__":
    main()
