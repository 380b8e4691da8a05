"""CDC pruning logic on graphs (numpy): where channels are scored, how many are kept, the cut.

Where (:func:`mask_points`): as the reference, the scored features are the
post-BN-ReLU inputs of convolutions (ReLU6, hard-swish and SiLU count as ReLU, for
imported MobileNets and EfficientNets). Every ungrouped conv that reads such an output
(or a pooled one) gets one mask at its input, except the stem (it reads the image)
and a second reader of the same tensor (a projection shortcut shares its block's
tap). The channels a mask scores are a channel group of :mod:`compress_core.surgery`
(or several, for a concatenation). A mask is applied as:

* ``own``: the conv is the only reader of its group (a block's inner channels, VGG
  layers): the group is cut (the producing conv's filters, their BatchNorm, the
  reader's columns; a depthwise conv in between goes with them);
* shared (a residual stream, a DenseNet concatenation): with ``stream="select"``
  (the reference) the reader gets a ``select`` of the kept channels and the stream
  stays whole; with ``stream="group"`` the stream itself is cut as one group, scored
  by the sum of the scores of every mask that reads it (faster networks: no
  ``select`` per block), where the stream is one cuttable group.

A mask keeping no channels (``count`` 0) removes its residual block whole
(:func:`compress_core.surgery.remove_blocks`): allowed for the masks inside a block with an
identity shortcut, all of them at once (:func:`block_masks`). The depth plan (:func:`depth_counts`)
removes the blocks whose inner channels score lowest.

Blocks (for coarse-to-fine labels) come from the graph's structure
(:func:`compress_core.surgery.structure.block_index`): a residual network's block,
a chain network's conv, a DenseNet's dense layer; numbered in mask order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.graph import Graph
from compress_core.surgery import (
    channel_groups,
    prune,
    removable_blocks,
    remove_blocks,
    round_width,
    select_inputs,
    top,
    unit_indices,
)
from compress_core.surgery.depth import branch_nodes
from compress_core.surgery.groups import read_group
from compress_core.surgery.latency import LatencySearch, latency_search
from compress_core.surgery.plan import bisect_ratio
from compress_core.surgery.structure import block_index

STREAMS = ("select", "group")
#: the non-linearities whose outputs are taps (post-BN-activation features; ReLU in the reference)
ACTIVATIONS = ("relu", "relu6", "hardswish", "silu")


@dataclass(frozen=True)
class MaskPoint:
    conv: str            # the conv whose input channels are scored
    tap: str             # the node whose output is that input (post-BN-ReLU features)
    block: int           # block index, for coarse/fine labels
    own: bool            # the conv is the only reader of its channel group: cutting it cuts the group
    group: str | None    # the channel group of the tap (None: a concatenation of several)
    cuttable: bool       # the group can be cut (a stream that is not the network input or output)
    width: int           # channels before pruning
    unit: int = 1        # channels per unit of the group (a depthwise multiplier)

    @property
    def mode(self) -> str:
        """``outputs`` (the group is cut) or ``inputs`` (a shared stream read through a ``select``)."""
        return "outputs" if self.own else "inputs"


def mask_points(graph: Graph) -> list[MaskPoint]:
    groups = channel_groups(graph)
    blocks_of = block_index(graph)
    points, seen_taps, numbers = [], set(), {}
    for n in graph.of_op("conv"):
        tap = graph[n.inputs[0]]
        pooled = tap.op in ("maxpool", "avgpool") and graph[tap.inputs[0]].op in ACTIVATIONS
        if not (tap.op in ACTIVATIONS or pooled) or tap.name in seen_taps or n.attrs["groups"] != 1:
            continue
        seen_taps.add(tap.name)
        width = graph.in_channels(n.name)
        group, own, cuttable, unit = None, False, False, 1
        found = read_group(groups, n.name, width)
        if found is not None:
            g, m = found
            group, unit, cuttable = g.id, m.size, g.cuttable
            own = cuttable and not [r for r in g.readers if r.node != n.name and r.kind not in ("grouped", "diagonal")]
        block = numbers.setdefault(blocks_of[n.name], len(numbers))
        points.append(MaskPoint(n.name, tap.name, block, own, group, cuttable, width, unit))
    if not points:
        raise UserError(f"model '{graph.arch}' has no convolution reading post-BN-ReLU features to prune")
    return points


def uniform_counts(points: Sequence[MaskPoint], ratio: float, min_width: int = 1,
                   multiple: int = 1) -> list[int]:
    """Channels kept per mask: ``C - floor(C * ratio)``, then :func:`~compress_core.surgery.round_width`
    (in whole units of the mask's group)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"prune ratio must be in [0, 1), got {ratio}")
    return [p.unit * round_width(w - math.floor(w * ratio), w, min_width, multiple)
            for p, w in ((p, p.width // p.unit) for p in points)]


def check_counts(points: Sequence[MaskPoint], counts: Sequence[int], min_width: int = 1) -> list[int]:
    """Validate a predefined plan: one count per mask, each in ``[max(1, min_width), width]``, or 0 (the
    mask's block removed: which blocks can be is the graph's to say, :func:`removed_blocks`)."""
    if len(counts) != len(points):
        raise UserError(f"predefined plan has {len(counts)} widths, the model has {len(points)} masks "
                        f"({', '.join(p.conv for p in points[:3])}, ...)")
    for p, k in zip(points, counts):
        ok = isinstance(k, (int, np.integer)) and (k == 0 or max(1, min_width) <= k <= p.width) and k % p.unit == 0
        if not ok:
            raise UserError(f"cannot keep {k!r} input channels of '{p.conv}': it has {p.width} "
                            f"(in units of {p.unit}) and the minimum width is {min_width} (0: remove its block)")
    return [int(k) for k in counts]


def block_masks(graph: Graph, points: Sequence[MaskPoint]) -> dict[str, list[int]]:
    """``{add: indices of the masks inside the block}`` of every removable block (an identity shortcut,
    :func:`compress_core.surgery.removable_blocks`) with a mask inside: a mask is inside when its conv is."""
    out = {}
    for b in removable_blocks(graph):
        inside = branch_nodes(graph, b)
        idx = [i for i, p in enumerate(points) if p.conv in inside]
        if idx:
            out[b.add] = idx
    return out


def removed_blocks(graph: Graph, points: Sequence[MaskPoint], counts: Sequence) -> list[str]:
    """The ``add`` of every block a plan removes (its masks keep 0 channels; ``counts``: numbers or kept
    index arrays); a mask keeping nothing outside a removable block, or a block removed in part, is refused."""
    sizes = [k if isinstance(k, (int, np.integer)) else len(k) for k in counts]
    zero = {i for i, k in enumerate(sizes) if k == 0}
    if not zero:
        return []
    blocks = block_masks(graph, points)
    out = [a for a, idx in blocks.items() if zero & set(idx)]
    for a in out:
        if not set(blocks[a]) <= zero:
            kept = next(points[i].conv for i in blocks[a] if i not in zero)
            raise UserError(f"the block closed by '{a}' is removed in part: '{kept}' keeps channels "
                            f"(every mask of a removed block keeps 0)")
    stray = zero - {i for a in out for i in blocks[a]}
    if stray:
        raise UserError(f"'{points[min(stray)].conv}' cannot keep 0 channels: it is not inside a residual block "
                        f"with an identity shortcut (only those can be removed whole)")
    return out


def _unit_scores(p: MaskPoint, scores) -> np.ndarray:
    return np.asarray(scores, np.float64).reshape(-1, p.unit).sum(axis=1)


def shared_groups(points: Sequence[MaskPoint], stream: str = "select") -> dict[str, list[int]]:
    """The shared groups cut as a whole: ``{group: indices of the masks reading it}`` (``stream="group"``
    only; a concatenation or a pinned stream stays a ``select`` per mask)."""
    if stream not in STREAMS:
        raise UserError(f"unknown stream mode '{stream}' (choose from: {', '.join(STREAMS)})")
    out: dict[str, list[int]] = {}
    if stream == "group":
        for i, p in enumerate(points):
            if not p.own and p.cuttable:
                out.setdefault(p.group, []).append(i)
    return out


def select_top(points: Sequence[MaskPoint], scores: Sequence[np.ndarray], counts: Sequence[int],
               stream: str = "select") -> list[np.ndarray]:
    """Kept input channels of every mask: the ``count`` highest scores (ties: lower index), sorted,
    in whole units of the mask's group. With ``stream="group"`` the masks reading one shared group
    keep one set: the highest summed scores, as many as the first of them keeps."""
    shared = shared_groups(points, stream)
    summed = {g: sum(_unit_scores(points[i], scores[i]) for i in idx) for g, idx in shared.items()}
    # a mask inside a removed block (count 0) does not set its stream's width
    width = {g: next((counts[i] for i in idx if counts[i]), 0) for g, idx in shared.items()}
    out = []
    for p, s, k in zip(points, scores, counts):
        if k == 0:
            units = np.zeros(0, np.int64)
        elif p.group in shared:
            units = top(summed[p.group], width[p.group] // p.unit)
        else:
            units = top(_unit_scores(p, s), k // p.unit)
        out.append((units[:, None] * p.unit + np.arange(p.unit)[None]).ravel())
    return out


def cuts(points: Sequence[MaskPoint], keeps: Sequence[Sequence[int]], stream: str = "select"
         ) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    """How :func:`apply` cuts: ``({group: kept units}, [(conv, kept input channels)])``, the group cuts
    and the masks read through a ``select`` (indices into the unpruned tensors)."""
    shared = shared_groups(points, stream)
    cut, selects = {}, []
    for p, keep in zip(points, keeps):
        keep = np.asarray(keep, np.int64)
        if len(keep) in (0, p.width):  # 0: the mask's block is removed whole (apply)
            continue
        if p.own or p.group in shared:
            cut[p.group] = np.unique(keep // p.unit)
        else:
            selects.append((p.conv, keep))
    return cut, selects


def apply(graph: Graph, params: Mapping[str, np.ndarray], points: Sequence[MaskPoint],
          keeps: Sequence[Sequence[int]], stream: str = "select") -> tuple[Graph, dict[str, np.ndarray]]:
    """Prune every mask to its kept channel indices (indices into the unpruned tensor): the groups
    in one pass of :func:`compress_core.surgery.prune`, then the ``select`` of every other mask, its
    indices renumbered past the channels the group cuts removed from its input (a DenseNet
    concatenation loses the channels of a cut stem); last, the blocks whose masks keep nothing
    are removed (:func:`removed_blocks`)."""
    removed = removed_blocks(graph, points, keeps)
    groups = channel_groups(graph)
    cut, selects = cuts(points, keeps, stream)
    width = graph.shapes()
    survive = {}
    for conv, _ in selects:
        alive = np.ones(width[graph[conv].inputs[0]][0], bool)
        for g in groups:
            if g.id in cut:
                gone = np.setdiff1d(np.arange(g.width), cut[g.id])
                for m in g.members:
                    if m.node == conv and m.kind == "in":
                        alive[unit_indices(m, gone)] = False
        survive[conv] = alive
    graph, out = prune(graph, params, cut, groups)
    for conv, keep in selects:
        alive = survive[conv]
        rank = np.cumsum(alive) - 1
        graph, out = select_inputs(graph, out, conv, rank[keep[alive[keep]]])
    if removed:
        graph, out = remove_blocks(graph, out, removed)
    return graph, out


def macs_after(graph: Graph, points: Sequence[MaskPoint], counts: Sequence[int], stream: str = "select") -> int:
    """MACs of the network pruned to ``counts`` (which channels does not matter for the cost)."""
    params = {k: np.zeros(s, np.float32) for k, s in graph.param_shapes().items()}
    return flops.count_macs(network(graph, params, points, counts, stream)[0])


def ratio_for_macs(graph: Graph, points: Sequence[MaskPoint], mac_fraction: float, min_width: int = 1,
                   multiple: int = 1, stream: str = "select") -> float:
    """Smallest uniform ratio whose pruned network has at most ``mac_fraction`` of the MACs (bisection)."""
    if not 0.0 < mac_fraction <= 1.0:
        raise UserError(f"MAC target must be a fraction in (0, 1], got {mac_fraction}")
    def cost(r: float) -> int:
        return macs_after(graph, points, uniform_counts(points, r, min_width, multiple), stream)

    what = f"a MAC target of {mac_fraction:.3f} (minimum width {min_width}, multiple {multiple})"
    try:
        return bisect_ratio(cost, mac_fraction * flops.count_macs(graph), what)
    except UserError as e:
        if multiple == 1:
            raise
        # the default plan rounds to 8: a network of 8-16-wide layers cannot be cut that finely
        raise UserError(f"{e}; every mask keeps at least {multiple} channels: a smaller multiple "
                        f"(cdc.multiple=1: any width) may reach it") from None


def depth_counts(graph: Graph, points: Sequence[MaskPoint], scores: Sequence[np.ndarray], mac_fraction: float,
                 pinned: Sequence[str] = ()) -> tuple[list[int], list[str]]:
    """The depth plan: ``(counts, removed adds)``, residual blocks removed whole (their masks keep 0
    channels, every other mask all) until the network has at most ``mac_fraction`` of the MACs.

    The depth is cut evenly over the stages (a stage: the removable blocks whose input has one shape):
    the next block comes from the stage with the largest share of its removable blocks left (ties: the
    earlier stage), and within a stage it is the block whose inner channels separate the classes least
    (the mean unit score of the masks reading a tap inside the block, of all its masks when none does).
    ``pinned``: the adds of blocks never removed (one holding a distillation tap)."""
    if not 0.0 < mac_fraction <= 1.0:
        raise UserError(f"MAC target must be a fraction in (0, 1], got {mac_fraction}")
    masks = {a: idx for a, idx in block_masks(graph, points).items() if a not in set(pinned)}
    if not masks:
        raise UserError(f"model '{graph.arch}' has no residual block with an identity shortcut to remove"
                        + (f" besides {', '.join(sorted(pinned))} (pinned)" if pinned else ""))
    blocks = {b.add: b for b in removable_blocks(graph)}
    shapes = graph.shapes()

    def score(a: str) -> float:
        inside = branch_nodes(graph, blocks[a])
        idx = [i for i in masks[a] if points[i].tap in inside] or masks[a]
        return float(np.mean(np.concatenate([_unit_scores(points[i], scores[i]) for i in idx])))

    stages: dict[tuple, list[str]] = {}
    for a in masks:  # graph order: a stable sort keeps the earlier block first on ties
        stages.setdefault(shapes[blocks[a].source], []).append(a)
    left = [sorted(v, key=score) for v in stages.values()]
    total = [len(v) for v in left]
    counts, removed = [p.width for p in points], []
    base = flops.count_macs(graph)
    while (macs := macs_after(graph, points, counts)) > mac_fraction * base:
        live = [k for k in range(len(left)) if left[k]]
        if not live:
            raise UserError(f"removing every removable block of '{graph.arch}' leaves {macs / base:.1%} of the "
                            f"MACs, above the target {mac_fraction:.3f}")
        k = max(live, key=lambda k: (len(left[k]) / total[k], -k))
        a = left[k].pop(0)
        removed.append(a)
        for i in masks[a]:
            counts[i] = 0
    return counts, removed

#: the ratios a tier of the latency plan can take (eighths; at most three quarters of a tier cut, so no
#: layer is left with less than a quarter of its channels; the uniform ratio at the target is added)
LATENCY_RATIOS = tuple(k / 8 for k in range(7))


def tiers(graph: Graph, points: Sequence[MaskPoint], stream: str = "select") -> list[list[int]]:
    """The masks that move together in a latency plan (indices into ``points``): a shared group cut as
    one (``stream="group"``: a residual stream) is one tier; the other masks are tiered by what their
    time depends on: own group or not, width, unit and the size of the map they read (a residual
    stage's inner channels are one tier)."""
    shared = shared_groups(points, stream)
    shapes = graph.shapes()
    out: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        key = ("group", p.group) if p.group in shared else (p.own, p.width, p.unit, tuple(shapes[p.tap][1:]))
        out.setdefault(key, []).append(i)
    return list(out.values())


@dataclass
class LatencyPlan:
    """A latency plan: ``counts`` per mask, the ``tiers`` and each tier's ``options`` (counts of its masks,
    widest first), and the search's record (:class:`compress_core.surgery.latency.LatencySearch`)."""
    counts: list[int]
    tiers: list[list[int]]
    options: list[list[tuple[int, ...]]]
    search: LatencySearch
    uniform_ratio: float


def latency_counts(graph: Graph, points: Sequence[MaskPoint], mac_fraction: float,
                   measure: Callable[[Sequence[Sequence[int]]], Sequence[float]], min_width: int = 1,
                   multiple: int = 1, stream: str = "select") -> LatencyPlan:
    """Channels kept per mask at a MAC target, chosen by timing (:mod:`compress_core.surgery.latency`):
    the masks in :func:`tiers`, each tier's options the counts of :data:`LATENCY_RATIOS` and of the
    uniform ratio that meets the target (:func:`uniform_counts`), the uniform plan the baseline the
    result is never slower than. ``measure(list of counts)``: the time of each plan's network (e.g.
    :func:`network` on a backend), in turns."""
    uniform = ratio_for_macs(graph, points, mac_fraction, min_width, multiple, stream)
    groups = tiers(graph, points, stream)
    options = []
    for tier in groups:
        opts: list[tuple[int, ...]] = []
        for r in sorted({*LATENCY_RATIOS, uniform}):
            c = tuple(uniform_counts([points[i] for i in tier], r, min_width, multiple))
            if c not in opts:
                opts.append(c)
        options.append(opts)

    def counts(choice) -> list[int]:
        out = [0] * len(points)
        for tier, opts, j in zip(groups, options, choice):
            for i, k in zip(tier, opts[j]):
                out[i] = k
        return out

    @functools.cache
    def macs(choice) -> int:
        return macs_after(graph, points, counts(choice), stream)

    flat = uniform_counts(points, uniform, min_width, multiple)
    baseline = tuple(opts.index(tuple(flat[i] for i in tier)) for tier, opts in zip(groups, options))
    search = latency_search([len(o) for o in options], macs, lambda chs: measure([counts(c) for c in chs]),
                            mac_fraction * flops.count_macs(graph), baseline)
    return LatencyPlan(counts(search.choice), groups, options, search, uniform)


def network(graph: Graph, params: Mapping[str, np.ndarray], points: Sequence[MaskPoint], counts: Sequence[int],
            stream: str = "select") -> tuple[Graph, dict[str, np.ndarray]]:
    """The network pruned to ``counts`` (the first channels of every mask: for timing, not for use)."""
    return apply(graph, params, points, [np.arange(k) for k in counts], stream)


# -- coarse labels ---------------------------------------------------------------------------
def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``F[true, predicted]``."""
    f = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(f, (np.asarray(labels), np.asarray(logits).argmax(1)), 1)
    return f


def coarse_groups(confusion: np.ndarray, num_groups: int, seed: int = 0) -> np.ndarray:
    """Group fine classes that the model confuses: one group id per class.

    As the reference's recipe: rows of the confusion counts become rates
    ``P = F / n_class``; the distance ``D = 0.5 * ((1 - P) + (1 - P^T))`` with a zero
    diagonal; spectral clustering (scikit-learn) of the affinity ``1 - D`` into
    ``num_groups`` groups. Group ids are renumbered by first appearance, so the
    result does not depend on the clustering's arbitrary numbering.
    """
    from sklearn.cluster import SpectralClustering

    f = np.asarray(confusion, np.float64)
    k = f.shape[0]
    if not 2 <= num_groups < k:
        raise UserError(f"number of coarse groups must be in [2, {k - 1}] for {k} classes, got {num_groups}")
    rates = f / np.maximum(f.sum(1, keepdims=True), 1.0)
    dist = 0.5 * ((1 - rates) + (1 - rates.T))
    np.fill_diagonal(dist, 0.0)
    affinity = np.clip(1.0 - dist, 0.0, 1.0) + 1e-6  # connected graph even with a perfect model
    raw = SpectralClustering(num_groups, affinity="precomputed", random_state=seed,
                             assign_labels="discretize").fit_predict(affinity)
    _, first = np.unique(raw, return_index=True)
    order = {g: i for i, g in enumerate(raw[np.sort(first)])}
    return np.array([order[g] for g in raw], np.int64)


def load_coarse_groups(path: str, num_classes: int) -> np.ndarray:
    """A class -> group map from a ``.npy`` or text file with one integer per fine class."""
    import os

    if not os.path.isfile(path):
        raise UserError(f"coarse-label file not found: {path}")
    try:
        groups = np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read coarse-label file {path}: {e}") from None
    groups = np.asarray(groups).reshape(-1)
    if groups.size != num_classes:
        raise UserError(f"coarse-label file {path} has {groups.size} entries, expected one per class "
                        f"({num_classes})")
    if not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise UserError(f"coarse-label file {path} must hold non-negative integer group ids, "
                        f"got {groups.dtype} values")
    if len(np.unique(groups)) < 2:
        raise UserError(f"coarse-label file {path} puts every class in one group; coarse labels need >= 2 groups")
    return groups.astype(np.int64)
