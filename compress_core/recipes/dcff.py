"""DCFF (Lin et al., "Training Compact CNNs ... using Dynamic-coded Filter Fusion"): rates, fused graph, export.

The numpy side of the method, framework-free:

* **Rates** (:func:`parse_rates`, :func:`conv_rates`): the per-layer prune rates
  in the formats users already have, checked against the network, for any graph:

  * one number: every fused conv at that rate;
  * one per fused conv, in graph order (VGG-16: 13; ResNet-(6n+2): ``6n+1``, the stem,
    then ``conv1, conv2`` of every block; MMRazor's ResNet-50: 49); convs that write one
    residual stream need equal rates;
  * lmbxmu's per-block layout, for networks with residual blocks (named adapter over
    the channel groups and the blocks of :mod:`compress_core.surgery.structure`): the
    stem's group when it is its own (ResNet-50), the first inner group of every block,
    the second (bottlenecks), then one rate per residual stream. ResNet-(6n+2):
    ``3n + 3`` (a stage rate prunes every ``conv2`` of the stage, and stage 1's also the
    stem: they add into one stream); ResNet-50: 37 (stem + 16 ``conv1`` + 16 ``conv2``
    + 4 stages, each stage's ``downsample.0`` following its stream).

  A layer keeps ``kept_count(n, rate) = floor(n (1 - rate))`` of its ``n`` filters.

* **Training graph** (:func:`training_graph`): the unpruned network whose rated convs
  are *fused* (:func:`fuse_all`: each keeps its ``n`` raw filters ``W [n, in, kh, kw]``
  and computes with ``fusion @ W``, ``fusion [m, n]`` a buffer; see
  :mod:`compress_core.ir.graph`), cut by :mod:`compress_core.surgery` to ``m`` fusion
  rows per channel group: BatchNorm and readers get the compact ``m`` channels, as in
  lmbxmu/DCFF. Rated convs are every conv but the projection shortcuts of residual
  blocks (ResNet-50's ``downsample.0``: a plain compact conv, as in the reference code).

* **Selection and fusion** (:func:`select_and_fuse`): one keep set per channel group
  (:func:`tied_groups`). The score of filter ``j`` of a group is the **sum** over the
  group's fused convs of their DCFF importance ``s_j = mean_k KL(p_j || p_k)`` (each
  conv's own distributions, on its own weights): summing treats the convs of a stage as
  one layer of wider filters, where the KL of concatenated independent parts adds. Then
  the ``m`` best (ties to the lower index), sorted; channel ``r`` of the layer (and of its
  BatchNorm) is the fused filter of the ``r``-th kept index, ``fusion[r] = p_keep[r]``.

* **Starting points**: seeded weights (:func:`init_params`, the paper trains from
  scratch) or a trained unpruned model (:func:`warm_start`).

* **Export** (:func:`export`): each fused conv becomes a plain conv of ``m``
  filters holding ``fusion @ W`` (and ``fusion @ b``); BatchNorm and everything
  else are copied as trained. The result is an ordinary graph.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core.criteria import dcff as crit
from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node
from compress_core.ir.init import init_params as _init_params
from compress_core.surgery import channel_groups, prune, pruned_graph
from compress_core.surgery.structure import residual_blocks


# -- rates --------------------------------------------------------------------------------------------
def parse_rates(text: str | Sequence[float]) -> list[float]:
    """A rate list from a Python-like expression such as ``[0.0]+[0.35,0.4,0.1]*10+[0.3]*6``.

    Only list literals of numbers, ``+`` between lists, ``*`` by a non-negative
    integer and parentheses are accepted (nothing is executed).
    """
    if not isinstance(text, str):
        return [float(v) for v in text]
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise UserError(f"dcff.rates: cannot parse {text!r} (write e.g. [0.0]+[0.35,0.4,0.1]*10)") from None

    def ev(node):
        if isinstance(node, ast.List | ast.Tuple):
            return [num(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return ev(node.left) + ev(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            lst, k = (node.left, node.right) if isinstance(node.right, ast.Constant) else (node.right, node.left)
            if not (isinstance(k, ast.Constant) and isinstance(k.value, int) and k.value >= 0):
                raise UserError(f"dcff.rates: a list can only be repeated a whole number of times, in {text!r}")
            return ev(lst) * k.value
        raise UserError(f"dcff.rates: unsupported expression {ast.unparse(node)!r} in {text!r} "
                        "(use lists of numbers, + and * n)")

    def num(node) -> float:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -num(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        raise UserError(f"dcff.rates: {ast.unparse(node)!r} is not a number, in {text!r}")

    return ev(tree.body)


def fused_convs(graph: Graph) -> list[str]:
    """The convs DCFF fuses, in graph order: every ungrouped conv but the projection shortcuts of
    residual blocks (ResNet-50's ``downsample.0``: a plain compact conv, as in the reference code). A
    grouped or depthwise conv follows the channels of its input's group as a plain compact conv."""
    shortcuts = {c for b in residual_blocks(graph) for c in b.shortcut}
    return [n.name for n in graph.of_op("conv") if n.name not in shortcuts and n.attrs["groups"] == 1]


def _layout_groups(graph: Graph) -> list[list[str]] | None:
    """lmbxmu's rate layout as lists of channel groups: the stem's own group (when it has one), then
    for each position k the k-th inner group of every residual block, then the residual streams;
    None for a graph without residual blocks of fused convs only."""
    blocks = residual_blocks(graph)
    tied = tied_groups(graph)
    of = {c: gid for gid, members in tied.items() for c in members}
    if not blocks or any(c not in of for b in blocks for c in b.branch):
        return None  # no residual blocks, or blocks with grouped convs (MobileNet): not lmbxmu's layout
    in_blocks = {c for b in blocks for c in b.branch + b.shortcut}
    streams = list(dict.fromkeys(of[b.branch[-1]] for b in blocks))
    stem = [gid for gid, members in tied.items() if gid not in streams and not set(members) & in_blocks]
    inner = max(len(b.branch) for b in blocks) - 1
    return [stem] + [[of[b.branch[k]] for b in blocks if len(b.branch) > k + 1] for k in range(inner)] + [streams]


def rate_formats(graph: Graph) -> dict[str, int]:
    """Accepted rate-list lengths of ``graph``: ``{format description: length}``.

    Always: one rate for everything, and one per fused conv (tied convs need equal rates;
    MMRazor's ResNet-50 format). With residual blocks also lmbxmu's: the stem's group (if
    it is its own), each block's first inner group, (each block's second, for bottlenecks),
    one per residual stream.
    """
    formats = {"one for every conv": 1, "one per conv": len(fused_convs(graph))}
    layout = _layout_groups(graph)
    if layout is not None:
        names = ["stem"] + [f"block conv{k + 1}" for k in range(len(layout) - 2)] + ["stage"]
        formats["lmbxmu: " + " + ".join(f"{len(p)} {n}" for p, n in zip(layout, names) if p)] = sum(map(len, layout))
    return formats


def conv_rates(graph: Graph, rates: Sequence[float]) -> dict[str, float]:
    """``{fused conv: prune rate}`` from a rate list in one of :func:`rate_formats`; raises on misfit."""
    rates = [float(r) for r in rates]
    formats = rate_formats(graph)
    if len(rates) not in formats.values():
        expected = " or ".join(f"{v} ({k})" for k, v in formats.items())
        raise UserError(f"dcff.rates has {len(rates)} numbers; {graph.arch} expects {expected}")
    for i, r in enumerate(rates):
        if not (np.isfinite(r) and 0.0 <= r < 1.0):
            raise UserError(f"dcff.rates[{i}] is {r}, outside [0, 1)")
    convs = fused_convs(graph)
    tied = tied_groups(graph)
    if len(rates) == 1:
        out = dict.fromkeys(convs, rates[0])
    elif len(rates) == len(convs):
        out = dict(zip(convs, rates))
    else:
        order = [gid for part in _layout_groups(graph) for gid in part]
        out = {c: r for gid, r in zip(order, rates) for c in tied[gid]}
    for members in tied.values():
        values = {out[c] for c in members}
        if len(values) > 1:
            raise UserError("dcff.rates: residual-tied convs share one keep set and need one rate, got "
                            + ", ".join(f"{c}={out[c]}" for c in members[:4]))
    return out


def tied_groups(graph: Graph) -> dict[str, list[str]]:
    """Fused convs by channel group: ``{group id: [fused convs writing it, in graph order]}``."""
    fused = set(fused_convs(graph))
    out: dict[str, list[str]] = {}
    for g in channel_groups(graph):
        members = [m.node for m in g.of_kind("out", "fused") if m.node in fused]
        if members and g.cuttable:
            out[g.id] = members
    return out


# -- the training graph ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """One keep set: its channel group, its fused convs, raw width ``n`` and kept width ``m``."""

    name: str
    members: tuple[str, ...]
    n: int
    m: int


def fuse_all(graph: Graph, params: Mapping[str, np.ndarray] | None = None, convs: Sequence[str] | None = None
             ) -> tuple[Graph, dict[str, np.ndarray] | None]:
    """``graph`` with ``convs`` (default: :func:`fused_convs`) as fused convs of identity fusion:
    the same function, ready for a cut that keeps every raw filter and selects fusion rows."""
    convs = set(fused_convs(graph) if convs is None else convs)
    shapes = graph.shapes()
    nodes = [Node(n.name, n.op, n.inputs, {**n.attrs, "fused_from": shapes[n.name][0]}) if n.name in convs else n
             for n in graph.nodes]
    p = None
    if params is not None:
        p = dict(params)
        p.update({f"{c}.fusion": np.eye(shapes[c][0], dtype=np.float32) for c in convs})
    return graph.replace(nodes), p


def training_graph(full: Graph, rates: Sequence[float]) -> tuple[Graph, list[Group]]:
    """The fused compact network of the unpruned ``full`` at ``rates`` and its keep-set groups: ``full``
    with fused convs, cut to ``kept_count(n, rate)`` fusion rows per group
    (:func:`compress_core.surgery.pruned_graph`): every fused conv keeps its ``n`` raw filters and
    reads the compact outputs of the layer before it."""
    per_conv = conv_rates(full, rates)
    fused, _ = fuse_all(full)
    tied = tied_groups(full)
    raw = {gid: full.shapes()[members[0]][0] for gid, members in tied.items()}
    kept = {gid: crit.kept_count(raw[gid], per_conv[members[0]]) for gid, members in tied.items()}
    graph = pruned_graph(fused, {gid: np.arange(k) for gid, k in kept.items()})
    graph = graph.replace(graph.nodes, meta=dict(graph.meta, dcff_rates=list(per_conv.values())))
    return graph, [Group(gid, tuple(tied[gid]), raw[gid], kept[gid]) for gid in tied]


def init_params(graph: Graph, groups: Sequence[Group], seed: int = 0, t: float = 1.0) -> dict[str, np.ndarray]:
    """Seeded weights of a fused graph with its fusion matrices computed at temperature ``t``."""
    params = _init_params(graph, seed)
    params.update(select_and_fuse(params, groups, t)[0])
    return params


def select_and_fuse(params: Mapping[str, np.ndarray], groups: Sequence[Group], t: float
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``({"<conv>.fusion": [m, n]}, {group: kept indices})`` at temperature ``t`` (module docstring)."""
    fusion, keeps = {}, {}
    for g in groups:
        weights = [np.asarray(params[f"{c}.weight"]) for c in g.members]
        scores = sum(crit.dcff_importance(w, t) for w in weights)
        keep = np.sort(np.asarray(crit.select(scores, g.m), dtype=np.int64))
        keeps[g.name] = keep
        for c, w in zip(g.members, weights):
            fusion[f"{c}.fusion"] = np.asarray(crit.fusion_matrix(w, keep, t), np.float32)
    return fusion, keeps


def softness(params: Mapping[str, np.ndarray]) -> float:
    """Mean weight a fused filter gives its own raw filter (1.0: fusion is a plain selection)."""
    own = [np.max(v, axis=1).mean() for k, v in params.items() if k.endswith(".fusion")]
    return float(np.mean(own)) if own else 1.0


def warm_start(full: Graph, params: Mapping[str, np.ndarray], graph: Graph, groups: Sequence[Group],
               t: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights of fused ``graph`` from a trained unpruned ``full``, and the keep sets used.

    Each group keeps the ``m`` filters of highest summed DCFF importance of the full
    filters at ``t``; the unpruned network with fused convs is cut to those fusion rows
    (:func:`compress_core.surgery.prune`: fused convs keep all ``n`` raw filters and read
    the kept input channels, BatchNorm and plain layers keep the kept entries, by position)
    and the fusion matrices are computed at ``t`` on the raw filters.
    """
    keeps = {g.name: np.sort(np.asarray(crit.select(sum(crit.dcff_importance(params[f"{c}.weight"], t)
                                                        for c in g.members), g.m), np.int64))
             for g in groups}
    fused, p = fuse_all(full, params, [c for g in groups for c in g.members])
    small, out = prune(fused, p, keeps)
    if small.param_shapes() != graph.param_shapes():
        raise UserError(f"DCFF warm start: the cut of '{full.arch}' does not give the training graph's shapes")
    for g in groups:
        for c in g.members:
            out[f"{c}.fusion"] = np.asarray(crit.fusion_matrix(out[f"{c}.weight"], keeps[g.name], t), np.float32)
    return {k: np.ascontiguousarray(out[k], np.float32) for k in graph.param_shapes()}, keeps


# -- export ---------------------------------------------------------------------------------------------
def export(graph: Graph, params: Mapping[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """The compact network of ordinary layers: fused convs -> plain convs holding ``fusion @ W``.

    ``W' = P W`` and ``b' = P b`` with ``P = fusion [m, n]`` (float64 product);
    everything else, BatchNorm included, is copied as trained.
    """
    nodes, out = [], {k: v for k, v in params.items() if not k.endswith(".fusion")}
    for n in graph.nodes:
        if n.op == "conv" and "fused_from" in n.attrs:
            P = np.asarray(params[f"{n.name}.fusion"], np.float64)
            w = np.asarray(params[f"{n.name}.weight"], np.float64)
            out[f"{n.name}.weight"] = (P @ w.reshape(w.shape[0], -1)).reshape(P.shape[0], *w.shape[1:]).astype(
                np.float32)
            if n.attrs["bias"]:
                out[f"{n.name}.bias"] = (P @ np.asarray(params[f"{n.name}.bias"], np.float64)).astype(np.float32)
            n = Node(n.name, n.op, n.inputs, {k: v for k, v in n.attrs.items() if k != "fused_from"})
        nodes.append(n)
    meta = {k: v for k, v in graph.meta.items() if k != "dcff_rates"}
    return graph.replace(nodes, meta=meta), out
