"""Tucker-2 / CP decomposition on digits: MACs, parameters, accuracy before and after fine-tuning,
real CPU latency of the original and decomposed model, and real speedup / MAC reduction.

    python benchmarks/decompose_models.py [--models resnet20,vgg16] [--backends torch,tf] [--epochs 8]
        [--methods tucker2,cp] [--fc svd,diagonal]

Each (model, backend, method) is one ``methods.decompose`` run in a temporary work directory
(VBMF ranks weakened halfway as in the digits file, the latency guard off so that every
MAC-saving factorisation is kept and its real cost shows). The first run of a (model, backend)
trains the baseline for ``--epochs``; the others start from it. Latencies of the models of one
run are measured in turns in that run. A second table compresses only the dense layers
(truncated SVD, or the diagonal structure with its regulariser) and reports what each costs in accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_core.ir import zoo
from methods import decompose


def run(model: str, backend: str, epochs: int, finetune: int, workdir: str, *overrides: str) -> dict:
    argv = ["--backend", backend, "--workdir", workdir, f"--config.model.source={model}",
            f"--config.train.epochs={epochs}", f"--config.finetune.epochs={finetune}",
            "--config.decompose.latency_guard=false", *overrides]
    with contextlib.redirect_stdout(io.StringIO()):
        if decompose.cli(argv) != 0:
            raise SystemExit(f"run failed: {argv}")
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def conv_line(model: str, backend: str, method: str, m: dict) -> str:
    rows = {r["model"]: r for r in m["rows"]}
    base, dec, ft = rows["baseline"], rows["decomposed"], rows["fine-tuned"]
    return (f"{model:<9}{backend:<8}{method:<8}{ft['params'] / base['params']:>9.3f}"
            f"{ft['macs'] / base['macs']:>8.3f}{base['test_accuracy']:>9.2f}{dec['test_accuracy']:>8.2f}"
            f"{ft['test_accuracy']:>8.2f}{base['latency_b32_ms']:>9.2f}{ft['latency_b32_ms']:>8.2f}"
            f"{base['latency_b32_ms'] / ft['latency_b32_ms']:>8.2f}{base['macs'] / ft['macs']:>8.2f}"
            f"{ft['speedup_per_mac_reduction']:>7.2f}")


def fc_line(model: str, backend: str, fc: str, m: dict) -> str:
    """Dense layers only: their parameters, test accuracy of the compact form before and after fine-tuning."""
    rows = {r["model"]: r for r in m["rows"]}
    dense = [r for r in m["layers"] if r["op"] == "dense" and r["kept"]]
    before, after = sum(r["params_before"] for r in dense), sum(r["params_after"] for r in dense)
    # no dense layer kept (its SVD rank would not save MACs): the row of the unchanged network
    compact = rows.get("SVD FC only" if fc == "svd" else "diagonal FC, no reg.", rows["decomposed"])
    final = rows["fine-tuned" if fc == "svd" else "diagonal FC"]
    # rank (svd) or weights kept (diagonal), and the relative error of dropping the rest
    ranks = " ".join(f"{r['layer']}:{r.get('rank', r.get('params'))} (err {r['error']:.2f})" for r in dense)
    return (f"{model:<9}{backend:<8}{fc:<9}{before:>10}{after:>9}{rows['baseline']['test_accuracy']:>9.2f}"
            f"{compact['test_accuracy']:>10.2f}{final['test_accuracy']:>8.2f}  {ranks}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--backends", default="torch,tf")
    p.add_argument("--methods", default="tucker2,cp", help="conv decompositions (empty: none)")
    p.add_argument("--fc", default="svd,diagonal", help="dense-layer compressions, convs left alone (empty: none)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--finetune", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.01, help="learning rate of the conv-decomposition runs")
    p.add_argument("--fc-finetune", type=int, default=10, help="fine-tuning epochs of the dense-layer runs")
    p.add_argument("--fc-lr", type=float, default=0.05, help="their learning rate (the diagonal must re-route "
                   "class evidence into its channels: a short, small-lr fine-tuning is not enough)")
    args = p.parse_args()
    head = (f"{'model':<9}{'backend':<8}{'method':<8}{'params':>9}{'MACs':>8}{'acc base':>9}{'acc dec':>8}"
            f"{'acc ft':>8}{'ms base':>9}{'ms dec':>8}{'speedup':>8}{'MAC red':>8}{'ratio':>7}")
    fc_head = (f"{'model':<9}{'backend':<8}{'fc':<9}{'FC params':>10}{'-> after':>9}{'acc base':>9}"
               f"{'acc no ft':>10}{'acc ft':>8}  layers (rank / weights, rel. error)")
    conv, fcs = [head, "-" * len(head)], [fc_head, "-" * len(fc_head)]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            dense = ",".join(f"'{n.name}'" for n in zoo.build(model, 10, (1, 8, 8)).of_op("dense"))
            for backend in args.backends.split(","):
                # one baseline per (model, backend), trained by the first run and reused by the others
                baseline = os.path.join(tmp, f"{model}-{backend}-base", "baseline", "best.safetensors")
                jobs = [(f"method={m}", m, conv_line) for m in filter(None, args.methods.split(","))]
                jobs += [(f"fc={f}", f, fc_line) for f in filter(None, args.fc.split(","))]
                for i, (override, label, line) in enumerate(jobs):
                    extra = [f"--config.decompose.{override}", f"--config.finetune.lr={args.finetune_lr}"]
                    if line is fc_line:
                        extra += [f"--config.decompose.layers=({dense},)", f"--config.finetune.lr={args.fc_lr}",
                                  f"--config.finetune.epochs={args.fc_finetune}"]
                    if i:
                        extra.append(f"--config.model.weights={baseline}")
                    workdir = os.path.join(tmp, f"{model}-{backend}-" + ("base" if i == 0 else label))
                    m = run(model, backend, args.epochs, args.finetune, workdir, *extra)
                    (conv if line is conv_line else fcs).append(line(model, backend, label, m))
                    print((conv if line is conv_line else fcs)[-1], flush=True)
    print("\n".join(conv))
    print("params, MACs: decomposed / original; acc: test %; ms: median CPU forward at batch 32; "
          "speedup / MAC reduction = ratio (1: the MAC saving is fully realised)")
    print()
    print("\n".join(fcs))
    print("dense layers only (convs untouched); acc no ft: the compact form applied to the baseline; acc ft: after "
          "fine-tuning (svd: the factorised layers; diagonal: fine-tuned with the regulariser, then made compact)")


if __name__ == "__main__":
    main()
