"""KSE compression: ``python -m methods.kse --backend tf|torch [--config hyperparams/kse_*.py]``.

Kernel sparsity and entropy (Li et al., CVPR 2019): score every input channel of
the chosen convolutions by the sparsity and kNN entropy of its kernels
(:mod:`compress_core.criteria.kse`), prune the weakest channels, replace the
kernels of the middle levels by per-channel k-means centroids with fixed
assignments, keep the strongest as they are (:mod:`compress_core.kse`);
fine-tune the centroids, full kernels, BatchNorm and head; export the faster
of the two inference forms (dense rebuilt kernel, shared activations).

Work directory: ``baseline/`` (when no ``kse.teacher`` is given), ``codes.npz``
and ``compressed.safetensors`` (assignments and the dense-form network before
fine-tuning), ``finetune/``, ``kse.safetensors`` (the exported network: an
ordinary graph checkpoint, its metadata says which form), ``metrics.json``,
``log.txt``. Every stage resumes from what an earlier run left there.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from backends.base import Trainer
from compress_core import checkpoint, flops, kse
from compress_core.criteria.kse import kse_indicator
from methods import common


# -- centroid training ------------------------------------------------------------------------------
class _Codes:
    """The current codes, shared by the projecting trainer and the method."""

    def __init__(self, codes):
        self.codes = dict(codes)


class ProjectingTrainer(Trainer):
    """A backend trainer followed, after every step, by :func:`compress_core.kse.project`."""

    def __init__(self, backend, model, inner: Trainer, holder: _Codes):
        self.backend, self.model, self.inner, self.holder = backend, model, inner, holder

    def step(self, x, y, lr, teacher_logits=None, feature_target=None):
        out = self.inner.step(x, y, lr, teacher_logits, feature_target)
        params, self.holder.codes = kse.project(self.backend.get_weights(self.model), self.holder.codes)
        self.backend.set_weights(self.model, params, strict=False)
        return out

    def set_projection(self, projection):
        self.inner.set_projection(projection)

    def set_lr_factors(self, factors):
        self.inner.set_lr_factors(factors)

    def gradients(self):
        return self.inner.gradients()

    def state(self):
        return self.inner.state()

    def load_state(self, state):
        self.inner.load_state(state)
        # a resumed run has just loaded the weights: read the codebooks back from them
        self.holder.codes = kse.codes_from_weights(self.backend.get_weights(self.model), self.holder.codes)


class ProjectingBackend:
    """The run's backend, whose trainers keep the coded convs on their centroids."""

    def __init__(self, backend, holder: _Codes):
        self._backend, self.holder = backend, holder

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def trainer(self, model, loss, optim=None):
        return ProjectingTrainer(self._backend, model, self._backend.trainer(model, loss, optim), self.holder)


# -- stages ---------------------------------------------------------------------------------------
def get_teacher(ctx: common.Context):
    if ctx.cfg.kse.teacher:
        return common.load_model(ctx.backend, ctx.cfg.kse.teacher, ctx.splits)
    common.log.info("no kse.teacher given: training the baseline first")
    model = common.build_model(ctx)
    common.fit(ctx, model, ctx.cfg.train, "baseline")
    return model


def make_codes(cfg, graph, params) -> tuple[dict, list[dict]]:
    """Indicator and clustering of every chosen conv; one summary row per layer."""
    c = cfg.kse
    codes, rows = {}, []
    for name in kse.layer_names(graph, c.layers):
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
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


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
    if os.path.exists(path) and os.path.exists(codes_path):
        common.log.info("compressed network found in %s: indicator and clustering skipped", path)
        graph, params, meta = checkpoint.load_checkpoint(path)
        return ctx.backend.build(graph, params), load_codes(codes_path, params), meta["layers"]
    codes, layers = make_codes(ctx.cfg, teacher.graph, ctx.backend.get_weights(teacher))
    graph, params, codes = kse.compress(teacher.graph, ctx.backend.get_weights(teacher), codes)
    save_codes(codes_path, codes)
    checkpoint.save_checkpoint(path, graph, params, {"method": "kse", "form": "dense", "layers": layers})
    return ctx.backend.build(graph, params), codes, layers


def report_row(ctx, name: str, model, cfg, same_as: dict | None = None) -> dict:
    """Cost, accuracy and latency of ``model``; accuracies copied from ``same_as`` (an equal network)."""
    if same_as:
        row = {"model": name, **common.cost(model),
               **{f"{split}_accuracy": same_as[f"{split}_accuracy"] for split in ("val", "test")}}
    else:
        row = common.summary_row(ctx, name, model)
    row["latency_ms"] = common.latency(ctx.backend, model, cfg.kse.latency_batch, cfg.kse.latency_repeats)
    return row


def print_table(rows: list[dict], batch: int) -> str:
    head = f"{'model':<18}{'params':>10}{'MACs':>12}{'val %':>8}{'test %':>8}{f'ms@{batch}':>9}"
    lines = [head, "-" * len(head)]
    lines += [f"{r['model']:<18}{r['params'] / 1e3:>9.1f}k{r['macs'] / 1e6:>11.2f}M{r['val_accuracy']:>8.2f}"
              f"{r['test_accuracy']:>8.2f}{r['latency_ms']:>9.2f}" for r in rows]
    lines.append("MACs: one multiply-add = one MAC, counted on the graph as run (the shared form's "
                 "1x1 sum of ones counts its additions as MACs); latency: median CPU forward time")
    return "\n".join(lines)


def run(ctx: common.Context) -> dict:
    cfg = ctx.cfg
    teacher = get_teacher(ctx)
    student, codes, layers = compress(ctx, teacher)
    rows = [report_row(ctx, "baseline", teacher, cfg), report_row(ctx, "compressed", student, cfg)]
    holder = _Codes(codes)
    train_ctx = common.Context(cfg, ProjectingBackend(ctx.backend, holder), ctx.workdir, ctx.splits, ctx.args)
    common.fit(train_ctx, student, cfg.finetune, "finetune")
    weights = ctx.backend.get_weights(student)
    codes = kse.codes_from_weights(weights, holder.codes)
    rows.append(report_row(ctx, "fine-tuned dense", student, cfg))
    shared_graph, shared_params = kse.shared_form(student.graph, weights, codes)
    shared = ctx.backend.build(shared_graph, shared_params)
    # the same network as the dense form (the gap below is checked): only cost and latency differ
    rows.append(report_row(ctx, "fine-tuned shared", shared, cfg, same_as=rows[2]))
    x = ctx.splits.val.x[:64]
    gap = float(np.max(np.abs(ctx.backend.forward(student, x)[0] - ctx.backend.forward(shared, x)[0])))
    form = cfg.kse.form
    if form == "auto":
        form = "dense" if rows[2]["latency_ms"] <= rows[3]["latency_ms"] else "shared"
    graph, params = (student.graph, weights) if form == "dense" else (shared_graph, shared_params)
    export = ctx.path("kse.safetensors")
    checkpoint.save_checkpoint(export, graph, params, {"method": "kse", "form": form, "from": teacher.graph.arch})
    print(print_table(rows, cfg.kse.latency_batch))
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


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "kse_resnet20_digits.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
