"""CDC pruning: ``python -m methods.cdc_prune --backend tf|torch [--config hyperparams/cdc_*.py]``.

Class-discriminative compression (Liu, Wentzlaff, Kung, ICPR 2022): score every
channel at the post-BN-ReLU input of each convolution by how well it separates
the classes (one-versus-rest, averaged over classes), coarse labels for early
blocks and fine labels for later ones; keep the best channels of every mask;
fine-tune; optionally distil from the unpruned network (``methods.cdc_distill``).

Work directory: ``baseline/`` (when no ``model.weights`` is given), ``scores.npz``
and ``pruned.safetensors`` (scores, kept channels, the pruned network before
fine-tuning), ``finetune/``, ``distill/``, ``metrics.json``, ``widths.png``, ``log.txt``.
Every stage resumes from what an earlier run left there.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from compress_core import data
from compress_core.criteria import discriminant
from compress_core.fileio import atomic_write_npz
from compress_core.ir import checkpoint, flops
from compress_core.recipes import cdc
from methods import common, distributed, report
from methods.cdc_distill import (
    check_cdc,
    coarse_groups_for,
    distill,
    pinned_blocks,
    plan_multiple,
    plan_runtime,
)

STREAMING = ("gsd", "abs_snr", "fdr", "t_test")


def score_channels(ctx: common.Context, model, points, groups) -> list[np.ndarray]:
    """One pass over the training split (no augmentation): a score per channel of every mask.

    For the streaming scorers the backend reduces every tap to a per-image sum and
    norm next to the convolutions; a bounded buffer of those is folded into
    per-class moments (``ClassStats``), so memory does not grow with the number of
    images. ``di`` needs each channel's full spatial scatter and keeps the features
    of its taps.
    """
    c = ctx.cfg.cdc
    fine_k = ctx.splits.num_classes

    def level(p):
        return "coarse" if groups is not None and p.block <= c.block_threshold else "fine"

    def labels(lvl, y):
        return groups[y] if lvl == "coarse" else y

    keys = sorted({(p.tap, level(p)) for p in points})
    shapes = model.graph.shapes()
    num = {"fine": fine_k, "coarse": int(groups.max()) + 1 if groups is not None else 0}
    taps = sorted({t for t, _ in keys})
    streaming = c.scorer in STREAMING
    # in a data-parallel run each rank reads every N-th batch and the class statistics are merged;
    # di keeps whole feature maps, so each rank reads everything
    rank, world = distributed.share() if streaming else (0, 1)
    batches = data.iterate_batches(ctx.splits.train, c.score_batch_size, False, stride=(rank, world))
    total = len(range(rank, data.num_batches(len(ctx.splits.train), c.score_batch_size), world))
    bn_batch = c.bn_mode == "batch"
    if streaming:
        # channels are scored independently, so the taps of one label level and one map size share one
        # accumulator (their channels side by side): a few updates per batch instead of one per tap
        positions = {t: int(np.prod(shapes[t][1:])) for t in taps}
        bundles: dict[tuple[str, int], list[str]] = {}
        for t, lvl in keys:
            bundles.setdefault((lvl, positions[t]), []).append(t)
        stats = {b: discriminant.ClassStats(num[b[0]], sum(shapes[t][0] for t in ts)) for b, ts in bundles.items()}
        # per-image sums wait in a bounded buffer and are merged a few thousand images at a time:
        # one merge per batch and bundle was ~20% of a digits scoring pass
        pending: list = []
        per_image = sum(shapes[t][0] for t in taps)  # buffered values per image (sum and norm each)
        for acts, y in tqdm(ctx.backend.stream_sums(model, batches, taps, bn_batch), total=total,
                            desc="scoring", leave=False, disable=distributed.quiet()):
            pending.append((acts, y))
            if sum(len(y) for _, y in pending) * per_image >= _MERGE_VALUES:
                _merge(stats, bundles, pending, labels)
                pending = []
        _merge(stats, bundles, pending, labels)
        if distributed.active():
            _merge_ranks(stats)
        result = {}
        for b, ts in bundles.items():
            scores = stats[b].scores(c.scorer, c.ridge)
            bounds = np.cumsum([0] + [shapes[t][0] for t in ts])
            result.update({(t, b[0]): scores[lo:hi] for t, lo, hi in zip(ts, bounds[:-1], bounds[1:])})
    else:
        feats = {key: [] for key in keys}
        for acts, y in tqdm(ctx.backend.stream(model, batches, taps, bn_batch), total=total,
                            desc="scoring", leave=False, disable=distributed.quiet()):
            for key in keys:
                feats[key].append((acts[key[0]], labels(key[1], y)))
        result = {key: discriminant.di_scores(np.concatenate([f for f, _ in v]), np.concatenate([y for _, y in v]),
                                             **({} if c.ridge is None else {"rho": c.ridge}))
                  for key, v in feats.items()}
    return [result[(p.tap, level(p))] for p in points]


_MERGE_VALUES = 1 << 22  # per-image sums and norms buffered before a ClassStats merge (32 MB)


def _merge(stats: dict, bundles: dict, pending: list, labels) -> None:
    """Fold buffered ``(per-tap (sum, norm, count), labels)`` batches into the bundles' accumulators."""
    if not pending:
        return
    y = np.concatenate([y for _, y in pending])
    for (lvl, p), ts in bundles.items():
        sums, norms = (np.concatenate([np.concatenate([a[t][j] for t in ts], axis=1) for a, _ in pending])
                       for j in (0, 1))
        stats[(lvl, p)].update_sums(sums, norms, p, labels(lvl, y))


