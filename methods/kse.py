"""KSE compression: ``python -m methods.kse --backend tf|torch [--config hyperparams/kse_*.py]``.

Kernel sparsity and entropy (Li et al., CVPR 2019): score every input channel of
the chosen convolutions by the sparsity and kNN entropy of its kernels
(:mod:`compress_core.criteria.kse`), prune the weakest channels, replace the
kernels of the middle levels by per-channel k-means centroids with fixed
assignments, keep the strongest as they are (:mod:`compress_core.recipes.kse`);
fine-tune the centroids, full kernels, BatchNorm and head; export the faster
of the two inference forms (dense rebuilt kernel, shared activations).

Work directory: ``baseline/`` (when no ``model.weights`` is given), ``codes.npz``
and ``compressed.safetensors`` (assignments and the dense-form network before
fine-tuning), ``finetune/``, ``kse.safetensors`` (the exported network: an
ordinary graph checkpoint, its metadata says which form), ``metrics.json``,
``log.txt``. Every stage resumes from what an earlier run left there.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from compress_core.criteria.kse import kse_indicator
from compress_core.fileio import atomic_write_npz
from compress_core.ir import checkpoint, flops
from compress_core.recipes import kse
from methods import common, distributed, report


# -- centroid training ------------------------------------------------------------------------------
class Projector:
    """Keeps the coded convs on their centroids while :func:`methods.common.fit` trains the dense form.

    ``on_step`` (after every SGD step) reads the coded convs' weights, projects them with
    :func:`compress_core.recipes.kse.project` and writes them back; ``on_epoch`` (before
    every epoch) first reads the codebooks back from the weights, so a resumed run
    continues from the centroids it saved.
    """

    def __init__(self, backend, model, codes):
        self.backend, self.model, self.codes = backend, model, dict(codes)
        self.names = [f"{name}.weight" for name in self.codes]
        self._synced = False

    def on_epoch(self, epoch, trainer) -> None:
        if not self._synced:
            self.codes = kse.codes_from_weights(self.backend.get_weights(self.model, self.names), self.codes)
            self._synced = True
        # None: never a stopping rule

    def on_step(self, lr, trainer) -> None:
        params, self.codes = kse.project(self.backend.get_weights(self.model, self.names), self.codes)
        self.backend.set_weights(self.model, params, strict=False)


# -- stages ---------------------------------------------------------------------------------------
def make_codes(cfg, graph, params) -> tuple[dict, list[dict]]:
    """Indicator and clustering of every chosen conv; one summary row per layer."""
    c = cfg.kse
    codes, rows = {}, []
    for name in kse.layer_names(graph, c.layers, c.k + 1):
        w = params[f"{name}.weight"]
        r = kse_indicator(w, c.G, c.T, c.k, c.entropy_sets)
        codes[name] = kse.cluster_layer(w, r.num_centroids, cfg.seed, c.kmeans_max_iter, c.kmeans_tol)
        rows.append({"conv": name, "filters": int(w.shape[0]), "inputs": int(w.shape[1]),
                     "per_level": np.bincount(r.levels, minlength=c.G).tolist(),
                     "centroids": int(codes[name].num_centroids.sum())})
    return codes, rows


def save_codes(path: str, codes) -> None:
    arrays = {}
    for name, code in codes.items():
        arrays.update({f"{name}/channels": code.channels, f"{name}/labels": code.labels,
                       f"{name}/full": code.full, f"{name}/in_channels": np.array(code.in_channels)})
    atomic_write_npz(path, **arrays)


def load_codes(path: str, params) -> dict:
    saved = np.load(path)
    names = sorted({k.rsplit("/", 1)[0] for k in saved.files}, key=lambda k: saved.files.index(f"{k}/channels"))
    skeleton = {n: kse.LayerCode(saved[f"{n}/channels"], [np.zeros(0)] * len(saved[f"{n}/channels"]),
                                 saved[f"{n}/labels"], saved[f"{n}/full"], int(saved[f"{n}/in_channels"]))
                for n in names}
    return kse.codes_from_weights(params, skeleton)


def compress(ctx: common.Context, teacher):
    """Indicator, clustering, the dense-form network; resumes from ``compressed.safetensors``."""
    path, codes_path = ctx.path("compressed.safetensors"), ctx.path("codes.npz")
    if distributed.agree(os.path.exists(path) and os.path.exists(codes_path)):
        common.log.info("compressed network found in %s: indicator and clustering skipped", path)
        graph, params, meta = checkpoint.load_checkpoint(path)
        return ctx.backend.build(graph, params), load_codes(codes_path, params), meta["layers"]
    codes, layers = make_codes(ctx.cfg, teacher.graph, ctx.backend.get_weights(teacher))
    graph, params, codes = kse.compress(teacher.graph, ctx.backend.get_weights(teacher), codes)
    if distributed.is_main():
        save_codes(codes_path, codes)
        checkpoint.save_checkpoint(path, graph, params, {"method": "kse", "form": "dense", "layers": layers})
    return ctx.backend.build(graph, params), codes, layers


def run(ctx: common.Context) -> dict:
    cfg = ctx.cfg
    teacher = common.start_model(ctx)
    student, codes, layers = compress(ctx, teacher)
    rows = [common.summary_row(ctx, "baseline", teacher), common.summary_row(ctx, "compressed", student)]
    projector = Projector(ctx.backend, student, codes)
    common.fit(ctx, student, cfg.finetune, "finetune", on_epoch=projector.on_epoch, on_step=projector.on_step)
    weights = ctx.backend.get_weights(student)
    codes = kse.codes_from_weights(weights, projector.codes)
    rows.append(common.summary_row(ctx, "fine-tuned dense", student))
    shared_graph, shared_params = kse.shared_form(student.graph, weights, codes)
    shared = ctx.backend.build(shared_graph, shared_params)
    # the same network as the dense form (the gap below is checked): only cost and latency differ
    rows.append({**rows[2], "model": "fine-tuned shared", **common.cost(shared)})
    x = ctx.splits.val.x[:64]
    gap = float(np.max(np.abs(ctx.backend.forward(student, x)[0] - ctx.backend.forward(shared, x)[0])))
    batch = cfg.kse.latency_batch
    # the compressed and the fine-tuned dense rows are one architecture (one model object): timed once
    report.add_latencies(ctx.backend, rows, [teacher, student, student, shared], cfg.kse.latency_repeats, (1, batch))
    form = cfg.kse.form
    if form == "auto":
        form = "dense" if rows[2][f"latency_b{batch}_ms"] <= rows[3][f"latency_b{batch}_ms"] else "shared"
    graph, params = (student.graph, weights) if form == "dense" else (shared_graph, shared_params)
    export = ctx.path("kse.safetensors")
    if distributed.is_main():
        checkpoint.save_checkpoint(export, graph, params, {"method": "kse", "form": form,
                                                           "from": teacher.graph.arch})
    print(report.format_table(rows, batch))
    print("the shared form's MACs count its 1x1 sum of ones (additions) as MACs")
    base = flops.summary(teacher.graph)
    paper = kse.paper_costs(student.graph, codes)
    coded = set(codes)
    rest = sum(c.macs for c in flops.layer_costs(student.graph) if c.name not in coded)
    print(f"exported form: {form} ({export}); dense vs shared logits differ by {gap:.2e}")
    print(f"paper accounting (centroid MACs + uncompressed layers): {(paper['macs'] + rest) / 1e6:.2f}M MACs "
          f"({base['macs'] / (paper['macs'] + rest):.2f}x fewer), plus {paper['adds'] / 1e6:.2f}M additions")
    metrics = {"backend": ctx.backend.name, "rows": rows, "layers": layers, "form": form,
               "dense_shared_max_diff": gap, "paper_costs": paper, "paper_macs_total": paper["macs"] + rest,
               "mac_fraction": {"dense": rows[2]["macs"] / base["macs"], "shared": rows[3]["macs"] / base["macs"],
                                "paper": (paper["macs"] + rest) / base["macs"]},
               "checkpoint": export}
    common.write_metrics(ctx, metrics)
    return metrics


def check(ctx: common.Context) -> None:
    """The chosen layers against the model, before any work: ``kse.layers`` matches ungrouped convs,
    each with more filters than the entropy's ``kse.k`` neighbours."""
    from compress_core.errors import UserError

    c = ctx.cfg.kse
    graph = common.start_graph(ctx)
    shapes = graph.param_shapes()
    for name in kse.layer_names(graph, c.layers, c.k + 1):
        n = shapes[f"{name}.weight"][0]
        if n < c.k + 1:
            raise UserError(f"layer '{name}' has {n} filters; the KSE entropy with kse.k={c.k} needs at least "
                            f"{c.k + 1} (exclude it with kse.layers)")


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "kse_resnet20_digits.py", argv, check=check)


if __name__ == "__main__":
    sys.exit(cli())
