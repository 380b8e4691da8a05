"""Tucker-2 / CP decomposition on digits: MACs, parameters, accuracy before and after fine-tuning,
real CPU latency of the original and decomposed model, and real speedup / MAC reduction.

    python benchmarks/decompose_models.py [--models resnet20,vgg16] [--backends torch,tf] [--epochs 8]

Each (model, backend, method) is one ``methods.decompose`` run in a temporary work directory
(baseline trained for ``--epochs``, VBMF ranks weakened halfway as in the digits file, the
latency guard off so that every MAC-saving factorisation is kept and its real cost shows).
Latencies of the models of one run are measured in turns in that run.
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

from methods import decompose


def run(model: str, backend: str, method: str, epochs: int, finetune: int, workdir: str) -> dict:
    argv = ["--backend", backend, "--workdir", workdir, f"--config.model.name={model}",
            f"--config.train.epochs={epochs}", f"--config.finetune.epochs={finetune}",
            f"--config.decompose.method={method}", "--config.decompose.latency_guard=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        if decompose.cli(argv) != 0:
            raise SystemExit(f"run failed: {argv}")
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--backends", default="torch,tf")
    p.add_argument("--methods", default="tucker2,cp")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--finetune", type=int, default=3)
    args = p.parse_args()
    head = (f"{'model':<9}{'backend':<8}{'method':<8}{'params':>9}{'MACs':>8}{'acc base':>9}{'acc dec':>8}"
            f"{'acc ft':>8}{'ms base':>9}{'ms dec':>8}{'speedup':>8}{'MAC red':>8}{'ratio':>7}")
    lines = [head, "-" * len(head)]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for backend in args.backends.split(","):
                for method in args.methods.split(","):
                    m = run(model, backend, method, args.epochs, args.finetune,
                            os.path.join(tmp, f"{model}-{backend}-{method}"))
                    rows = {r["model"]: r for r in m["rows"]}
                    base, dec, ft = rows["baseline"], rows["decomposed"], rows["fine-tuned"]
                    lines.append(
                        f"{model:<9}{backend:<8}{method:<8}{ft['params'] / base['params']:>9.3f}"
                        f"{ft['macs'] / base['macs']:>8.3f}{base['test_accuracy']:>9.2f}{dec['test_accuracy']:>8.2f}"
                        f"{ft['test_accuracy']:>8.2f}{base['latency_b32_ms']:>9.2f}{ft['latency_b32_ms']:>8.2f}"
                        f"{ft['speedup_b32']:>8.2f}{ft['mac_reduction']:>8.2f}{ft['speedup_per_mac_reduction']:>7.2f}")
    print("\n".join(lines))
    print("params, MACs: decomposed / original; acc: test %; ms: median CPU forward at batch 32; "
          "speedup / MAC reduction = ratio (1: the MAC saving is fully realised)")


if __name__ == "__main__":
    main()
