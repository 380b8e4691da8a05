"""Accuracy of CDC's plans on digits over several data splits: do the fast plans lose more than the exact-MAC one?

    python benchmarks/cdc_plans_accuracy.py [--backends torch tf] [--seeds 0 1 2 3 4]
                                            [--plans default x8 latency depth reference@42] [--workdir DIR]

Every job is the README's command, ``python -m methods.cdc_prune --backend B`` (ResNet-20 on digits, half the
MACs, fine-tuning then distillation), with one plan's overrides:

* ``reference``: the reference's exact-MAC form (``cdc.stream=select cdc.multiple=1``), run first per backend
  and seed: it trains the baseline;
* ``default``: the default fast plan, no overrides (the stream cut as one channel group, widths rounded to the
  multiple measured on the backend, ``cdc.multiple=0``: 16 on an AVX-512 CPU, 8 on an AVX2 one);
* ``x8``, ``x16``: widths rounded to 8, to 16 (``cdc.multiple=8``, ``16``);
* ``any``: the stream cut, any width (``cdc.multiple=1``);
* ``latency``: widths chosen by timing on the backend (``cdc.plan=latency``, the measured multiple);
* ``depth``: whole residual blocks removed, the lowest-scored first, evenly over the stages (``cdc.plan=depth``);
* ``reference@42``: the reference form at about the MACs the depth plan keeps (ratio 0.49: 42.3% against
  41.4%; the reference's widths cannot land closer), to compare the two at equal MACs.

``config.seed`` is the data split (each its own train / val / test split, ~270 test images: one image is 0.37
points), the baseline's initialisation and the fine-tuning order. The plans of one backend and seed all start
from that seed's baseline (``model.weights``: the reference job's ``baseline/best.safetensors``), so they differ
only in the plan, and the table pairs each plan with the reference of its seed: the mean and standard deviation
over the seeds of (plan - reference), test accuracy after fine-tuning and after distillation. A job's folder is
kept (``--workdir``; a finished job, one with ``metrics.json``, is not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = {
    "reference": ["cdc.stream=select", "cdc.multiple=1"],
    "default": [],
    "x8": ["cdc.multiple=8"],
    "x16": ["cdc.multiple=16"],
    "any": ["cdc.multiple=1"],
    "latency": ["cdc.plan=latency"],
    "depth": ["cdc.plan=depth"],
    # the reference form at about the MACs the depth plan lands on for ResNet-20 (5 of 7 blocks: 41.4%), for
    # a comparison at equal MACs: ratio 0.49 keeps 42.3% (the next ratio that changes a width, 0.5, keeps 38.5%)
    "reference@42": ["cdc.stream=select", "cdc.multiple=1", "cdc.plan=uniform", "cdc.ratio=0.49"],
}
STAGES = ("baseline", "fine-tuned", "distilled")
#: plans also paired with another one run at (about) their MACs: {plan: its equal-MAC reference}
EQUAL_MACS = {"depth": "reference@42"}


def job(backend: str, seed: int, plan: str, work: str, baseline: str | None) -> dict:
    """Run one job (unless its ``metrics.json`` exists); ``{"macs": fraction, stage: test accuracy}``."""
    out = os.path.join(work, backend, f"seed{seed}", plan)
    metrics = os.path.join(out, "metrics.json")
    if not os.path.exists(metrics):
        sets = [f"seed={seed}", *PLANS[plan]] + ([f"model.weights={baseline}"] if baseline else [])
        cmd = [sys.executable, "-m", "methods.cdc_prune", "--backend", backend, "--workdir", out,
               *(f"--config.{s}" for s in sets)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    with open(metrics) as f:
        m = json.load(f)
    rows = {r["model"]: r["test_accuracy"] for r in m["rows"]}
    return {"macs": m["mac_fraction"], **{s: rows[s] for s in STAGES}}


def _paired(diffs) -> tuple[float, float, str]:
    """Mean and standard deviation of paired differences, and ``(worse/better/equal)`` counts."""
    d = np.asarray(diffs, np.float64)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return float(d.mean()), sd, f"({(d < 0).sum()}/{(d > 0).sum()}/{(d == 0).sum()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["torch", "tf"], choices=["torch", "tf"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--plans", nargs="+", default=["default", "x8", "latency", "depth", "reference@42"],
                    choices=[p for p in PLANS if p != "reference"], help="compared with the reference form")
    ap.add_argument("--workdir", default=None, help="where the jobs' folders go (default: a new temporary one)")
    a = ap.parse_args()
    if len(set(a.seeds)) != len(a.seeds):
        ap.error(f"--seeds: {a.seeds} repeats a seed")
    work = a.workdir or tempfile.mkdtemp(prefix="cdc-plans-")
    print(f"jobs in {work}", flush=True)
    from tqdm import tqdm

    plans = ["reference", *a.plans]
    res: dict = {}
    with tqdm(total=len(a.backends) * len(a.seeds) * len(plans), desc="cdc_prune jobs") as bar:
        for backend in a.backends:
            for seed in a.seeds:
                base = os.path.join(work, backend, f"seed{seed}", "reference", "baseline", "best.safetensors")
                for plan in plans:
                    r = res[backend, seed, plan] = job(backend, seed, plan, work, None if plan == "reference" else base)
                    tqdm.write(f"{backend:<6}seed {seed}  {plan:<13}MACs {100 * r['macs']:5.1f}%  "
                               + "  ".join(f"{s} {r[s]:6.2f}" for s in STAGES))
                    bar.update()
    print(f"\ntest accuracy (%), {len(a.seeds)} seeds ({', '.join(map(str, a.seeds))}); plan - reference paired "
          f"per seed: mean +- standard deviation (worse / better / equal seeds)")
    head = f"{'backend':<8}{'plan':<13}{'MACs %':>7}{'fine-tuned':>17}{'distilled':>17}{'ft - ref':>20}{'dist - ref':>20}"
    print(head + "\n" + "-" * len(head))
    for backend in a.backends:
        base_acc = [res[backend, s, "reference"]["baseline"] for s in a.seeds]
        for plan in plans:
            rs = [res[backend, s, plan] for s in a.seeds]
            refs = [res[backend, s, "reference"] for s in a.seeds]
            row = f"{backend:<8}{plan:<13}{100 * np.mean([r['macs'] for r in rs]):>7.1f}"
            for stage in STAGES[1:]:
                v = np.array([r[stage] for r in rs])
                row += f"{v.mean():>10.2f} +-{v.std(ddof=1) if len(v) > 1 else 0:>4.2f}"
            for stage in STAGES[1:]:
                mean, sd, counts = _paired([r[stage] - q[stage] for r, q in zip(rs, refs)])
                row += f"{mean:>+7.2f} +-{sd:>4.2f}{counts:>7}"
            print(row)
        print(f"{backend:<8}{'baseline':<13}{100.0:>7.1f}{np.mean(base_acc):>10.2f} +-"
              f"{np.std(base_acc, ddof=1) if len(base_acc) > 1 else 0:>4.2f}")
    for plan, other in EQUAL_MACS.items():
        if plan in plans and other in plans:
            print(f"\n{plan} - {other}, paired per seed (at about equal MACs):")
            for backend in a.backends:
                row = f"{backend:<8}"
                for stage in STAGES[1:]:
                    mean, sd, counts = _paired([res[backend, s, plan][stage] - res[backend, s, other][stage]
                                                for s in a.seeds])
                    row += f"  {stage} {mean:+.2f} +-{sd:.2f} {counts}"
                print(row)


if __name__ == "__main__":
    main()
