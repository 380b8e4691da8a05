"""Cutting channel groups out of a graph and its weights, in one pass (numpy).

:func:`prune` removes every unit of the named groups not in ``keep``: producer rows,
BatchNorm entries, readers' input columns, ``select`` entries and sources, grouped
convs' blocks (and their ``groups``). The result is an ordinary graph that every
backend builds. :func:`mask` is its reference: the original network with every
reader's input columns of the removed channels zeroed computes the same logits.
:func:`select_inputs` is the other surgery, which cuts no channel: one reader is
made to read a subset of its input through an inserted ``select`` (the CDC
reference prunes a block's read of a residual stream that way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node
from compress_core.surgery.groups import (
    ChannelGroup,
    Member,
    channel_groups,
    cuttable_group,
)

_BN = ("weight", "bias", "running_mean", "running_var")


def unit_indices(member: Member, units) -> np.ndarray:
    """Indices of ``units`` along ``member``'s channel axis (see :class:`Member`)."""
    u = np.asarray(units, np.int64)
    j = (u[:, None] * member.size + np.arange(member.size)[None]).ravel()
    return member.offset + (j[:, None] * member.expand + np.arange(member.expand)[None]).ravel()


def check_keep(groups: Sequence[ChannelGroup], keep: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """``keep`` as sorted index arrays, or a one-line :class:`UserError` naming the bad group or index."""
    by_id = {g.id: g for g in groups}
    out = {}
    for gid, idx in keep.items():
        g = cuttable_group(by_id, gid, "keep")
        a = np.asarray(idx)
        if a.ndim != 1 or a.size == 0:
            raise UserError(f"keep['{gid}'] must keep at least one of its {g.width} units")
        if not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"keep['{gid}'] must hold integer unit indices, got {a.dtype}")
        if a.min() < 0 or a.max() >= g.width:
            raise UserError(f"keep['{gid}'] has index {int(a.max() if a.max() >= g.width else a.min())} "
                            f"outside [0, {g.width})")
        if len(np.unique(a)) != a.size:
            raise UserError(f"keep['{gid}'] repeats an index")
        out[gid] = np.sort(a.astype(np.int64))
    return out


class _Cuts:
    """Removed indices per node and role, gathered over every group of a keep set."""

    def __init__(self, groups: Sequence[ChannelGroup], keep: Mapping[str, np.ndarray]):
        self.rows: dict[str, list] = {}
        self.cols: dict[str, list] = {}
        self.fused: dict[str, list] = {}
        self.bn: dict[str, list] = {}
        self.sel_out: dict[str, list] = {}
        self.sel_in: dict[str, list] = {}
        self.blocks: dict[str, float] = {}  # grouped conv -> share of its conv groups removed
        by_id = {g.id: g for g in groups}
        for gid, kept in keep.items():
            g = by_id[gid]
            gone = np.setdiff1d(np.arange(g.width), kept)
            if gone.size == 0:
                continue
            for m in g.members:
                idx = unit_indices(m, gone)
                role = {"out": self.rows, "diagonal": self.rows, "grouped": self.rows, "fused": self.fused,
                        "bn": self.bn, "in": self.cols, "select_out": self.sel_out,
                        "select_in": self.sel_in}[m.kind]
                role.setdefault(m.node, []).append(idx)
                if m.kind == "grouped":
                    self.blocks[m.node] = gone.size / g.width

    @staticmethod
    def kept(removed: Mapping[str, list], node: str, n: int) -> np.ndarray | None:
        if node not in removed:
            return None
        mask = np.ones(n, bool)
        mask[np.concatenate(removed[node])] = False
        return np.flatnonzero(mask)


def _cut(graph: Graph, params: Mapping[str, np.ndarray] | None, keep, groups) -> tuple[Graph, dict | None]:
    groups = channel_groups(graph) if groups is None else groups
    keep = check_keep(groups, keep)
    cuts = _Cuts(groups, keep)
    shapes = graph.shapes()
    p = None if params is None else dict(params)
    nodes = []
    for n in graph.nodes:
        a = dict(n.attrs)
        width = shapes[n.name][0]
        cin = shapes[n.inputs[0]][0] if n.inputs else 0
        rows = cuts.kept(cuts.rows, n.name, width)
        cols = cuts.kept(cuts.cols, n.name, cin)
        if n.op in ("conv", "dense", "diagonal"):
            if n.op == "conv" and "fused_from" in a:
                rows = cuts.kept(cuts.fused, n.name, width)
            if rows is not None:
                a["out"] = int(rows.size)
            if n.name in cuts.blocks:
                a["groups"] = round(a["groups"] * (1 - cuts.blocks[n.name]))
            if p is not None:
                _slice(p, n, rows, cols)
        elif n.op == "bn" and p is not None:
            entries = cuts.kept(cuts.bn, n.name, width)
            if entries is not None:
                for k in _BN:
                    p[f"{n.name}.{k}"] = p[f"{n.name}.{k}"][entries]
        elif n.op == "select":
            src = np.asarray(a["src"], np.int64)
            sources = cuts.kept(cuts.sel_in, n.name, cin)
            if sources is not None:  # old source index -> new one, removed -> -1 (a zero channel)
                new = np.full(cin + 1, -1, np.int64)
                new[sources] = np.arange(sources.size)
                src = new[src]  # src == -1 reads new[-1] == -1: zeros stay zeros
            entries = cuts.kept(cuts.sel_out, n.name, width)
            if entries is not None:
                src = src[entries]
            a["src"] = tuple(int(v) for v in src)
        nodes.append(Node(n.name, n.op, n.inputs, a))
    meta = {k: v for k, v in graph.meta.items() if k != "widths"}  # a zoo width plan no longer describes it
    new = graph.replace(nodes, meta=meta)
    new.shapes()
    return new, p


