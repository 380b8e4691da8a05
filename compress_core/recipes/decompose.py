"""Replace layers of a graph by factorised sequences (numpy weights, any backend).

A :class:`Replacement` is the factorised sequence of one layer: new nodes whose
last one keeps the layer's name (so readers, BatchNorm coupling and the graph
output stay as they are) and their canonical parameters. :func:`apply` puts any
number of them into a graph. Sequences, with no non-linearity in between:

* ``tucker2`` (Kim et al. 2016), per group for grouped convs:
  ``1x1 (in -> g*r_in, groups g)`` -> ``kh x kw`` core (``g*r_in -> g*r_out``, the
  original stride, padding, dilation and groups) -> ``1x1 (g*r_out -> out, groups g)``
  carrying the original bias;
* ``cp`` (Lebedev et al. 2015): ``1x1 (in -> R)`` -> depthwise ``kh x 1`` (stride
  ``(s_h, 1)``, padding ``(p_h, 0)``, dilation ``(d_h, 1)``) -> depthwise ``1 x kw``
  (stride ``(1, s_w)``, padding ``(0, p_w)``, dilation ``(1, d_w)``) -> ``1x1 (R -> out)`` with the bias;
* ``svd`` for a dense layer: ``dense (in -> r)`` -> ``dense (r -> out)`` with the bias;
* ``diagonal`` for any dense layer: the diagonal ``W[j, k] = 0 for j != k``
  (``min(out, in)`` weights) as a ``diagonal`` node, ``y_j = W[j, j] x_j (+ b_j)``
  for ``j < min(out, in)`` and ``0 (+ b_j)`` beyond.

A layer that cannot or should not be replaced raises :class:`Skip` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compress_core.criteria import lowrank
from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.graph import Graph, Node, conv_node, pads


class Skip(Exception):
    """The layer stays as it is; the message says why (for the log)."""


@dataclass(frozen=True)
class Replacement:
    layer: str                 # the replaced layer; the last new node carries its name
    kind: str                  # tucker2, cp, svd, diagonal
    source: str                # the node the new sequence reads
    nodes: tuple[Node, ...]    # new nodes, in order
    params: dict               # canonical parameters of the new nodes
    info: dict = field(default_factory=dict)


def _layer(graph: Graph, layer: str, op: str) -> Node:
    node = graph[layer]
    if node.op != op:
        raise UserError(f"'{layer}' is a {node.op} layer, not a {op}")
    return node


def _bias(params: Mapping[str, np.ndarray], layer: str) -> dict:
    b = params.get(f"{layer}.bias")
    return {} if b is None else {f"{layer}.bias": np.asarray(b, np.float32)}


def _groups(graph: Graph, params, node: Node) -> list[np.ndarray]:
    w = np.asarray(params[f"{node.name}.weight"], np.float64)
    return np.split(w, node.attrs["groups"], axis=0)


def tucker2_ranks_of(graph: Graph, params, layer: str, weakening: float = 0.0) -> tuple[int, int]:
    """VBMF ranks of conv ``layer``: the largest over its groups (one rank for every group),
    then :func:`compress_core.criteria.lowrank.weaken` toward the group's channel counts."""
    node = _layer(graph, layer, "conv")
    groups = _groups(graph, params, node)
    ranks = [lowrank.tucker2_ranks(w) for w in groups]
    out, inp = groups[0].shape[:2]
    return (lowrank.weaken(max(r[0] for r in ranks), out, weakening),
            lowrank.weaken(max(r[1] for r in ranks), inp, weakening))


def tucker2_conv(graph: Graph, params, layer: str, ranks: Sequence[int] | None = None,
                 weakening: float = 0.0, n_iter_max: int = 100) -> Replacement:
    """Tucker-2 sequence of conv ``layer`` (ranks per group; ``None``: :func:`tucker2_ranks_of`;
    ``n_iter_max``: HOOI sweeps of :func:`compress_core.criteria.lowrank.tucker2`)."""
    node = _layer(graph, layer, "conv")
    a, g = node.attrs, node.attrs["groups"]
    ranks = tuple(ranks) if ranks is not None else tucker2_ranks_of(graph, params, layer, weakening)
    if min(ranks) == 0:
        raise Skip(f"VBMF rank {ranks} has a zero: nothing above the noise level")
    parts = [lowrank.tucker2(w, ranks, n_iter_max=n_iter_max) for w in _groups(graph, params, node)]
    r_out, r_in = ranks
    x = node.inputs[0]
    reduce_, core = f"{layer}.reduce", f"{layer}.core"
    nodes = (conv_node(reduce_, x, g * r_in, k=1, pad=0, groups=g),
             Node(core, "conv", (reduce_,), {**a, "out": g * r_out, "bias": False}),
             conv_node(layer, core, a["out"], k=1, pad=0, groups=g, bias=a["bias"]))
    p = {f"{reduce_}.weight": np.concatenate([u_in.T for _, _, u_in in parts])[:, :, None, None],
         f"{core}.weight": np.concatenate([c for c, _, _ in parts]),
         f"{layer}.weight": np.concatenate([u_out for _, u_out, _ in parts])[:, :, None, None],
         **_bias(params, layer)}
    err = _rel_error(_groups(graph, params, node),
                     [lowrank.tucker2_reconstruct(c, uo, ui) for c, uo, ui in parts])
    return Replacement(layer, "tucker2", x, nodes, _f32(p), info={"ranks": [r_out, r_in], "error": err})


