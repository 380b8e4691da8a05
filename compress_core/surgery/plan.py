"""The planner every method shares: per-group scores in, kept unit indices out.

A method scores the units of the groups it wants to cut (higher = more worth
keeping); :func:`plan` decides how many units each group keeps and which:

* ``ratio``: every group removes ``floor(width * ratio)`` units (local ranking), or
  the lowest ``ratio`` of all units by normalised score (global ranking);
* ``ratios``: a ratio per group (local);
* ``counts``: a number of units per group (e.g. another method's widths);
* ``mac_target``: the fraction of the network's MACs to keep, met from below by
  bisection on the uniform ratio (local) or on a global score threshold (global),
  counted on the pruned graph with the flops counter.

Every group keeps at least ``min_width`` units; with a ``multiple`` its count is rounded
to the nearest multiple (at most its width). Within a group the highest scores win, ties to the lower index; the
kept indices come back sorted. Global ranking compares scores divided by their
group's mean (groups score on different scales), as Torch-Pruning's global pruning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.graph import Graph
from compress_core.surgery.groups import ChannelGroup, channel_groups, cuttable_group
from compress_core.surgery.prune import pruned_graph

RANKINGS = ("local", "global")


def round_width(keep: int, width: int, min_width: int = 1, multiple: int = 1) -> int:
    """``keep`` rounded to the nearest multiple of ``multiple`` (halves up, at least one multiple), raised
    to ``min_width`` (itself rounded up to a multiple), at most ``width``.

    Nearest, not up: a uniform ratio rounded up moves every group's width at the same ratios (ResNet-56's
    16/32/64 widths all drop by 8 at ratio 0.5), so a MAC target's search jumped from 65% of the MACs to
    25%; rounded to the nearest, the groups step at different ratios and the search lands near the target.
    """
    keep = max(int(keep), 1)
    if multiple > 1:
        keep = multiple * max(1, math.floor(keep / multiple + 0.5))
    least = max(int(min_width), 1)
    if keep < least:
        keep = multiple * math.ceil(least / multiple)
    return min(keep, width)


def top(scores, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores (ties: lower index first), sorted."""
    s = np.asarray(scores, np.float64)
    return np.sort(np.argsort(-s, kind="stable")[:count])


def _checked_scores(groups: Sequence[ChannelGroup], scores: Mapping[str, np.ndarray]) -> dict:
    by_id = {g.id: g for g in groups}
    out = {}
    for gid, s in scores.items():
        g = cuttable_group(by_id, gid, "scores")
        s = np.asarray(s, np.float64)
        if s.shape != (g.width,):
            raise UserError(f"scores['{gid}'] has shape {s.shape}, the group has {g.width} units")
        if not np.all(np.isfinite(s)):
            raise UserError(f"scores['{gid}'] has NaN or infinite values")
        out[gid] = s
    return out


def counts_for_ratio(widths: Mapping[str, int], ratio: float | Mapping[str, float], min_width: int = 1,
                     multiple: int = 1) -> dict[str, int]:
    """Units kept per group: ``width - floor(width * ratio)``, rounded (:func:`round_width`)."""
    out = {}
    for gid, w in widths.items():
        r = ratio[gid] if isinstance(ratio, Mapping) else ratio
        if not 0.0 <= r < 1.0:
            raise UserError(f"prune ratio of group '{gid}' must be in [0, 1), got {r}")
        out[gid] = round_width(w - math.floor(w * r), w, min_width, multiple)
    return out


def macs_with_counts(graph: Graph, counts: Mapping[str, int], groups: Sequence[ChannelGroup]) -> int:
    """MACs of ``graph`` with each group cut to ``counts[group]`` units (which ones does not matter)."""
    return flops.count_macs(pruned_graph(graph, {g: np.arange(k) for g, k in counts.items()}, groups))


