"""DCFF: ``python -m methods.dcff --backend tf|torch [--config hyperparams/dcff_*.py]``.

Dynamic-coded filter fusion (Lin et al., 2021) trains a compact network from
scratch at given per-layer prune rates (:mod:`compress_core.recipes.dcff`). Every rated
conv keeps all ``n`` raw filters and computes with ``m`` fused filters
``fusion @ W``. Before every epoch the selection and the fusion weights are
recomputed from the current weights at the epoch's temperature ``t``: DCFF
importance (mean KL divergence of filter-similarity distributions, in log space
so it stays finite at any ``t``), the ``m`` best per residual-tied group, and
``fusion[r] = softmax(-t * distances of kept filter r)``. The number of kept
indices that changed per group and epoch is logged and saved: it shows whether
the selection really moves (on digits it settles within a few epochs, see the
README). At the end the best-validation network is exported as
ordinary layers (fused weights, BatchNorm as trained).

Training starts from scratch (the paper) or, with ``model.weights``, from a trained
unpruned checkpoint (keep sets by DCFF importance of its filters, fused convs
keep all raw filters, BatchNorm and readers keep the kept entries).

Work directory: ``train/`` (resumable training of the fused network),
``selection.json`` (per epoch: temperature, changed kept indices per group,
fusion softness), ``dcff.safetensors`` (the exported compact network: an
ordinary graph checkpoint), ``metrics.json``, ``log.txt``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from compress_core.criteria import dcff as crit
from compress_core.fileio import atomic_write_json
from compress_core.ir import checkpoint, flops
from compress_core.recipes import dcff
from methods import common, distributed, report

#: the released code's schedule: t_s, t_e and k, with t computed per epoch (t = 1, 4622, 7616, ...)
PAPER_SCHEDULE = (1.0, 1e4, 1.0)


def temperature_at(cfg, epoch: int) -> float:
    """Temperature of ``epoch`` (0-based) under the config's schedule."""
    c = cfg.dcff
    if c.schedule == "paper":
        t_s, t_e, k = PAPER_SCHEDULE
        return float(crit.temperature(epoch, cfg.train.epochs, t_s, t_e, k))
    return float(crit.temperature(epoch / cfg.train.epochs, 1.0, c.t_start, c.t_end, c.k))


class Selector:
    """The ``on_epoch`` hook of :func:`methods.common.fit`: re-select, re-fuse, record what changed.

    ``selection.json`` keeps the keep sets of the last epoch and of the one before,
    so a run resumed in the middle of an epoch counts its changes against the right set.
    ``initial`` (fusion, keeps) of a warm start are kept for the first epoch instead of
    recomputed: its BatchNorm entries were cut to those keep sets.
    """

    def __init__(self, ctx: common.Context, model, groups, initial=None):
        self.ctx, self.model, self.groups, self.initial = ctx, model, groups, initial
        self.path = ctx.path("selection.json")
        self.record = {"epoch": -1, "keeps": {}, "previous": {}, "epochs": []}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.record = json.load(f)

    def select(self, t: float) -> tuple[dict, dict]:
        """:func:`dcff.select_and_fuse` computed once, on rank 0, and sent to every rank of a data-parallel
        run, so that all of them fuse the same filters."""
        if not distributed.active():
            return dcff.select_and_fuse(self.ctx.backend.get_weights(self.model), self.groups, t)
        if distributed.is_main():
            fusion, keeps = dcff.select_and_fuse(self.ctx.backend.get_weights(self.model), self.groups, t)
        else:  # arrays of the right shapes to receive into
            shapes = self.model.graph.param_shapes()
            fusion = {k: np.zeros(v, np.float32) for k, v in shapes.items() if k.endswith(".fusion")}
            keeps = {g.name: np.zeros(g.m, np.int64) for g in self.groups}
        f, k = sorted(fusion), sorted(keeps)
        values = distributed.broadcast([fusion[n] for n in f] + [keeps[n] for n in k])
        return dict(zip(f, values[:len(f)])), dict(zip(k, values[len(f):]))

    def __call__(self, epoch: int, trainer=None) -> None:
        ctx, rec = self.ctx, self.record
        t = temperature_at(ctx.cfg, epoch)
        if epoch == 0 and self.initial is not None:
            fusion, keeps = self.initial
        else:
            fusion, keeps = self.select(t)
        ctx.backend.set_weights(self.model, fusion, strict=False)
        prev = rec["previous"] if rec["epoch"] == epoch else rec["keeps"]
        changed = {g: int(len(k) - np.intersect1d(k, prev[g]).size) for g, k in keeps.items() if g in prev}
        row = {"epoch": epoch + 1, "t": t, "softness": dcff.softness(fusion), "changed": changed}
        rec.update(epoch=epoch, previous=prev, keeps={g: k.tolist() for g, k in keeps.items()},
                   epochs=[r for r in rec["epochs"] if r["epoch"] <= epoch] + [row])
        if distributed.is_main():
            atomic_write_json(self.path, rec)
        ctx.dashboard.scalars("train", epoch + 1, {"dcff/temperature": t, **(
            {"dcff/changed_filters": sum(changed.values())} if changed else {})})
        common.log.info("[dcff] epoch %d: t %.4g, fused filters give %.3f to their own filter, kept indices "
                        "changed in %d of %d groups (%d in total)", epoch + 1, t, row["softness"],
                        sum(v > 0 for v in changed.values()), len(keeps), sum(changed.values()))
        # returns None: a true value would end the training (fit's stopping rule)