def cp_conv(graph: Graph, params, layer: str, rank: int | None = None, rule: str = "vbmf",
            factors: lowrank.CPFactors | None = None, weakening: float = 0.0, **cp_kw) -> Replacement:
    """CP sequence of ungrouped conv ``layer``: from ``factors``, or ``lowrank.cp`` at ``rank``
    (``None``: :func:`compress_core.criteria.lowrank.cp_rank` with ``rule``, weakened toward ``max(out, in)``,
    at most :func:`compress_core.criteria.lowrank.cp_max_rank`)."""
    node = _layer(graph, layer, "conv")
    a = node.attrs
    if a["groups"] != 1:
        raise Skip(f"CP of a grouped conv (groups={a['groups']}) is not supported")
    w = params[f"{layer}.weight"]
    if factors is None:
        if rank is None:
            rank = min(lowrank.weaken(lowrank.cp_rank(w, rule), max(w.shape[:2]), weakening),
                       lowrank.cp_max_rank(w.shape))
        if rank == 0:
            raise Skip("CP rank 0: nothing above the noise level")
        factors = lowrank.cp(w, rank, **cp_kw)
    R = factors.out.shape[1]
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["stride"], pads(a), a["dilation"]
    kh, kw = a["k"]
    x = node.inputs[0]
    names = [f"{layer}.{s}" for s in ("reduce", "vertical", "horizontal")]
    nodes = (conv_node(names[0], x, R, k=1, pad=0),
             conv_node(names[1], names[0], R, k=(kh, 1), stride=(sh, 1), pad=(pt, 0, pb, 0), dilation=(dh, 1), groups=R),
             conv_node(names[2], names[1], R, k=(1, kw), stride=(1, sw), pad=(0, pl, 0, pr), dilation=(1, dw), groups=R),
             conv_node(layer, names[2], a["out"], k=1, pad=0, bias=a["bias"]))
    p = {f"{names[0]}.weight": factors.inp.T[:, :, None, None],
         f"{names[1]}.weight": factors.h.T[:, None, :, None],
         f"{names[2]}.weight": factors.w.T[:, None, None, :],
         f"{layer}.weight": factors.out[:, :, None, None], **_bias(params, layer)}
    return Replacement(layer, "cp", x, nodes, _f32(p), info={"rank": int(R), "error": float(factors.error)})


def svd_dense(graph: Graph, params, layer: str, rank: int | None = None, weakening: float = 0.0) -> Replacement:
    """Truncated SVD of dense ``layer``: ``W ~ U_r (S_r V_r^T)`` as two dense layers
    (``None``: the :func:`compress_core.criteria.lowrank.evbmf_rank` of ``W``, weakened toward ``min(out, in)``)."""
    node = _layer(graph, layer, "dense")
    w = np.asarray(params[f"{layer}.weight"], np.float64)
    if rank is None:
        rank = lowrank.weaken(lowrank.evbmf_rank(w), min(w.shape), weakening)
    if rank == 0:
        raise Skip("VBMF rank 0: nothing above the noise level")
    rank = lowrank.check_rank(rank, min(w.shape), f"SVD of '{layer}'")
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    reduce_ = f"{layer}.reduce"
    nodes = (Node(reduce_, "dense", node.inputs, {"out": rank, "bias": False}),
             Node(layer, "dense", (reduce_,), dict(node.attrs)))
    p = {f"{reduce_}.weight": s[:rank, None] * vt[:rank], f"{layer}.weight": u[:, :rank], **_bias(params, layer)}
    err = float(np.sqrt(np.sum(s[rank:] ** 2) / max(np.sum(s ** 2), 1e-300)))
    return Replacement(layer, "svd", node.inputs[0], nodes, _f32(p), info={"rank": int(rank), "error": err})


