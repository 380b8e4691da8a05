"""KSE accuracy vs MACs on digits (ResNet-20), G in {3, 4, 5}, against the unpruned model.

Trains one baseline (``methods.train``), then runs ``methods.kse`` from it for
each G with the same fine-tuning budget, and prints one table measured in this
run. MACs: one multiply-add = one MAC; "dense" is the rebuilt-kernel network
as run, "paper" counts each input channel convolved once per centroid.

    python benchmarks/kse_accuracy_macs.py [--backend torch] [--workdir runs/bench_kse] [--epochs 15 --finetune 10]
"""

from __future__ import annotations

import argparse
import json
import os

from methods import kse, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch")
    p.add_argument("--workdir", default="runs/bench_kse")
    p.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    p.add_argument("--finetune", type=int, default=10, help="KSE fine-tuning epochs")
    a = p.parse_args()
    base_dir = os.path.join(a.workdir, "baseline")
    base = train.baseline(a.backend, base_dir, a.epochs)
    rows = []
    for G in (3, 4, 5):
        argv = ["--backend", a.backend, "--workdir", os.path.join(a.workdir, f"g{G}"), f"--config.kse.G={G}",
                f"--config.model.weights={base['checkpoint']}", f"--config.finetune.epochs={a.finetune}"]
        assert kse.cli(argv) == 0
        with open(os.path.join(a.workdir, f"g{G}", "metrics.json")) as f:
            rows.append((G, json.load(f)))
    print(f"\nKSE on digits, ResNet-20, backend {a.backend}, baseline {a.epochs} epochs, fine-tuning {a.finetune}")
    head = f"{'model':<10}{'test %':>8}{'MACs dense':>12}{'x fewer':>9}{'MACs paper':>12}{'x fewer':>9}{'params':>10}"
    print(head)
    print("-" * len(head))
    print(f"{'unpruned':<10}{base['test_accuracy']:>8.2f}{base['macs'] / 1e6:>11.3f}M{1.0:>9.2f}"
          f"{base['macs'] / 1e6:>11.3f}M{1.0:>9.2f}{base['params'] / 1e3:>9.1f}k")
    for G, m in rows:
        d = m["rows"][2]
        print(f"{f'G={G}':<10}{d['test_accuracy']:>8.2f}{d['macs'] / 1e6:>11.3f}M{base['macs'] / d['macs']:>9.2f}"
              f"{m['paper_macs_total'] / 1e6:>11.3f}M{base['macs'] / m['paper_macs_total']:>9.2f}"
              f"{d['params'] / 1e3:>9.1f}k")
    print("MACs: one multiply-add = one MAC. dense: rebuilt kernels as run; paper: sum_c q_c k^2 HW on the "
          "KSE layers (+ additions not counted) + the untouched layers")


if __name__ == "__main__":
    main()
