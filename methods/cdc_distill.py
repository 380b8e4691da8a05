"""CDC distillation: ``python -m methods.cdc_distill --backend tf|torch --student P --teacher T``.

Trains a pruned student against its unpruned teacher with
``CE + weight decay + KD + DCA``: KD is ``kd_weight * T^2 * KL`` at temperature
``T``; the DCA term is ``dca_weight * mean((F_s P_s - F_t W_t)^2)`` on the
flattened output of ``distill.dca_tap``, where ``W_t`` is the teacher's DCA
subspace and ``P_s = W_s R`` the student's, rotated onto the teacher's
projections by orthogonal Procrustes (independent fits differ by signs and
rotations, which would make the targets arbitrary). Both subspaces are fitted on
the *training* split; the student's is refitted every ``dca_refit_every`` epochs.
Writes ``distill/`` checkpoints and ``metrics.json`` to the work directory.
"""

from __future__ import annotations

import sys

import numpy as np

from backends.base import LossSpec
from compress_core import data
from compress_core.criteria.dca import ScatterStats, align_subspace
from compress_core.errors import UserError
from compress_core.recipes import cdc
from methods import common

ALIGN_IMAGES = 2048  # training images used to fit the Procrustes rotation


def uses_coarse_labels(cfg) -> bool:
    """Coarse labels score the early blocks (``cdc.block_threshold >= 0``) or fit the DCA subspaces."""
    dc = cfg.distill
    return cfg.cdc.block_threshold >= 0 or (dc.enabled and dc.dca_weight > 0 and dc.dca_labels == "coarse")


def coarse_groups_for(ctx: common.Context, teacher) -> np.ndarray | None:
    """The class -> coarse group map: from ``cdc.coarse_labels``, else clustered from the
    teacher's confusions on the validation split; ``None`` when nothing uses coarse labels."""
    c = ctx.cfg.cdc
    if not uses_coarse_labels(ctx.cfg):
        return None
    k = ctx.splits.num_classes
    if c.coarse_labels:
        groups = cdc.load_coarse_groups(c.coarse_labels, k)
    else:
        if c.num_coarse < 2:
            raise UserError("coarse labels are needed: set cdc.coarse_labels or cdc.num_coarse >= 2")
        logits = ctx.backend.predict(teacher, (x for x, _ in data.iterate_batches(ctx.splits.val, 256, False)))
        groups = cdc.coarse_groups(cdc.confusion_matrix(logits, ctx.splits.val.y, k), c.num_coarse, ctx.cfg.seed)
    common.log.info("coarse groups of the %d classes: %s", k, groups.tolist())
    return groups


def _flat_taps(backend, model, tap: str, dataset, limit: int | None = None):
    n = len(dataset) if limit is None else min(limit, len(dataset))
    batches = data.iterate_batches(dataset.subset(np.arange(n)), 256, False)
    for acts, y in backend.stream(model, batches, [tap]):
        yield acts[tap].reshape(len(y), -1), y


def fit_subspace(backend, model, tap: str, dataset, labels_of, who: str = "model") -> np.ndarray:
    """DCA subspace ``[D, k]`` of ``model``'s flattened ``tap`` output over ``dataset``, with ``k`` =
    ``ScatterStats.components()``: the number of label groups, fewer when their means span fewer than
    ``k - 1`` dimensions, 0 (a ``[D, 0]`` array) when the means coincide, e.g. an all-zero tap."""
    stats = None
    for f, y in _flat_taps(backend, model, tap, dataset):
        stats = stats or ScatterStats(f.shape[1])
        stats.update(f, labels_of(y))
    k, groups = stats.components(), int((stats.counts > 0).sum())
    if k < min(groups, stats.dim):
        common.log.warning("%s: the class means on '%s' span %d dimension(s): fitting the %d DCA component(s) "
                           "that exist, not %d", who, tap, stats.rank(), k, min(groups, stats.dim))
    return stats.subspace(k) if k else np.zeros((stats.dim, 0))


