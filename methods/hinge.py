"""Hinge compression: ``python -m methods.hinge --backend tf|torch [--config hyperparams/hinge_*.py]``.

Group sparsity as the hinge between filter pruning and decomposition (Li et al.,
CVPR 2020): sparsity-inducing matrices are attached to a trained network
(:func:`compress_core.recipes.hinge.attach`, SVD or identity initialisation, the function
unchanged); a search trains the network with a proximal step on the matrices after
every SGD step (matrices at ``lr``, the rest at ``lr * lr_ratio``) until the MAC
ratio at the initial nullifying threshold is within ``stop_limit`` of the target;
a threshold search then picks the global threshold that meets the target; the zero
groups are removed (decomposed layers become conv + 1x1, pruned ones lose channels,
WRN's first convs are merged with their matrix); the smaller network is fine-tuned,
by default with distillation from the original.

Work directory: ``baseline/`` (when ``model.weights`` is empty), ``search/``,
``compressed.safetensors`` (the network before fine-tuning; its metadata holds the
threshold, the ratio and the per-layer table), ``finetune/``, ``hinge.safetensors``
(the final network), ``metrics.json``, ``log.txt``. Every stage resumes.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from backends.base import LossSpec, OptimSpec
from compress_core.criteria import group_sparsity
from compress_core.fileio import atomic_write_json
from compress_core.ir import checkpoint, flops
from compress_core.recipes import hinge
from methods import common, distributed, report


class Search:
    """The proximal step after every SGD step and the per-epoch stopping rule."""

    def __init__(self, ctx: common.Context, model, place: hinge.Placement, base_macs: int, initial: dict):
        """``initial``: the parameters at attachment (balancing weights are computed from them,
        so a resumed run gets the same ones)."""
        h = ctx.cfg.hinge
        self.ctx, self.model, self.place, self.base_macs, self.h = ctx, model, place, base_macs, h
        self.names = hinge.param_names(place)
        self.weights = hinge.balancing(initial, place) if h.layer_balancing else None
        self.lam = h.reg
        self.ratios: list[dict] = []
        self.p1 = hinge.lr_adjusted(place, h.lr_adjust)
        self.grad_ratio = group_sparsity.GradRatio()
        self.grad_ratio_path = ctx.path("search", "grad_ratio.json")
        if self.p1 and os.path.exists(self.grad_ratio_path):  # a resumed search continues with its rho
            with open(self.grad_ratio_path) as f:
                vars(self.grad_ratio).update(json.load(f))

    def optim(self) -> OptimSpec:
        """Matrices at ``lr``, the rest at ``lr * lr_ratio``; with p1, the two families in their own
        rate groups and their gradients returned after every step."""
        s, fam = self.ctx.cfg.search, {f"{x.node}.weight": f"a{x.family}" for x in self.place.sparse}
        return OptimSpec(s.momentum, s.nesterov, lr_scale=dict.fromkeys(self.names, 1.0),
                         lr_scale_default=self.h.lr_ratio, lr_group=fam if self.p1 else {},
                         gradients_of=tuple(fam) if self.p1 else ())

    def on_step(self, lr: float, trainer) -> None:
        b = self.ctx.backend
        params = b.get_weights(self.model, self.names)
        h = self.h
        if self.p1:
            # the next step's rates (the reference adjusts the current one: one step of lag); the prox
            # below always uses the unscaled rate of the second family, as the reference
            self.grad_ratio.update(*hinge.gradient_norm_sums(trainer.gradients(), self.place))
            trainer.set_lr_factors(self.grad_ratio.scales())
        if h.anneal:
            self.lam = group_sparsity.anneal(h.reg, hinge.regulariser(params, self.place), h.anneal,
                                             h.anneal_t1, h.anneal_t2)
        b.set_weights(self.model, hinge.proximal_step(params, self.place, lr * self.lam, h.penalty, self.weights),
                      strict=False)

    def ratio(self) -> float:
        params = self.ctx.backend.get_weights(self.model)
        return hinge.mac_ratio(self.model.graph, params, self.place, self.h.threshold, self.base_macs,
                               self.h.remain, self.h.same_ratio)

    def on_epoch(self, epoch: int, trainer) -> bool:
        """Log the MAC ratio at the initial threshold; True (stop) once it is within ``stop_limit``."""
        if self.p1:
            trainer.set_lr_factors(self.grad_ratio.scales())
            if distributed.is_main():
                atomic_write_json(self.grad_ratio_path, vars(self.grad_ratio))
        if epoch == 0:
            return False
        r = self.ratio()
        row = {"epoch": epoch, "mac_ratio_at_tau0": r, "lambda": self.lam}
        if self.p1:
            row["grad_ratio"] = self.grad_ratio.rho
        self.ratios.append(row)
        self.ctx.dashboard.scalars("search", epoch, {"hinge/mac_ratio_at_tau0": r})
        common.log.info("[search] after epoch %d: MAC ratio at tau0=%g is %.4f (target %.4f, stop at %.4f)%s",
                        epoch, self.h.threshold, r, self.h.ratio, self.h.ratio + self.h.stop_limit,
                        f", gradient ratio {self.grad_ratio.rho:.3f}" if self.p1 else "")
        return r - self.h.ratio <= self.h.stop_limit


def search(ctx: common.Context, teacher) -> tuple[object, hinge.Placement, list[dict]]:
    """Attach the matrices and run the proximal-gradient search; returns the searched model."""
    h, b = ctx.cfg.hinge, ctx.backend
    graph, params, place = hinge.attach(teacher.graph, b.get_weights(teacher), h.init)
    model = b.build(graph, params)
    x = ctx.splits.val.x[:64]
    gap = float(np.max(np.abs(b.forward(teacher, x)[0] - b.forward(model, x)[0])))
    common.log.info("[search] %d sparsity matrices (%s); logits with them attached differ by %.2e",
                    len(place.sparse), place.family, gap)
    base = flops.count_macs(teacher.graph)
    runner = Search(ctx, model, place, base, params)
    if runner.p1:
        common.log.info("[search] learning rates adjusted by the gradient ratio of the two matrix families (p1)")
    state = common.fit(ctx, model, ctx.cfg.search, "search", on_step=runner.on_step, on_epoch=runner.on_epoch,
                       optim=runner.optim())
    stopped = "stopped" in state
    # compression starts from the search's last state, not from its best validation epoch
    b.set_weights(model, checkpoint.load_checkpoint(ctx.path("search", "last.safetensors"))[1])
    if not stopped:
        r = runner.ratio()
        runner.ratios.append({"epoch": ctx.cfg.search.epochs, "mac_ratio_at_tau0": r, "lambda": runner.lam})
        ctx.dashboard.scalars("search", ctx.cfg.search.epochs, {"hinge/mac_ratio_at_tau0": r})
        common.log.info("[search] stopped at the epoch limit %d: MAC ratio at tau0 %.4f", ctx.cfg.search.epochs, r)
    return model, place, runner.ratios


def print_layers(rows: list[dict]) -> str:
    head = (f"{'layer':<22}{'width':>12}{'MACs before':>14}{'MACs after':>13}{'params before':>15}"
            f"{'params after':>14}  form")
    lines = [head, "-" * len(head)]
    for r in rows:
        form = "decomposed" if r["decomposed"] else ("pruned" if r["width_after"] < r["width_before"] or
                                                      r["macs_after"] < r["macs_before"] else "")
        lines.append(f"{r['layer']:<22}{r['width_before']:>5} -> {r['width_after']:<4}{r['macs_before']:>14,}"
                     f"{r['macs_after']:>13,}{r['params_before']:>15,}{r['params_after']:>14,}  {form}")
    tb = [sum(r[k] for r in rows) for k in ("macs_before", "macs_after", "params_before", "params_after")]
    lines.append(f"{'total (conv + dense)':<34}{tb[0]:>14,}{tb[1]:>13,}{tb[2]:>15,}{tb[3]:>14,}")
    lines.append("MACs: one multiply-add = one MAC; a decomposed layer counts its conv and its 1x1 "
                 "(width: the conv's filters)")
    return "\n".join(lines)


def compress(ctx: common.Context, teacher):
    """Search, threshold search and surgery; resumes from ``compressed.safetensors``."""
    path = ctx.path("compressed.safetensors")
    if distributed.agree(os.path.exists(path)):
        common.log.info("compressed network found in %s: search skipped", path)
        graph, params, meta = checkpoint.load_checkpoint(path)
        return ctx.backend.build(graph, params), meta
    h = ctx.cfg.hinge
    model, place, ratios = search(ctx, teacher)
    params = ctx.backend.get_weights(model)
    base = flops.count_macs(teacher.graph)
    tau, ratio, how = hinge.search_threshold(model.graph, params, place, h.ratio, base, h.threshold,
                                             h.tolerance, h.remain, h.same_ratio)
    common.log.info("threshold search (%s): tau %.6g gives MAC ratio %.4f (target %.4f)", how, tau, ratio, h.ratio)
    if abs(ratio - h.ratio) > h.tolerance:
        common.log.warning("MAC ratio %.4f is %.4f from the target %.4f: the %.0f%% floor of surviving groups "
                           "or the search's sparsity does not allow closer", ratio, abs(ratio - h.ratio),
                           h.ratio, 100 * h.remain)
    graph, params = hinge.compress(model.graph, params, place, tau, h.remain, h.same_ratio)
    layers = hinge.layer_table(teacher.graph, graph)
    meta = {"method": "hinge", "tau": tau, "mac_ratio": ratio, "threshold_search": how,
            "search_epochs": ratios[-1]["epoch"] if ratios else 0, "search": ratios, "layers": layers}
    if distributed.is_main():
        checkpoint.save_checkpoint(path, graph, params, meta)
    return ctx.backend.build(graph, params), meta


def finetune(ctx: common.Context, student, teacher) -> None:
    h, f = ctx.cfg.hinge, ctx.cfg.finetune
    if h.distill:
        loss = LossSpec(weight_decay=f.weight_decay, ce_weight=h.ce_weight, kd_weight=h.kd_weight,
                        kd_temperature=h.kd_temperature)

        def extras(x):
            return {"teacher_logits": ctx.backend.forward(teacher, x)[0]}

        common.fit(ctx, student, f, "finetune", loss=loss, batch_extras=extras)
    else:
        common.fit(ctx, student, f, "finetune")


def run(ctx: common.Context) -> dict:
    cfg = ctx.cfg
    teacher = common.start_model(ctx)
    student, meta = compress(ctx, teacher)
    print(print_layers(meta["layers"]))
    rows = [common.summary_row(ctx, "baseline", teacher), common.summary_row(ctx, "compressed", student)]
    finetune(ctx, student, teacher)
    rows.append(common.summary_row(ctx, "fine-tuned", student))
    export = ctx.path("hinge.safetensors")
    common.save_model(ctx.backend, student, export, method="hinge", tau=meta["tau"])
    base = rows[0]
    # the compressed and fine-tuned rows are one architecture (one model object): timed once
    report.add_latencies(ctx.backend, rows, [teacher, student, student], 20)
    print(report.format_table(rows))
    print(f"target MAC ratio {cfg.hinge.ratio}, reached {meta['mac_ratio']:.4f} at threshold {meta['tau']:.6g} "
          f"after {meta['search_epochs']} search epochs (MACs: one multiply-add = one MAC)")
    metrics = {"backend": ctx.backend.name, "rows": rows, "target_ratio": cfg.hinge.ratio,
               "mac_ratio": rows[2]["macs"] / base["macs"], "params_ratio": rows[2]["params"] / base["params"],
               "tau": meta["tau"], "threshold_search": meta["threshold_search"],
               "search_epochs": meta["search_epochs"], "search": meta["search"], "layers": meta["layers"],
               "checkpoint": export}
    common.write_metrics(ctx, metrics)
    return metrics


def check(ctx: common.Context) -> None:
    """The placement of the model's matrices, before any work (and p1's need for two families)."""
    place = hinge.placement(common.start_graph(ctx))
    hinge.lr_adjusted(place, ctx.cfg.hinge.lr_adjust)


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "hinge_resnet20_digits.py", argv, check=check)


if __name__ == "__main__":
    sys.exit(cli())
