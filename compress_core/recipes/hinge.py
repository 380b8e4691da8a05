"""Hinge (Li et al., CVPR 2020): where the sparsity-inducing matrices sit, and compression.

A convolution ``W`` (``n`` filters) followed by a matrix ``A [n, m]`` computes
``y_j = sum_i A_ij (W * x)_i``. A graph stores ``A`` as a 1x1 conv whose weight is
``P [m, n, 1, 1] = A.T``. Group sparsity on ``A`` compresses the pair:

* a zero **row** ``i`` of ``A`` makes filter ``i`` of ``W`` useless: the conv keeps
  the rows ``R`` that survive and the pair becomes ``conv c -> |R|`` followed by
  the 1x1 ``|R| -> m`` (a low-rank decomposition; the output width is kept, so
  it is allowed before residual additions and concatenations);
* a zero **column** ``j`` removes output ``j`` of the pair, the BatchNorm entries
  that normalise it and the matching inputs of the next conv (filter pruning).

Placement per architecture (the reference's ``model_hinge`` modules), found from the
graph's structure: the two or three convs of every residual block's branch, every conv
but the first of a chain, every conv but the stem of a DenseNet:

==============  ===================================================================
resnet20..110   ``<conv>.hinge`` (n x n, no bias) after both 3x3 convs of every
                basic block; rows of both (decomposition); SVD initialisation
resnet164       no new node: each block's 1x1 ``conv1`` is A with column groups
                (prune its filters) and ``conv3`` is A with row groups (prune the
                3x3 ``conv2`` outputs); ``conv3``'s group count follows ``conv1``'s
vgg16           ``<conv>.hinge`` with bias after ``features.1`` .. ``features.12``;
                rows and columns of the same A (the last conv keeps its columns)
densenet40      ``<conv>.hinge`` (no bias) after every dense-layer 3x3 conv and
                transition 1x1 conv; rows (decomposition)
any other       ``<conv>.hinge`` (with bias) after every ungrouped conv but the stem: rows
                (decomposition) always, columns (pruning) where the conv alone writes a
                cuttable channel group; SVD initialisation; one family
resnext20, 164  no new node: one group per cardinality path ``g``, the vector
                ``[conv1 filters of g | conv3 input columns of g]``; whole paths go
wrn16_10        ``<conv>.hinge`` with bias (the conv's bias moves there) after both
                3x3 convs; conv1: columns, then conv and A merged into one conv;
                conv2: rows; identity initialisation
==============  ===================================================================

Everything here is numpy on canonical parameter dicts; :func:`compress` cuts the zero
groups through :mod:`compress_core.surgery` and returns an ordinary smaller graph that
every backend builds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from compress_core.criteria import group_sparsity
from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.graph import Graph, Node, conv_node
from compress_core.surgery import channel_groups, group_of, prune
from compress_core.surgery.structure import residual_blocks

#: ``l21`` (group lasso, the paper; the reference's ``'l1'``) or ``l1/2`` (the reference's ``'l1d2'``)
PENALTIES = group_sparsity.PENALTIES
INITS = ("auto", "svd2", "identity", "pretrained")
#: the search's learning-rate adjustment: auto (p1 for the two-family placements, as the reference), p1, none
LR_ADJUST = ("auto", "p1", "none")
#: placements whose reference scripts adjust the rates by the gradient ratio (the "resnet" nets)
P1_FAMILIES = ("basic", "bottleneck", "wrn")


@dataclass(frozen=True)
class Sparse:
    """One sparsity-inducing matrix ``A`` and what its groups remove.

    ``node`` is the 1x1 conv holding ``P = A.T``. ``axes`` lists the group
    directions: ``rows`` (zero rows remove output channels of conv ``rows_of``),
    ``columns`` (zero columns remove output channels of ``node``) or ``paths``
    (ResNeXt: ``node`` is the block's ``conv3``, ``rows_of`` its ``conv1``).
    ``family`` is 1 for the first matrix of a block and 2 for the second;
    ``partner`` names the family-1 matrix whose number of kept groups a family-2
    matrix copies (the reference's ``--p1_p2_same_ratio``). ``merge``: after
    pruning, fold conv ``rows_of`` and ``node`` into one conv.
    """

    node: str
    axes: tuple[str, ...]
    rows_of: str = ""
    family: int = 1
    partner: str = ""
    merge: bool = False
    paths: int = 0


@dataclass(frozen=True)
class Placement:
    """Where the matrices of one architecture go: ``inserted`` convs get a ``.hinge`` node."""

    family: str
    init: str                      # svd2, identity or pretrained (no new node)
    sparse: tuple[Sparse, ...]
    inserted: tuple[str, ...] = ()
    hinge_bias: bool = False
    reg_reduce: str = "sum"        # how the annealing reads the family-1 regulariser: sum or mean


# -- placement ------------------------------------------------------------------------------------
# Each reference placement finds its convs from the graph's structure (residual blocks and their
# branches, compress_core.surgery.structure), not from layer names; the architecture picks which one.
def _branches(graph: Graph, length: int) -> list[tuple[str, ...]]:
    return [b.branch for b in residual_blocks(graph) if len(b.branch) == length]


def _basic(graph: Graph) -> Placement:
    sparse, convs = [], []
    for c1, c2 in _branches(graph, 2):
        sparse += [Sparse(f"{c1}.hinge", ("rows",), c1, 1), Sparse(f"{c2}.hinge", ("rows",), c2, 2, f"{c1}.hinge")]
        convs += [c1, c2]
    return Placement("basic", "svd2", tuple(sparse), tuple(convs), False, "mean")


def _bottleneck(graph: Graph) -> Placement:
    sparse = []
    for c1, c2, c3 in _branches(graph, 3):
        sparse += [Sparse(c1, ("columns",), family=1), Sparse(c3, ("rows",), c2, 2, c1)]
    return Placement("bottleneck", "pretrained", tuple(sparse))


def _vgg(graph: Graph) -> Placement:
    convs = [n.name for n in graph.of_op("conv")][1:]
    sparse = tuple(Sparse(f"{c}.hinge", ("rows", "columns") if i < len(convs) - 1 else ("rows",), c)
                   for i, c in enumerate(convs))
    return Placement("vgg", "svd2", sparse, tuple(convs), True)


def _densenet(graph: Graph) -> Placement:
    convs = [n.name for n in graph.of_op("conv") if n.inputs[0] != "input"]  # every conv but the stem
    return Placement("densenet", "svd2", tuple(Sparse(f"{c}.hinge", ("rows",), c) for c in convs), tuple(convs))


def _resnext(graph: Graph) -> Placement:
    sparse = tuple(Sparse(c3, ("paths",), c1, paths=int(graph[c2].attrs["groups"]))
                   for c1, c2, c3 in _branches(graph, 3) if graph[c2].attrs["groups"] > 1)
    return Placement("resnext", "pretrained", sparse)


def _wrn(graph: Graph) -> Placement:
    sparse, convs = [], []
    for c1, c2 in _branches(graph, 2):
        sparse += [Sparse(f"{c1}.hinge", ("columns",), c1, 1, merge=True),
                   Sparse(f"{c2}.hinge", ("rows",), c2, 2, f"{c1}.hinge")]
        convs += [c1, c2]
    return Placement("wrn", "identity", tuple(sparse), tuple(convs), True)


PLACEMENTS: dict[str, Callable[[Graph], Placement]] = {
    r"resnet(20|32|44|56|110)": _basic, r"resnet164": _bottleneck, r"vgg16": _vgg,
    r"densenet40": _densenet, r"resnext\d+": _resnext, r"wrn\d+_\d+": _wrn}


def _generic(graph: Graph) -> Placement:
    """Any graph: a matrix ``<conv>.hinge`` (SVD initialisation) after every ungrouped conv but the stem.
    Its rows always (decomposition: the conv's filters, the width after the pair stays); its columns
    too (filter pruning) when the conv alone writes a channel group that can be cut (not a residual
    stream, a concatenation or the logits). One family: no gradient-ratio adjustment."""
    groups = channel_groups(graph)
    writers = {m.node: g for g in groups for m in g.producers}
    sparse, convs = [], []
    for n in graph.of_op("conv"):
        if n.attrs["groups"] != 1 or n.inputs[0] == "input":
            continue
        g = writers.get(n.name)
        # the channels' only writer (a depthwise conv tied into the group follows them)
        alone = g is not None and g.cuttable and [m.node for m in g.of_kind("out", "fused", "select_out")] == [n.name]
        sparse.append(Sparse(f"{n.name}.hinge", ("rows", "columns") if alone else ("rows",), n.name))
        convs.append(n.name)
    if not sparse:
        raise UserError(f"'{graph.arch}' has no ungrouped conv past its stem to place Hinge's matrices after")
    return Placement("generic", "svd2", tuple(sparse), tuple(convs), True)


def check_mapping(arch: str) -> Callable[[Graph], Placement]:
    """The placement builder of architecture ``arch``: the reference's for the zoo architectures it
    maps, :func:`_generic` for any other graph."""
    for pattern, make in PLACEMENTS.items():
        if re.fullmatch(pattern, arch):
            return make
    return _generic


def placement(graph: Graph) -> Placement:
    """The Hinge placement of ``graph`` (unmodified): the reference's, or the generic rule."""
    return check_mapping(graph.arch)(graph)


# -- attaching the matrices ----------------------------------------------------------------------------
def _rewire(nodes: list[Node], old: str, new: str, skip: str = "") -> None:
    """Make every reader of ``old`` (except ``skip``) read ``new``."""
    for i, n in enumerate(nodes):
        if old in n.inputs and n.name != skip:
            nodes[i] = Node(n.name, n.op, tuple(new if j == old else j for j in n.inputs), n.attrs)


def attach(graph: Graph, params: Mapping[str, np.ndarray], init: str = "auto"
           ) -> tuple[Graph, dict[str, np.ndarray], Placement]:
    """Insert the ``.hinge`` nodes of :func:`placement` and initialise them; the function is unchanged.

    ``svd2``: ``reshape(W, [n, d]).T = U S V^T`` (thin), conv weight ``U^T`` (``r = min(n, d)``
    orthonormal filters), ``A = S V^T [r, n]``: the rows of A have the singular values as
    norms. ``identity``: conv unchanged, ``A = I``. A conv bias ``b`` moves to the 1x1
    (``A^T (W x) + b``). ``auto`` takes the reference's choice per architecture.
    """
    if init not in INITS:
        raise UserError(f"unknown Hinge init '{init}' (choose from: {', '.join(INITS)})")
    place = placement(graph)
    if init == "auto" or place.init == "pretrained":
        init = place.init
    elif init == "pretrained":
        raise UserError(f"init 'pretrained' needs an architecture whose own convs act as A, not {graph.arch}")
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    nodes = list(graph.nodes)
    for c in place.inserted:
        node = graph[c]
        w = p[f"{c}.weight"]
        bias = p.pop(f"{c}.bias", None)
        n = w.shape[0]
        if init == "svd2":
            w0, a0 = group_sparsity.svd_init(w)
        else:
            w0, a0 = w, np.eye(n, dtype=np.float32)
        p[f"{c}.weight"] = np.asarray(w0, np.float32)
        p[f"{c}.hinge.weight"] = group_sparsity.to_1x1(a0).astype(np.float32)
        if place.hinge_bias or bias is not None:
            p[f"{c}.hinge.bias"] = np.zeros(n, np.float32) if bias is None else bias
        i = nodes.index(node)
        new_conv = Node(c, "conv", node.inputs, {**node.attrs, "out": int(w0.shape[0]), "bias": False})
        hinge = conv_node(f"{c}.hinge", c, n, k=1, pad=0, bias=f"{c}.hinge.bias" in p)
        _rewire(nodes, c, hinge.name)
        nodes[i:i + 1] = [new_conv, hinge]
    out = graph.replace(nodes, meta={**graph.meta, "hinge": place.family})
    out.shapes()
    return out, p, place


# -- groups ------------------------------------------------------------------------------------------
def param_names(place: Placement) -> list[str]:
    """Canonical names the proximal step reads and writes."""
    names = []
    for s in place.sparse:
        names.append(f"{s.node}.weight")
        if "paths" in s.axes:
            names.append(f"{s.rows_of}.weight")
    return names


def _matrix(params: Mapping[str, np.ndarray], s: Sparse) -> np.ndarray:
    return group_sparsity.from_1x1(params[f"{s.node}.weight"])


def _path_vectors(params, s: Sparse) -> np.ndarray:
    """``[paths, D]``: per path, its conv1 filters then its conv3 input columns, flattened."""
    w1, w3 = params[f"{s.rows_of}.weight"], params[f"{s.node}.weight"]
    g = s.paths
    a = w1.reshape(g, -1)
    b = np.moveaxis(w3.reshape(w3.shape[0], g, -1), 1, 0).reshape(g, -1)
    return np.concatenate([a, b], axis=1)


def group_norms(params: Mapping[str, np.ndarray], s: Sparse) -> dict[str, np.ndarray]:
    """Norm of every group of ``s``, per axis: rows of A, columns of A, or paths."""
    out = {}
    for axis in s.axes:
        if axis == "paths":
            out[axis] = np.linalg.norm(_path_vectors(params, s).astype(np.float64), axis=1)
        else:
            out[axis] = group_sparsity.group_norms(_matrix(params, s), axis)
    return out


def _norm_sums(params, place: Placement, family: int) -> list[float]:
    """``sum_g ||A_g||`` (over all axes) of every matrix of ``family``."""
    return [float(sum(v.sum() for v in group_norms(params, s).values())) for s in place.sparse if s.family == family]


def regulariser(params, place: Placement, family: int = 1) -> float:
    """``sum_g ||A_g||`` over the matrices of ``family`` (and axes), summed or averaged per placement."""
    values = _norm_sums(params, place, family)
    if not values:
        return 0.0
    return float(np.mean(values)) if place.reg_reduce == "mean" else float(np.sum(values))


def gradient_norm_sums(grads: Mapping[str, np.ndarray], place: Placement) -> tuple[float, float]:
    """``sum_{l,g} ||grad A_{l,g}||`` of family 1 and of family 2, groups along each matrix's axes
    (the two inputs of :class:`compress_core.criteria.group_sparsity.GradRatio`)."""
    return float(sum(_norm_sums(grads, place, 1))), float(sum(_norm_sums(grads, place, 2)))


def lr_adjusted(place: Placement, lr_adjust: str) -> bool:
    """Whether the search adjusts its rates by the gradient ratio; p1 needs two matrix families."""
    if lr_adjust == "auto":
        return place.family in P1_FAMILIES
    if lr_adjust == "p1" and not any(s.family == 2 for s in place.sparse):
        raise UserError(f"hinge.lr_adjust=p1 needs two matrix families; the {place.family} placement has one")
    return lr_adjust == "p1"


def balancing(params, place: Placement) -> dict[tuple[str, str], float]:
    """Layer balancing weight ``w_l``: mean group norm of every matrix and axis (at initialisation)."""
    return {(s.node, axis): float(np.mean(v)) for s in place.sparse for axis, v in group_norms(params, s).items()}


def proximal_step(params: Mapping[str, np.ndarray], place: Placement, tau: float, penalty: str = "l21",
                  weights: Mapping[tuple[str, str], float] | None = None) -> dict[str, np.ndarray]:
    """The proximal map of ``tau * w_l * sum_g ||A_g||`` (``l21``) or its half-thresholding form
    (``l1/2``) on every matrix, axes in order (VGG: rows, then columns); returns the new arrays."""
    if penalty not in PENALTIES:
        raise UserError(f"unknown Hinge penalty '{penalty}' (choose from: {', '.join(PENALTIES)})")
    out = {}
    for s in place.sparse:
        for axis in s.axes:
            t = tau * (weights or {}).get((s.node, axis), 1.0)
            if axis == "paths":
                # one factor per path scales its conv1 filters and conv3 columns alike
                f = group_sparsity.shrink_factors(group_norms(params, s)["paths"], t, penalty)
                w1, w3 = params[f"{s.rows_of}.weight"], params[f"{s.node}.weight"]
                f = np.repeat(f, w1.shape[0] // s.paths).astype(np.float32)
                out[f"{s.rows_of}.weight"] = w1 * f[:, None, None, None]
                out[f"{s.node}.weight"] = w3 * f[None, :, None, None]
            else:
                a = group_sparsity.from_1x1(out.get(f"{s.node}.weight", params[f"{s.node}.weight"]))
                out[f"{s.node}.weight"] = group_sparsity.to_1x1(group_sparsity.prox(a, t, axis, penalty))
    return out


def keep_sets(params, place: Placement, tau: float, remain: float = 0.2, same_ratio: bool = True
              ) -> dict[tuple[str, str], np.ndarray]:
    """Surviving group indices per matrix and axis at nullifying threshold ``tau``.

    Every group with norm ``>= min(tau, t_k)`` survives, ``t_k`` the ``floor(remain *
    groups)``-th largest norm (so a share ``remain`` always survives); a family-2 matrix
    with a partner keeps its top-``|keep of the partner|`` groups when ``same_ratio``.
    """
    keep = {}
    for s in place.sparse:
        norms = group_norms(params, s)
        for axis in s.axes:
            if same_ratio and s.partner:
                count = len(next(v for (node, _), v in keep.items() if node == s.partner))
                keep[(s.node, axis)] = group_sparsity.keep_top(norms[axis], min(count, len(norms[axis])))
            else:
                keep[(s.node, axis)] = group_sparsity.keep_groups(norms[axis], tau, remain)
    return keep


# -- compression ------------------------------------------------------------------------------------
def _merge(graph: Graph, params: dict, conv: str, hinge: str) -> tuple[Graph, dict]:
    """Fold ``conv`` and the 1x1 ``hinge`` that reads it into one conv named ``conv``:
    ``W'_j = sum_i A_ij W_i``, ``b' = A^T b_W + b_A``."""
    p = dict(params)
    a = group_sparsity.from_1x1(p.pop(f"{hinge}.weight"))
    w, b = group_sparsity.merge(p.pop(f"{conv}.weight"), a, p.pop(f"{conv}.bias", None), p.pop(f"{hinge}.bias", None))
    p[f"{conv}.weight"] = w.astype(np.float32)
    if b is not None:
        p[f"{conv}.bias"] = b.astype(np.float32)
    nodes = []
    for n in graph.nodes:
        if n.name == hinge:
            continue
        if n.name == conv:
            n = Node(conv, n.op, n.inputs, {**n.attrs, "out": int(a.shape[1]), "bias": b is not None})
        nodes.append(n)
    _rewire(nodes, hinge, conv)
    new = graph.replace(nodes)
    new.shapes()
    return new, p


def apply_keep(graph: Graph, params: Mapping[str, np.ndarray], place: Placement,
               keep: Mapping[tuple[str, str], np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Remove every group not in ``keep`` in one pass of :func:`compress_core.surgery.prune` and merge
    where the placement says: a plain smaller graph. Rows of ``A`` are the output channels of the conv
    before it (its channel group), columns the outputs of ``A`` itself, paths the units of a ResNeXt
    block's inner group (conv1's filters, the grouped conv2, conv3's columns)."""
    groups = channel_groups(graph)
    cut = {}
    for s in place.sparse:
        for axis in s.axes:
            gid = group_of(groups, s.node if axis == "columns" else s.rows_of).id
            if gid in cut:
                raise UserError(f"Hinge placement cuts channel group '{gid}' twice ({s.node}, {axis})")
            cut[gid] = keep[(s.node, axis)]
    graph, p = prune(graph, params, cut, groups)
    for s in place.sparse:
        if s.merge:
            graph, p = _merge(graph, p, s.rows_of, s.node)
    meta = {k: v for k, v in graph.meta.items() if k != "widths"}
    graph = graph.replace(graph.nodes, meta={**meta, "hinge": "compressed"})
    return graph, p


def compress(graph: Graph, params: Mapping[str, np.ndarray], place: Placement, tau: float,
             remain: float = 0.2, same_ratio: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    """The network at nullifying threshold ``tau`` (see :func:`keep_sets`, :func:`apply_keep`)."""
    return apply_keep(graph, params, place, keep_sets(params, place, tau, remain, same_ratio))


def mac_ratio(graph: Graph, params, place: Placement, tau: float, base_macs: int, remain: float = 0.2,
              same_ratio: bool = True) -> float:
    """MACs of the compressed network at ``tau`` over ``base_macs`` (the network before Hinge)."""
    return flops.count_macs(compress(graph, params, place, tau, remain, same_ratio)[0]) / base_macs


def search_threshold(graph: Graph, params, place: Placement, target: float, base_macs: int, tau0: float,
                     tolerance: float = 0.01, remain: float = 0.2, same_ratio: bool = True
                     ) -> tuple[float, float, str]:
    """The global nullifying threshold whose MAC ratio is closest to ``target``: ``(tau, ratio, how)``.

    First the reference's step-halving walk from ``tau0``
    (:func:`compress_core.criteria.group_sparsity.threshold_search`); when it ends farther than
    ``tolerance`` from the target (its steps can jump over a step of the ratio), a
    bisection over midpoints between neighbouring group norms (the ratio only changes
    at a norm and is non-increasing in ``tau``) finds the closest reachable ratio.
    """
    def ratio_of(tau: float) -> float:
        return mac_ratio(graph, params, place, tau, base_macs, remain, same_ratio)

    walk = group_sparsity.threshold_search(ratio_of, target, tau0)
    if abs(walk.ratio - target) <= tolerance:
        return walk.tau, walk.ratio, "walk"
    norms = np.unique(np.concatenate([v for s in place.sparse for v in group_norms(params, s).values()]))
    # midpoints between neighbouring norms: a threshold far from every norm keeps the same groups
    # under float round-off (TF and torch reach the same widths)
    cands = np.concatenate([[0.0], (norms[1:] + norms[:-1]) / 2, [2 * norms[-1] + 1.0]])
    lo, hi = 0, len(cands) - 1  # invariant: ratio(cands[lo]) > target >= ratio(cands[hi]), when reachable
    if ratio_of(cands[hi]) > target:
        return float(cands[hi]), ratio_of(cands[hi]), "floor"
    if ratio_of(cands[lo]) <= target:
        return float(cands[lo]), ratio_of(cands[lo]), "bisection"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ratio_of(cands[mid]) > target else (lo, mid)
    best = min((cands[lo], cands[hi]), key=lambda t: abs(ratio_of(t) - target))
    return float(best), ratio_of(best), "bisection"


def layer_table(before: Graph, after: Graph) -> list[dict]:
    """Per conv/dense layer of ``before``: MACs and params before and after (its ``.hinge`` counted with it)."""
    def by_layer(g):
        out: dict[str, list[int]] = {}
        for c in flops.layer_costs(g):
            if c.op in ("conv", "dense"):
                key = c.name.removesuffix(".hinge")
                acc = out.setdefault(key, [0, 0, 0])
                acc[0] += c.macs
                acc[1] += c.params
                acc[2] = g.shapes()[c.name][0] if not c.name.endswith(".hinge") else acc[2]
        return out
    b, a = by_layer(before), by_layer(after)
    return [{"layer": k, "macs_before": v[0], "params_before": v[1], "macs_after": a[k][0],
             "params_after": a[k][1], "width_before": v[2], "width_after": a[k][2],
             "decomposed": f"{k}.hinge" in after} for k, v in b.items()]