def _merge_ranks(stats: dict) -> None:
    """Every rank's class statistics folded in rank order (Chan's merge): the same totals on every rank,
    those of one pass over all batches up to float64 round-off."""
    for key in sorted(stats):
        merged = discriminant.ClassStats(stats[key].num_classes, stats[key].num_channels)
        for moments in distributed.gather(stats[key].moments()):
            merged.merge(*moments)
        stats[key] = merged


def plan_counts(ctx: common.Context, graph, points, scores) -> list[int]:
    c = ctx.cfg.cdc
    if c.plan == "predefined":
        return cdc.check_counts(points, list(c.widths), c.min_width)  # its zeros checked before work (check_cdc)
    if c.plan == "depth":
        counts, removed = cdc.depth_counts(graph, points, scores, c.mac_target, pinned_blocks(ctx, graph))
        common.log.info("depth plan: %d residual blocks removed (%s) for the MAC target %.3f: %.1f%% of the MACs",
                        len(removed), ", ".join(removed), c.mac_target,
                        100 * cdc.macs_after(graph, points, counts) / flops.count_macs(graph))
        common.log.info("depth plan widths, to repeat them: --config.cdc.plan=predefined "
                        "'--config.cdc.widths=(%s)'", ",".join(map(str, counts)))
        return counts
    if c.plan == "latency":
        return latency_counts(ctx, graph, points)
    ratio, multiple = c.ratio, plan_multiple(ctx, graph, points)
    if c.plan == "macs":
        ratio = cdc.ratio_for_macs(graph, points, c.mac_target, c.min_width, multiple, c.stream)
        common.log.info("uniform ratio %.4f meets the MAC target %.3f (widths multiples of %d%s)", ratio,
                        c.mac_target, multiple,
                        f", measured: --config.cdc.multiple={multiple} repeats it" if c.multiple == 0 else "")
    counts = cdc.uniform_counts(points, ratio, c.min_width, multiple)
    for p, k in zip(points, counts):
        if k == p.width:
            common.log.info("mask at '%s' keeps all %d channels (ratio %.3f removes none)", p.conv, k, ratio)
    return counts


def latency_counts(ctx: common.Context, graph, points) -> list[int]:
    """The latency plan (``cdc.plan=latency``): the widths at ``cdc.mac_target`` that run fastest on
    ``cdc.latency_runtime`` (:func:`compress_core.recipes.cdc.latency_counts`; random weights: the time
    depends on the shapes only). Rank 0 times; the others wait and receive the widths."""
    from compress_core.ir.init import init_params

    c = ctx.cfg.cdc
    runtime, backend = plan_runtime(ctx)
    counts, multiple = np.zeros(len(points), np.int64), plan_multiple(ctx, graph, points)
    if distributed.is_main():
        params = init_params(graph, ctx.cfg.seed)
        done = [0]

        def measure(plans):
            nets = [cdc.network(graph, params, points, k, c.stream) for k in plans]
            done[0] += len(nets)
            common.log.info("latency plan: timing %d networks on %s at batch %d (%d so far)", len(nets), runtime,
                            c.latency_batch, done[0])
            return report.networks_ms(runtime, nets, c.latency_batch, c.latency_repeats, backend)

        found = cdc.latency_counts(graph, points, c.mac_target, measure, c.min_width, multiple, c.stream)
        s = found.search
        for tier, opts, j, saved in zip(found.tiers, found.options, s.choice, s.saved):
            common.log.info("latency plan: %d mask(s) from '%s' keep %d of %d channels (alone saves %.2f ms)",
                            len(tier), points[tier[0]].conv, opts[j][0], points[tier[0]].width, saved[j])
        common.log.info("latency plan on %s at batch %d: %.2f ms at %.1f%% of the MACs (%s); the uniform plan "
                        "(ratio %.3f) %.2f ms; the whole network %.2f ms", runtime, c.latency_batch, s.ms,
                        100 * s.macs / flops.count_macs(graph), "the greedy plan" if s.choice == s.greedy
                        else "the uniform plan was faster", found.uniform_ratio, s.baseline_ms, s.base_ms)
        common.log.info("latency plan widths, to repeat them: --config.cdc.plan=predefined "
                        "'--config.cdc.widths=(%s)'", ",".join(map(str, found.counts)))
        counts[:] = found.counts
    return [int(k) for k in distributed.broadcast([counts])[0]]