def plan(graph: Graph, scores: Mapping[str, np.ndarray], *, ratio: float | None = None,
         ratios: Mapping[str, float] | None = None, counts: Mapping[str, int] | None = None,
         mac_target: float | None = None, min_width: int = 1,
         multiple: int = 1, ranking: str = "local", groups: Sequence[ChannelGroup] | None = None
         ) -> dict[str, np.ndarray]:
    """Kept unit indices per scored group (module docstring); exactly one of ``ratio``, ``ratios``,
    ``counts``, ``mac_target``. A MAC target the cut groups cannot reach is a :class:`UserError`."""
    groups = channel_groups(graph) if groups is None else groups
    s = _checked_scores(groups, scores)
    if sum(v is not None for v in (ratio, ratios, counts, mac_target)) != 1:
        raise UserError("a plan needs exactly one of ratio, ratios, counts and mac_target")
    if ranking not in RANKINGS:
        raise UserError(f"unknown ranking '{ranking}' (choose from: {', '.join(RANKINGS)})")
    if min_width < 1 or multiple < 1:
        raise UserError(f"min_width and multiple must be >= 1, got {min_width} and {multiple}")
    widths = {gid: v.size for gid, v in s.items()}
    if counts is not None:
        missing = sorted(set(s) - set(counts))
        if missing:
            raise UserError(f"counts has no count for group '{missing[0]}'")
        for gid in s:
            k = counts[gid]
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= widths[gid]:
                raise UserError(f"cannot keep {k!r} units of group '{gid}': it has {widths[gid]}")
        counts = {gid: round_width(counts[gid], widths[gid], min_width, multiple) for gid in s}
    elif ratios is not None:
        missing = sorted(set(s) - set(ratios))
        if missing:
            raise UserError(f"ratios has no ratio for group '{missing[0]}'")
        counts = counts_for_ratio(widths, {g: ratios[g] for g in s}, min_width, multiple)
    elif ranking == "global":
        norm = {gid: v / (np.mean(np.abs(v)) or 1.0) for gid, v in s.items()}
        if ratio is not None:
            if not 0.0 <= ratio < 1.0:
                raise UserError(f"prune ratio must be in [0, 1), got {ratio}")
            every = np.sort(np.concatenate(list(norm.values())))
            cut = every[math.floor(every.size * ratio) - 1] if math.floor(every.size * ratio) else -np.inf
            counts = _counts_above(norm, cut, min_width, multiple)
        else:
            counts = _global_for_macs(graph, groups, norm, mac_target, min_width, multiple)
    elif ratio is not None:
        counts = counts_for_ratio(widths, ratio, min_width, multiple)
    else:
        counts = counts_for_ratio(widths, ratio_for_macs(graph, groups, widths, mac_target, min_width, multiple),
                                  min_width, multiple)
    return {gid: top(v, counts[gid]) for gid, v in s.items()}


def _counts_above(norm: Mapping[str, np.ndarray], cut: float, min_width: int, multiple: int) -> dict[str, int]:
    return {gid: round_width(int(np.sum(v > cut)), v.size, min_width, multiple) for gid, v in norm.items()}


def bisect_ratio(cost: Callable[[float], int], limit: float, what: str, tol: float = 1e-3) -> float:
    """Smallest uniform ratio in ``[0, 0.999]`` whose ``cost(ratio)`` is at most ``limit`` (bisection;
    the cost falls as the ratio grows); a :class:`UserError` naming ``what`` when none reaches it."""
    lo, hi = 0.0, 0.999
    if cost(hi) > limit:
        raise UserError(f"{what} cannot be reached by cutting these channels")
    if cost(lo) <= limit:
        return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cost(mid) <= limit else (mid, hi)
    return hi


def ratio_for_macs(graph: Graph, groups: Sequence[ChannelGroup], widths: Mapping[str, int], mac_fraction: float,
                   min_width: int = 1, multiple: int = 1) -> float:
    """Smallest uniform ratio whose network has at most ``mac_fraction`` of ``graph``'s MACs (bisection)."""
    if not 0.0 < mac_fraction <= 1.0:
        raise UserError(f"MAC target must be a fraction in (0, 1], got {mac_fraction}")
    return bisect_ratio(lambda r: macs_with_counts(graph, counts_for_ratio(widths, r, min_width, multiple), groups),
                        mac_fraction * flops.count_macs(graph),
                        f"a MAC target of {mac_fraction:.3f} (minimum width {min_width}, multiple {multiple})")


def _global_for_macs(graph, groups, norm, mac_fraction, min_width, multiple) -> dict[str, int]:
    """Counts at the lowest global threshold whose network meets the MAC target (bisection over scores)."""
    if not 0.0 < mac_fraction <= 1.0:
        raise UserError(f"MAC target must be a fraction in (0, 1], got {mac_fraction}")
    target = mac_fraction * flops.count_macs(graph)
    cuts = np.concatenate([[-np.inf], np.unique(np.concatenate(list(norm.values())))])

    def macs(i):
        return macs_with_counts(graph, _counts_above(norm, cuts[i], min_width, multiple), groups)

    lo, hi = 0, len(cuts) - 1
    if macs(hi) > target:
        raise UserError(f"a MAC target of {mac_fraction:.3f} (minimum width {min_width}, multiple {multiple}) "
                        f"cannot be reached by cutting these channels")
    if macs(lo) <= target:
        return _counts_above(norm, cuts[lo], min_width, multiple)
    while hi - lo > 1:  # invariant: macs(lo) > target >= macs(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if macs(mid) <= target else (mid, hi)
    return _counts_above(norm, cuts[hi], min_width, multiple)
