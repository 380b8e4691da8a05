"""Time of the KSE indicator and kernel clustering for every conv of ResNet-56 and of a ResNet-50.

ResNet-56: the zoo's 54 block convs (He-initialised weights). ResNet-50: the
weight shapes of torchvision's ResNet-50 bottleneck convs (1x1, 3x3 and
downsample; stem and fc excluded, as the reference), filled with He-normal
values. G=5, T=1 (the reference's ImageNet setting), seed 0, paper entropy
sets. Target: the whole ResNet-50 in under 10 s on 2 cores.

Per stage (sparsity, kNN entropy, levels = combine + centroid counts,
clustering) wall time. ``--before REV`` also runs the implementation of git
revision ``REV`` (read with ``git show``, nothing checked out) on the same
weights in the same process, and compares: largest entropy difference, channels
whose level differs, k-means objective ``sum ||x - c||^2`` (new / old) and
channels whose assignment differs.

    python benchmarks/kse_indicator_speed.py [--before b564b22]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

from compress_core.criteria import kse as criteria
from compress_core.ir import zoo
from compress_core.ir.init import init_params
from compress_core.recipes import kse

G, T = 5, 1


def resnet50_shapes() -> list[tuple[int, int, int, int]]:
    shapes, cin = [], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            shapes += [(width, cin, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if i == 0:
                shapes.append((4 * width, cin, 1, 1))
            cin = 4 * width
    return shapes


def weights() -> dict[str, list[np.ndarray]]:
    g = zoo.build("resnet56")
    p = init_params(g)
    r56 = [p[f"{n.name}.weight"] for n in g.of_op("conv") if re.fullmatch(r"layer\d+\.\d+\.conv\d", n.name)]
    rng = np.random.default_rng(0)
    r50 = [rng.normal(0, np.sqrt(2 / np.prod(s[1:])), s).astype(np.float32) for s in resnet50_shapes()]
    return {"ResNet-56": r56, "ResNet-50": r50}


def load_revision(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """``compress_core.criteria.kse`` and ``compress_core.recipes.kse`` as they were at ``rev``."""
    mods = []
    tmp = tempfile.mkdtemp(prefix="kse_before_")
    for name, path in (("kse_before_criteria", "compress_core/criteria/kse.py"),
                       ("kse_before", "compress_core/kse.py")):
        src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
        file = os.path.join(tmp, f"{name}.py")
        with open(file, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(name, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def run(ws, crit, km) -> tuple[dict[str, float], list]:
    """Stage wall times over the layers ``ws`` (and ``cpu``: the process's CPU time, all threads)
    and, per layer, (entropy, levels, counts, code)."""
    t = dict.fromkeys(("sparsity", "entropy", "levels", "clustering"), 0.0)
    out = []
    cpu = time.process_time()
    for w in ws:
        t0 = time.perf_counter()
        s = crit.kernel_sparsity(w)
        t1 = time.perf_counter()
        e = crit.knn_entropy(crit.entropy_sets(w, "paper"))
        t2 = time.perf_counter()
        g, q = crit.centroid_counts(crit.combine(s, e), w.shape[0], G, T)
        t3 = time.perf_counter()
        code = km.cluster_layer(w, q, seed=0)
        t4 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[key] += dt
        out.append((e, g, q, code))
    t["cpu"] = time.process_time() - cpu
    return t, out


def objective(w: np.ndarray, code) -> float:
    """``sum_c sum_n ||W[n, c] - B_c[L_c[n]]||^2`` over the clustered channels."""
    x = np.asarray(w, np.float64)[:, code.channels]
    return float(((x - code.dense()) ** 2)[:, ~code.full].sum())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", metavar="REV", help="also time and compare the implementation of git revision REV")
    args = ap.parse_args(argv)
    before = load_revision(args.before) if args.before else None
    head = f"{'weights':<11}{'impl':<8}{'convs':>6}{'params':>8}{'sparsity':>10}{'entropy':>9}{'levels':>8}" \
           f"{'k-means':>9}{'total s':>9}{'cpu s':>7}{'pruned/clustered/kept':>23}"
    print(head)
    print("-" * len(head))
    notes = []
    for name, ws in weights().items():
        results = {}
        for impl, mods in (("before", before), ("now", (criteria, kse))):
            if mods is None:
                continue
            t, out = run(ws, *mods)
            results[impl] = out
            counts = [sum(int(f(q, w.shape[0]).sum()) for (_, _, q, _), w in zip(out, ws))
                      for f in (lambda q, n: q == 0, lambda q, n: (q > 0) & (q < n), lambda q, n: q == n)]
            print(f"{name:<11}{impl:<8}{len(ws):>6}{sum(w.size for w in ws) / 1e6:>7.2f}M"
                  f"{t['sparsity']:>10.2f}{t['entropy']:>9.2f}{t['levels']:>8.2f}{t['clustering']:>9.2f}"
                  f"{sum(v for key, v in t.items() if key != 'cpu'):>9.2f}{t['cpu']:>7.2f}"
                  f"{'/'.join(map(str, counts)):>23}")
        if before:
            old, new = results["before"], results["now"]
            de = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(old, new))
            dg = sum(int((a[1] != b[1]).sum()) for a, b in zip(old, new))
            same_q = [np.array_equal(a[2], b[2]) for a, b in zip(old, new)]
            obj = [(objective(w, a[3]), objective(w, b[3])) for w, a, b, s in zip(ws, old, new, same_q) if s]
            dl = sum(int((a[3].labels != b[3].labels).any(axis=1).sum()) for a, b, s in zip(old, new, same_q) if s)
            ratio = sum(o[1] for o in obj) / max(sum(o[0] for o in obj), 1e-300)
            notes.append(f"{name}: entropy max |now - before| {de:.1e} bits; channels at another level {dg}; "
                         f"k-means objective now/before {ratio:.6f}; channels with other assignments {dl}")
    print(f"G={G}, T={T}, k=5, paper entropy sets; one process; wall time per stage in s, cpu s = CPU time "
          f"of all threads; {len(os.sched_getaffinity(0))} cores, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
