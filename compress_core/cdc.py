"""CDC pruning logic on graphs (numpy): where channels are scored, how many are kept, surgery.

Where (``mask_points``): as the reference, the scored features are the
post-BN-ReLU inputs of convolutions. Every conv that reads a ReLU output (or a
pooled one) gets
one mask at its input, except the stem (it reads the image) and a second reader
of the same tensor (a projection shortcut shares its block's tap). A mask is
applied as:

* ``outputs``: the channels come from one conv that nothing else reads (a
  block's inner channels, VGG layers): that conv loses the filters, with its
  BatchNorm, and the reader loses the input columns;
* ``inputs``: the channels are shared (a residual stream, a DenseNet
  concatenation): the reader gets a ``select`` of the kept channels, as the
  reference's gather before a block's first BN, and the stream stays whole.

Blocks (for coarse-to-fine labels) are the ``layerS.I`` / ``denseB.I`` name
prefixes in graph order; a layer outside such a block is a block of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core import flops, prune
from compress_core.coupling import prunable_layers
from compress_core.errors import UserError
from compress_core.graph import Graph


@dataclass(frozen=True)
class MaskPoint:
    conv: str            # the conv whose input channels are scored
    tap: str             # the node whose output is that input (post-BN-ReLU features)
    block: int           # block index, for coarse/fine labels
    mode: str            # "outputs" or "inputs" (see module docstring)
    producer: str | None  # the conv losing filters in "outputs" mode
    width: int           # channels before pruning


def _block_key(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 and parts[1].isdigit() else name


def mask_points(graph: Graph) -> list[MaskPoint]:
    layers = {layer.name: layer for layer in prunable_layers(graph)}
    group_size: dict[str, int] = {}
    for layer in layers.values():
        group_size[layer.group] = group_size.get(layer.group, 0) + 1
    points, seen_taps, blocks = [], set(), {}
    for n in graph.of_op("conv"):
        tap = graph[n.inputs[0]]
        pooled = tap.op in ("maxpool", "avgpool") and graph[tap.inputs[0]].op == "relu"
        if not (tap.op == "relu" or pooled) or tap.name in seen_taps or n.attrs["groups"] != 1:
            continue
        seen_taps.add(tap.name)
        src = tap
        while src.op in ("relu", "bn", "maxpool", "avgpool"):
            src = graph[src.inputs[0]]
        producer = layers.get(src.name)
        own = (producer is not None and group_size[producer.group] == 1
               and [c for c, _ in producer.consumers] == [n.name])
        block = blocks.setdefault(_block_key(n.name), len(blocks))
        points.append(MaskPoint(n.name, tap.name, block, "outputs" if own else "inputs",
                                producer.name if own else None, graph.in_channels(n.name)))
    if not points:
        raise UserError(f"model '{graph.arch}' has no convolution reading post-BN-ReLU features to prune")
    return points


def round_width(keep: int, width: int, min_width: int, multiple: int) -> int:
    """``keep`` raised to ``min_width`` and up to a multiple of ``multiple``, at most ``width``."""
    keep = max(keep, min_width)
    if multiple > 1:
        keep = multiple * math.ceil(keep / multiple)
    return min(keep, width)


def uniform_counts(points: Sequence[MaskPoint], ratio: float, min_width: int = 1,
                   multiple: int = 1) -> list[int]:
    """Channels kept per mask: ``C - floor(C * ratio)``, then :func:`round_width`."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"prune ratio must be in [0, 1), got {ratio}")
    return [round_width(p.width - math.floor(p.width * ratio), p.width, min_width, multiple)
            for p in points]


def check_counts(points: Sequence[MaskPoint], counts: Sequence[int], min_width: int = 1) -> list[int]:
    """Validate a predefined plan: one count per mask, each in ``[max(1, min_width), width]``."""
    if len(counts) != len(points):
        raise UserError(f"predefined plan has {len(counts)} widths, the model has {len(points)} masks "
                        f"({', '.join(p.conv for p in points[:3])}, ...)")
    for p, k in zip(points, counts):
        if not isinstance(k, (int, np.integer)) or not max(1, min_width) <= k <= p.width:
            raise UserError(f"cannot keep {k!r} input channels of '{p.conv}': it has {p.width} "
                            f"and the minimum width is {min_width}")
    return [int(k) for k in counts]


def apply(graph: Graph, params: Mapping[str, np.ndarray], points: Sequence[MaskPoint],
          keeps: Sequence[Sequence[int]]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Prune every mask to its kept channel indices (indices into the unpruned tensor)."""
    p = dict(params)
    for point, keep in zip(points, keeps):
        if len(keep) == point.width:
            continue
        if point.mode == "outputs":
            graph, p = prune.keep_outputs(graph, p, point.producer, keep)
        else:
            graph, p = prune.keep_inputs(graph, p, point.conv, keep)
    return graph, p


def select_top(scores: Sequence[np.ndarray], counts: Sequence[int]) -> list[np.ndarray]:
    """Indices of the ``count`` highest scores of each mask (ties: lower index first), sorted."""
    return [np.sort(np.argsort(-np.asarray(s, np.float64), kind="stable")[:k]) for s, k in zip(scores, counts)]


def macs_after(graph: Graph, points: Sequence[MaskPoint], counts: Sequence[int]) -> int:
    """MACs of the network pruned to ``counts`` (which channels does not matter for the cost)."""
    params = {k: np.zeros(s, np.float32) for k, s in graph.param_shapes().items()}
    pruned, _ = apply(graph, params, points, [np.arange(k) for k in counts])
    return flops.count_macs(pruned)


def ratio_for_macs(graph: Graph, points: Sequence[MaskPoint], mac_fraction: float,
                   min_width: int = 1, multiple: int = 1, tol: float = 1e-3) -> float:
    """Smallest uniform ratio whose pruned network has at most ``mac_fraction`` of the MACs (bisection)."""
    if not 0.0 < mac_fraction <= 1.0:
        raise UserError(f"MAC target must be a fraction in (0, 1], got {mac_fraction}")
    target = mac_fraction * flops.count_macs(graph)
    lo, hi = 0.0, 0.999
    if macs_after(graph, points, uniform_counts(points, hi, min_width, multiple)) > target:
        raise UserError(f"a MAC target of {mac_fraction:.3f} cannot be reached by pruning these layers "
                        f"(minimum width {min_width})")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if macs_after(graph, points, uniform_counts(points, mid, min_width, multiple)) <= target:
            hi = mid
        else:
            lo = mid
    return hi


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