def _slice(p: dict, n: Node, rows, cols) -> None:
    fused = "fused_from" in n.attrs
    w = p[f"{n.name}.weight"]
    if cols is not None:
        w = w[:, cols]
    if rows is not None:
        if fused:
            p[f"{n.name}.fusion"] = p[f"{n.name}.fusion"][rows]
        elif n.op == "diagonal":
            n_diag = w.shape[0]
            w = w[rows[rows < n_diag]]
        else:
            w = w[rows]
        if f"{n.name}.bias" in p and not fused:
            p[f"{n.name}.bias"] = p[f"{n.name}.bias"][rows]
    p[f"{n.name}.weight"] = np.ascontiguousarray(w)


def prune(graph: Graph, params: Mapping[str, np.ndarray], keep: Mapping[str, Sequence[int]],
          groups: Sequence[ChannelGroup] | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """Keep only units ``keep[group id]`` of each named group; ``(graph, params)`` of the smaller network.

    Groups not named stay whole. A group that cannot be cut, an index out of range,
    a repeated index or an empty set is a one-line :class:`UserError`. ``groups``:
    the graph's :func:`channel_groups`, when the caller has them already.
    """
    new, p = _cut(graph, params, keep, groups)
    from compress_core.ir.checkpoint import check_params

    check_params(new, p, source="pruned weights")
    return new, p


def pruned_graph(graph: Graph, keep: Mapping[str, Sequence[int]],
                 groups: Sequence[ChannelGroup] | None = None) -> Graph:
    """The graph :func:`prune` would give, without touching weights (for costs of a plan)."""
    return _cut(graph, None, keep, groups)[0]


def mask(graph: Graph, params: Mapping[str, np.ndarray], keep: Mapping[str, Sequence[int]],
         groups: Sequence[ChannelGroup] | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """The original network with every reader's input columns of the removed channels zeroed
    (``select`` sources of removed channels read zeros): the same function as :func:`prune`'s."""
    groups = channel_groups(graph) if groups is None else groups
    keep = check_keep(groups, keep)
    cuts = _Cuts(groups, keep)
    p = {k: np.array(v, copy=True) for k, v in params.items()}
    nodes = []
    for n in graph.nodes:
        a = n.attrs
        if n.name in cuts.cols:
            p[f"{n.name}.weight"][:, np.concatenate(cuts.cols[n.name])] = 0.0
        if n.op == "select" and n.name in cuts.sel_in:
            gone = set(np.concatenate(cuts.sel_in[n.name]).tolist())
            a = {**a, "src": tuple(-1 if j in gone else int(j) for j in a["src"])}
        nodes.append(Node(n.name, n.op, n.inputs, a))
    return graph.replace(nodes), p


def select_inputs(graph: Graph, params: Mapping[str, np.ndarray], layer: str,
                  keep: Sequence[int]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Make ungrouped conv ``layer`` read only its input channels ``keep`` through an inserted ``select``.

    The producers keep computing every channel (other readers may need them); the
    conv's weight columns are sliced. A second call composes the maps.
    """
    node = graph[layer]
    if node.op != "conv" or node.attrs["groups"] != 1:
        raise UserError(f"'{layer}' is not an ungrouped conv; its inputs cannot be selected")
    width = graph.in_channels(layer)
    idx = np.asarray(keep, np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise UserError(f"selecting inputs of '{layer}': must keep at least one channel")
    if idx.min() < 0 or idx.max() >= width or len(np.unique(idx)) != idx.size:
        raise UserError(f"selecting inputs of '{layer}': kept channels must be distinct indices in [0, {width})")
    idx = np.sort(idx)
    p = dict(params)
    p[f"{layer}.weight"] = np.ascontiguousarray(params[f"{layer}.weight"][:, idx])
    nodes = list(graph.nodes)
    prev = graph[node.inputs[0]]
    name = f"{layer}.in_select"
    if prev.name == name:  # selected before: compose the maps
        i = nodes.index(prev)
        nodes[i] = Node(name, "select", prev.inputs, {**prev.attrs, "src": tuple(int(prev.attrs["src"][j])
                                                                                 for j in idx)})
    else:
        i = nodes.index(node)
        nodes[i:i + 1] = [Node(name, "select", node.inputs, {"stride": 1, "src": tuple(int(j) for j in idx)}),
                          Node(layer, node.op, (name,), node.attrs)]
    new = graph.replace(nodes)
    new.shapes()
    return new, p