def distill(ctx: common.Context, student, teacher, groups: np.ndarray | None, stage: str = "distill") -> dict:
    """Distil ``teacher`` into ``student`` (both live models); returns the training state."""
    dc, backend, train = ctx.cfg.distill, ctx.backend, ctx.splits.train
    w_t = None
    if dc.dca_weight:
        for m in (student, teacher):
            m.graph[dc.dca_tap]  # an unknown tap fails here, with its name

        def labels_of(y):
            return groups[y] if dc.dca_labels == "coarse" else y

        w_t = fit_subspace(backend, teacher, dc.dca_tap, train, labels_of, f"[{stage}] teacher")
        if w_t.shape[1]:
            common.log.info("[%s] teacher DCA subspace %s on '%s' (%s labels)", stage, w_t.shape, dc.dca_tap,
                            dc.dca_labels)
        else:
            common.log.warning("[%s] the teacher has no DCA component on '%s': distilling without the DCA term",
                               stage, dc.dca_tap)
            w_t = None
    loss = LossSpec(weight_decay=dc.weight_decay, kd_weight=dc.kd_weight, kd_temperature=dc.kd_temperature,
                    feature_weight=dc.dca_weight if w_t is not None else 0.0,
                    feature_tap=dc.dca_tap if w_t is not None else "")
    # the teacher basis matched by the current student projection (set by refit)
    fitted = {"epoch": None, "basis": None}

    def batch_extras(x):
        logits, acts = backend.forward(teacher, x, [dc.dca_tap] if w_t is not None else [])
        out = {"teacher_logits": logits}
        if w_t is not None:
            out["feature_target"] = acts[dc.dca_tap].reshape(len(x), -1) @ fitted["basis"]
        return out

    def refit(epoch, trainer):
        if w_t is None or (fitted["epoch"] is not None and epoch % dc.dca_refit_every):
            return
        w_s = fit_subspace(backend, student, dc.dca_tap, train, labels_of, f"[{stage}] student")
        # targets and projection need one width: the leading components both models have
        k = min(w_s.shape[1], w_t.shape[1])
        if k < max(w_s.shape[1], w_t.shape[1]):
            common.log.warning("[%s] the student has %d DCA component(s), the teacher %d: matching %d", stage,
                               w_s.shape[1], w_t.shape[1], k)
        if k:
            z_s = np.concatenate([f @ w_s[:, :k]
                                  for f, _ in _flat_taps(backend, student, dc.dca_tap, train, ALIGN_IMAGES)])
            z_t = np.concatenate([f @ w_t[:, :k]
                                  for f, _ in _flat_taps(backend, teacher, dc.dca_tap, train, ALIGN_IMAGES)])
            trainer.set_projection(w_s[:, :k] @ align_subspace(z_s, z_t))
            fitted["basis"] = w_t[:, :k]
        else:
            # the loss keeps its feature term: a zero projection against a zero target makes it 0,
            # with no gradient, until a refit finds a component
            trainer.set_projection(np.zeros((w_s.shape[0], 1)))
            fitted["basis"] = np.zeros((w_t.shape[0], 1))
            common.log.warning("[%s] DCA term off until the next refit", stage)
        fitted["epoch"] = epoch
        common.log.info("[%s] student DCA subspace refitted at epoch %d (%d components)", stage, epoch, k)

    return common.fit(ctx, student, dc, stage, loss, batch_extras, refit)


def run(ctx: common.Context) -> dict:
    teacher = common.load_model(ctx.backend, ctx.args.teacher, ctx.splits)
    student = common.load_model(ctx.backend, ctx.args.student, ctx.splits)
    state = distill(ctx, student, teacher, coarse_groups_for(ctx, teacher))
    metrics = {"teacher": ctx.args.teacher, "student": ctx.args.student, "backend": ctx.backend.name,
               **common.cost(student), "best_epoch": state["best_epoch"]}
    for split in ("val", "test"):
        for name, m in (("teacher", teacher), ("student", student)):
            metrics[f"{name}_{split}_accuracy"] = common.evaluate(ctx.backend, m, getattr(ctx.splits, split))["accuracy"]
    common.log.info("distilled student: val %.2f%%, test %.2f%% (teacher %.2f%%, %.2f%%)",
                    metrics["student_val_accuracy"], metrics["student_test_accuracy"],
                    metrics["teacher_val_accuracy"], metrics["teacher_test_accuracy"])
    common.write_metrics(ctx, metrics)
    return metrics


def _flags(p):
    p.add_argument("--student", required=True, help="pruned checkpoint (e.g. <cdc_prune workdir>/finetune/best.safetensors)")
    p.add_argument("--teacher", required=True, help="the unpruned checkpoint")


def plan_runtime(ctx: common.Context) -> tuple[str, object]:
    """Where the plan's widths are timed: the backend, or ``cdc.latency_runtime`` of a latency plan, with the
    job's backend instance when it is that runtime (None: another one, e.g. ONNX Runtime)."""
    c = ctx.cfg.cdc
    runtime = c.latency_runtime if c.plan == "latency" and c.latency_runtime != "backend" else ctx.backend.name
    return runtime, ctx.backend if runtime == ctx.backend.name else None