def diagonal_mask(shape: Sequence[int]) -> np.ndarray:
    """The structure of a diagonal dense weight ``[out, in]``: ``True`` where ``j == k``."""
    out, inp = shape
    return np.eye(out, inp, dtype=bool)


def shrink_off_diagonal(weight: np.ndarray, step: float) -> np.ndarray:
    """Proximal step of ``(lam / 2) * ||W (.) (1 - D)||^2`` with step size ``eta`` (``step = eta * lam``):
    the entries off the diagonal structure ``D`` are divided by ``1 + step``."""
    w = np.array(weight, np.float32)
    off = ~diagonal_mask(w.shape)
    w[off] /= 1.0 + step
    return w


def diagonal_dense(graph: Graph, params, layer: str) -> Replacement:
    """The diagonal of dense ``layer`` as a ``diagonal`` node of ``n = min(out, in)`` weights:
    ``y_j = W[j, j] x_j (+ b_j)`` for ``j < n``, ``y_j = 0 (+ b_j)`` beyond; the off-diagonal
    weights are dropped (``error`` is their share ``||W (.) (1 - D)|| / ||W||``)."""
    node = _layer(graph, layer, "dense")
    w = np.asarray(params[f"{layer}.weight"], np.float64)
    n = min(w.shape)
    nodes = (Node(layer, "diagonal", node.inputs, dict(node.attrs)),)
    p = {f"{layer}.weight": np.diagonal(w).copy(), **_bias(params, layer)}
    off = np.where(diagonal_mask(w.shape), 0.0, w)
    err = float(np.linalg.norm(off) / max(np.linalg.norm(w), 1e-300))
    return Replacement(layer, "diagonal", node.inputs[0], nodes, _f32(p), info={"params": int(n), "error": err})


def _f32(p: dict) -> dict:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in p.items()}


def _rel_error(originals: Iterable[np.ndarray], approximations: Iterable[np.ndarray]) -> float:
    """``||W - W_approx|| / ||W||`` over all groups."""
    num = den = 0.0
    for w, a in zip(originals, approximations):
        num += float(np.sum((w - a) ** 2))
        den += float(np.sum(w ** 2))
    return float(np.sqrt(num / max(den, 1e-300)))


def _rewire(node: Node, old: str, new: str) -> Node:
    return Node(node.name, node.op, tuple(new if i == old else i for i in node.inputs), node.attrs)


def apply(graph: Graph, params: Mapping[str, np.ndarray],
          replacements: Iterable[Replacement]) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph with every replacement in place, and its parameters."""
    nodes, p = list(graph.nodes), dict(params)
    for rep in replacements:
        i = next(i for i, n in enumerate(nodes) if n.name == rep.layer)
        for k in (f"{rep.layer}.weight", f"{rep.layer}.bias"):
            p.pop(k, None)
        nodes[i:i + 1] = list(rep.nodes)
        p.update(rep.params)
    new = graph.replace(nodes)
    new.shapes()
    return new, p


def probe_graphs(graph: Graph, rep: Replacement) -> tuple[Graph, Graph]:
    """One-layer graphs ``(original, factorised)`` reading an input of the source's shape.

    Their MACs (:func:`compress_core.ir.flops.count_macs`) are the layer's cost before
    and after; the latency guard times them in a backend.
    """
    shape = graph.shapes()[rep.source]
    make = [Node("input", "input")]
    return (Graph("probe", shape, make + [_rewire(graph[rep.layer], rep.source, "input")], rep.layer),
            Graph("probe", shape, make + [_rewire(n, rep.source, "input") for n in rep.nodes], rep.layer))


def costs(graph: Graph, rep: Replacement) -> dict:
    """MACs and parameters of the layer before and after the replacement."""
    before, after = probe_graphs(graph, rep)
    return {"macs_before": flops.count_macs(before), "macs_after": flops.count_macs(after),
            "params_before": flops.count_params(before), "params_after": flops.count_params(after)}


def check_saves(graph: Graph, rep: Replacement) -> dict:
    """:func:`costs`, or :class:`Skip` when the sequence would not save MACs."""
    c = costs(graph, rep)
    if c["macs_after"] >= c["macs_before"]:
        raise Skip(f"{rep.kind} {rep.info} would not save MACs ({c['macs_after']} >= {c['macs_before']})")
    return c