def prune(ctx: common.Context, teacher):
    """Score, plan and cut; resumes from ``pruned.safetensors`` when present."""
    path, scores_path = ctx.path("pruned.safetensors"), ctx.path("scores.npz")
    graph = teacher.graph
    points = cdc.mask_points(graph)
    groups = coarse_groups_for(ctx, teacher)
    if distributed.agree(os.path.exists(path) and os.path.exists(scores_path)):
        common.log.info("pruned network found in %s: scoring skipped", path)
        saved = np.load(scores_path)
        keeps = [saved[f"keep_{i}"] for i in range(len(points))]
        return common.load_model(ctx.backend, path), points, keeps, groups
    scores = score_channels(ctx, teacher, points, groups)
    keeps = cdc.select_top(points, scores, plan_counts(ctx, graph, points, scores), ctx.cfg.cdc.stream)
    small, params = cdc.apply(graph, ctx.backend.get_weights(teacher), points, keeps, ctx.cfg.cdc.stream)
    if distributed.is_main():
        atomic_write_npz(scores_path, groups=groups if groups is not None else np.zeros(0, np.int64),
                         **{f"score_{i}": s for i, s in enumerate(scores)}, **{f"keep_{i}": k for i, k in enumerate(keeps)})
        checkpoint.save_checkpoint(path, small, params, {"method": "cdc", "from": graph.arch})
    return ctx.backend.build(small, params), points, keeps, groups


def plot_widths(path: str, layers: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers)), 3.5))
    x = np.arange(len(layers))
    ax.bar(x, [r["before"] for r in layers], color="#cccccc", label="before")
    ax.bar(x, [r["after"] for r in layers], color="#1f77b4", label="kept")
    ax.set_xticks(x, [r["conv"] for r in layers], rotation=90, fontsize=6)
    ax.set_ylabel("input channels")
    ax.set_title("CDC: channels kept per mask")
    ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run(ctx: common.Context) -> dict:
    teacher = common.start_model(ctx)
    student, points, keeps, groups = prune(ctx, teacher)
    rows = [common.summary_row(ctx, "baseline", teacher), common.summary_row(ctx, "pruned, not fine-tuned", student)]
    common.fit(ctx, student, ctx.cfg.finetune, "finetune")
    rows.append(common.summary_row(ctx, "fine-tuned", student))
    if ctx.cfg.distill.enabled:
        distill(ctx, student, teacher, groups)
        rows.append(common.summary_row(ctx, "distilled", student))
    # the pruned, fine-tuned and distilled rows are one architecture (one model object): timed once,
    # in turns with the baseline
    report.add_latencies(ctx.backend, rows, [teacher] + [student] * (len(rows) - 1), 20)
    layers = [{"conv": p.conv, "mode": p.mode, "block": p.block, "before": p.width, "after": len(k)}
              for p, k in zip(points, keeps)]
    table = report.format_table(rows)
    print(table)
    print("kept input channels per mask: " + ", ".join(f"{r['conv']} {r['after']}/{r['before']}" for r in layers))
    if distributed.is_main():
        plot_widths(ctx.path("widths.png"), layers)
    base = flops.count_macs(teacher.graph)
    metrics = {"backend": ctx.backend.name, "rows": rows, "layers": layers,
               "mac_fraction": rows[-1]["macs"] / base,
               "coarse_groups": None if groups is None else groups.tolist(),
               "checkpoint": ctx.path("distill" if ctx.cfg.distill.enabled else "finetune", "best.safetensors")}
    common.write_metrics(ctx, metrics)
    return metrics


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "cdc_resnet20_digits.py", argv, check=check_cdc)


if __name__ == "__main__":
    sys.exit(cli())