def plan_multiple(ctx: common.Context, graph, points) -> int:
    """The width multiple of the plan for ``graph``: ``cdc.multiple``, or with 0 the step of the conv kernels
    measured where the plan is timed (:func:`plan_runtime`; :func:`methods.kernel_widths.measured_multiple`),
    halved while a MAC target cannot be reached with it (a net too narrow for it). Rank 0 measures, the others
    receive it."""
    from methods import distributed, kernel_widths
    c = ctx.cfg.cdc
    if c.multiple > 0:
        return int(c.multiple)
    m = np.zeros(1, np.int64)
    if distributed.is_main():
        m[0] = kernel_widths.measured_multiple(*plan_runtime(ctx), common.log)
    m = int(distributed.broadcast([m])[0][0])
    while m > 1 and c.plan in ("macs", "latency"):
        try:
            cdc.ratio_for_macs(graph, points, c.mac_target, c.min_width, m, c.stream)
            break
        except UserError:
            common.log.info("widths rounded to %d cannot reach the MAC target %.3f of %s: trying %d", m,
                            c.mac_target, graph.arch, m // 2)
            m //= 2
    return m


def pinned_blocks(ctx: common.Context, graph) -> list[str]:
    """The residual blocks a plan must not remove: the one holding the DCA tap, when the job distils with it."""
    from compress_core.surgery import blocks_holding
    dc = ctx.cfg.distill
    return sorted(blocks_holding(graph, [dc.dca_tap])) if dc.enabled and dc.dca_weight > 0 else []


def check_cdc(ctx: common.Context, graphs=(), prune: bool = True, teacher=None) -> None:
    """CDC's checks that need the data or the networks, before any work: the masks of the model
    (a predefined plan's widths, a MAC target the plan can reach, the coarse-label threshold against its
    blocks, with ``prune``), the
    coarse labels against the number of classes, the DCA tap in the teacher and in ``graphs`` (e.g.
    a given student)."""
    c, dc, k = ctx.cfg.cdc, ctx.cfg.distill, ctx.splits.num_classes
    teacher = common.start_graph(ctx) if teacher is None else teacher
    if prune:
        points = cdc.mask_points(teacher)
        blocks = points[-1].block + 1
        if c.plan == "predefined" and len(c.widths) != len(points):
            raise UserError(f"cdc.plan=predefined needs cdc.widths with one width per mask ({len(points)} for "
                            f"{teacher.arch}), got {len(c.widths)} widths")
        if c.plan == "predefined":
            removed = cdc.removed_blocks(teacher, points, cdc.check_counts(points, list(c.widths), c.min_width))
            held = sorted(set(removed) & set(pinned_blocks(ctx, teacher)))
            if held:
                raise UserError(f"cdc.widths removes the block closed by '{held[0]}', which holds distill.dca_tap "
                                f"'{ctx.cfg.distill.dca_tap}'")
        if c.plan == "depth":  # no removable block, or not enough of them for the target
            cdc.depth_counts(teacher, points, [np.zeros(p.width) for p in points], c.mac_target,
                             pinned_blocks(ctx, teacher))
        if c.plan in ("macs", "latency"):  # an unreachable target fails here, not after the baseline's training
            cdc.ratio_for_macs(teacher, points, c.mac_target, c.min_width, plan_multiple(ctx, teacher, points),
                               c.stream)
        if c.plan == "latency" and c.latency_runtime == "ort":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                raise UserError("cdc.latency_runtime=ort needs onnxruntime (pip install onnxruntime)") from None
        if c.block_threshold >= blocks:
            raise UserError(f"config field 'cdc.block_threshold' is {c.block_threshold}, past the last block of "
                            f"{teacher.arch} (blocks 0..{blocks - 1}; -1 for fine labels everywhere)")
    coarse = uses_coarse_labels(ctx.cfg)
    if coarse and c.coarse_labels:
        cdc.load_coarse_groups(c.coarse_labels, k)
    elif coarse and not 2 <= c.num_coarse < k:
        raise UserError(f"config field 'cdc.num_coarse' is {c.num_coarse}: coarse labels need 2 to {k - 1} groups "
                        f"of the {k} classes (or a cdc.coarse_labels file)")
    if dc.dca_weight > 0:
        for g in (teacher, *graphs):
            if dc.dca_tap not in g:
                raise UserError(f"distill.dca_tap '{dc.dca_tap}' is not a layer of '{g.arch}' "
                                f"(e.g. {', '.join(n.name for n in g.of_op('relu')[-3:])})")


def check(ctx: common.Context) -> None:
    """:func:`check_cdc`, with the DCA tap checked in the given student too."""
    check_cdc(ctx, [common.checkpoint_graph(ctx.args.student, ctx.splits)], prune=False,
              teacher=common.checkpoint_graph(ctx.args.teacher, ctx.splits))


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "cdc_resnet20_digits.py", argv, extra=_flags,
                       subdir="distill_only", check=check)


if __name__ == "__main__":
    sys.exit(cli())