def selection_line(selection: list[dict]) -> str:
    moves = [(s["epoch"], sum(s["changed"].values())) for s in selection if s["changed"]]
    return ("kept indices changed per epoch (epoch:count): " + " ".join(f"{e}:{c}" for e, c in moves)
            if moves else "kept indices: one epoch only")


def run(ctx: common.Context) -> dict:
    cfg, backend, splits = ctx.cfg, ctx.backend, ctx.splits
    rates = dcff.parse_rates(cfg.dcff.rates)
    full, _ = common.source_graph(ctx)
    graph, groups = dcff.training_graph(full, rates)
    t0, initial = temperature_at(cfg, 0), None
    if cfg.model.weights:
        start = common.start_model(ctx, stage=None)
        params, keeps = dcff.warm_start(start.graph, ctx.backend.get_weights(start), graph, groups, t0)
        initial = ({k: v for k, v in params.items() if k.endswith(".fusion")}, keeps)
        common.log.info("[dcff] starting from %s", cfg.model.weights)
    else:
        params = dcff.init_params(graph, groups, cfg.seed, t0)
    model = backend.build(graph, params)
    for g in groups:
        common.log.info("[dcff] %s: keep %d of %d filters (%s)", g.name, g.m, g.n, ", ".join(g.members))
    selector = Selector(ctx, model, groups, initial)
    state = common.fit(ctx, model, cfg.train, "train", on_epoch=selector)
    small, small_params = dcff.export(model.graph, backend.get_weights(model))
    compact = backend.build(small, small_params)
    x = splits.val.x[:256]
    fused_logits = backend.forward(model, x)[0]
    # float32 round-off of fusion @ W (in the framework) vs the exported product: relative to the logits' scale
    gap = float(np.max(np.abs(fused_logits - backend.forward(compact, x)[0])) / max(1.0, np.max(np.abs(fused_logits))))
    export = ctx.path("dcff.safetensors")
    if distributed.is_main():
        checkpoint.save_checkpoint(export, small, small_params,
                                   {"method": "dcff", "rates": rates, "schedule": cfg.dcff.schedule})
    rows = [{"model": "unpruned (not trained)", **flops.summary(full), "val_accuracy": None, "test_accuracy": None},
            common.summary_row(ctx, "dcff compact", compact)]
    report.add_latencies(backend, rows, [backend.build(full), compact], 20)
    selection = selector.record["epochs"]
    print(report.format_table(rows))
    print(selection_line(selection))
    print(f"exported {export}; fused vs exported logits differ by {gap:.2e} (relative to the largest logit)")
    metrics = {"backend": backend.name, "rows": rows, "rates": rates, "checkpoint": export,
               "widths": {g.name: [g.n, g.m] for g in groups}, "export_max_diff": gap,
               "best_epoch": state["best_epoch"], "selection": selection,
               "mac_fraction": rows[1]["macs"] / rows[0]["macs"],
               "param_fraction": rows[1]["params"] / rows[0]["params"]}
    common.write_metrics(ctx, metrics)
    return metrics


def check(ctx: common.Context) -> None:
    """The rates against the model, and a start network of the unpruned model's shapes (DCFF fuses the
    filters of the whole network), before any work."""
    from compress_core.errors import UserError

    full, _ = common.source_graph(ctx)
    dcff.conv_rates(full, dcff.parse_rates(ctx.cfg.dcff.rates))
    start = common.start_graph(ctx)
    if start.param_shapes() != full.param_shapes():
        raise UserError(f"model.weights {ctx.cfg.model.weights} holds a '{start.arch}' with other layer shapes "
                        f"than the unpruned model (DCFF fuses the filters of the whole network)")


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "dcff_resnet20_digits.py", argv, check=check)


if __name__ == "__main__":
    sys.exit(cli())
