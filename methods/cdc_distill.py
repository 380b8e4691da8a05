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
from compress_core import cdc, data
from compress_core.criteria.dca import ScatterStats, align_subspace
from compress_core.errors import UserError
from methods import common

ALIGN_IMAGES = 2048  # training images used to fit the Procrustes rotation


def coarse_groups_for(ctx: common.Context, teacher) -> np.ndarray | None:
    """The class -> coarse group map: from ``cdc.coarse_labels``, else clustered from the
    teacher's confusions on the validation split; ``None`` when nothing uses coarse labels."""
    c = ctx.cfg.cdc
    if c.block_threshold < 0 and ctx.cfg.distill.dca_labels != "coarse":
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


def fit_subspace(backend, model, tap: str, dataset, labels_of) -> np.ndarray:
    """DCA subspace ``[D, k]`` of ``model``'s flattened ``tap`` output over ``dataset``."""
    stats = None
    for f, y in _flat_taps(backend, model, tap, dataset):
        stats = stats or ScatterStats(f.shape[1])
        stats.update(f, labels_of(y))
    return stats.subspace()


def distill(ctx: common.Context, student, teacher, groups: np.ndarray | None, stage: str = "distill") -> dict:
    """Distil ``teacher`` into ``student`` (both live models); returns the training state."""
    dc, backend, train = ctx.cfg.distill, ctx.backend, ctx.splits.train
    loss = LossSpec(weight_decay=dc.weight_decay, kd_weight=dc.kd_weight, kd_temperature=dc.kd_temperature,
                    feature_weight=dc.dca_weight, feature_tap=dc.dca_tap if dc.dca_weight else "")
    w_t = None
    if dc.dca_weight:
        for m in (student, teacher):
            m.graph[dc.dca_tap]  # an unknown tap fails here, with its name

        def labels_of(y):
            return groups[y] if dc.dca_labels == "coarse" else y

        w_t = fit_subspace(backend, teacher, dc.dca_tap, train, labels_of)
        common.log.info("[%s] teacher DCA subspace %s on '%s' (%s labels)", stage, w_t.shape, dc.dca_tap,
                        dc.dca_labels)

    def batch_extras(x):
        logits, acts = backend.forward(teacher, x, [dc.dca_tap] if w_t is not None else [])
        out = {"teacher_logits": logits}
        if w_t is not None:
            out["feature_target"] = acts[dc.dca_tap].reshape(len(x), -1) @ w_t
        return out

    fitted = {"epoch": None}

    def refit(epoch, trainer):
        if w_t is None or (fitted["epoch"] is not None and epoch % dc.dca_refit_every):
            return
        w_s = fit_subspace(backend, student, dc.dca_tap, train, labels_of)
        z_s = np.concatenate([f @ w_s for f, _ in _flat_taps(backend, student, dc.dca_tap, train, ALIGN_IMAGES)])
        z_t = np.concatenate([f @ w_t for f, _ in _flat_taps(backend, teacher, dc.dca_tap, train, ALIGN_IMAGES)])
        k = min(w_s.shape[1], w_t.shape[1])
        rot = align_subspace(z_s[:, :k], z_t[:, :k])
        trainer.set_projection(w_s[:, :k] @ rot)
        fitted["epoch"] = epoch
        common.log.info("[%s] student DCA subspace refitted at epoch %d", stage, epoch)

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


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "cdc_resnet20_digits.py", argv, extra=_flags,
                       subdir="distill_only")


if __name__ == "__main__":
    sys.exit(cli())
