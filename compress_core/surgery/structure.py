"""Block structure read off a graph: dominators, residual blocks, coarse-to-fine block indices.

Methods that need blocks (CDC's coarse-to-fine labels, DCFF's per-block rate formats,
Hinge's placements) derive them here from the graph's structure, never from layer
names, so they work on any graph, imported ones included.

* A node *dominates* the output when every path from the input to the output
  passes through it: the stem, a plain chain's layers, a residual stream's adds.
* A *residual block* is an ``add`` with the convs between it and the dominator that
  feeds it: its ``branch`` (the convs of the path with the most convs, in order)
  and its ``shortcut`` (the convs of the other paths: projections).
* The *block index* of a conv counts the boundaries before it: dominators that are
  convs, adds, concatenations or pools. A chain network puts every conv in its own
  block; a residual network a block's convs in one block; a DenseNet each dense
  layer (and each transition) in its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress_core.ir.graph import Graph

BOUNDARIES = ("conv", "add", "concat", "maxpool", "avgpool")


def dominators(graph: Graph) -> set[str]:
    """Nodes on every path from the input to the output (the output included)."""
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    doms: dict[str, set[str]] = {}
    for n in graph.nodes:
        if not n.inputs:
            doms[n.name] = {n.name}
            continue
        common = set.intersection(*(doms[i] for i in n.inputs))
        doms[n.name] = common | {n.name}
    keep = doms[graph.output]
    return {name for name in keep if name in order}


@dataclass(frozen=True)
class Block:
    """A residual block: the ``add`` closing it, the dominator ``source`` feeding it, and its convs."""

    add: str
    source: str
    branch: tuple[str, ...]
    shortcut: tuple[str, ...]


def _path_convs(graph: Graph, start: str, source: str) -> list[str] | None:
    """Convs on the single-input chain from ``start`` back to ``source`` (graph order), or None."""
    convs, name = [], start
    while name != source:
        node = graph[name]
        if node.op == "conv":
            convs.append(name)
        if not node.inputs:
            return None
        name = node.inputs[0]
    return convs[::-1]


def residual_blocks(graph: Graph) -> list[Block]:
    """Every two-input ``add`` whose inputs meet at a dominator, in graph order (module docstring)."""
    dom = dominators(graph)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    out = []
    for n in graph.of_op("add"):
        if len(n.inputs) != 2:
            continue
        before = [d for d in dom if order[d] < order[n.name]]
        if not before:
            continue
        source = max(before, key=order.__getitem__)
        paths = [_path_convs(graph, i, source) for i in n.inputs]
        if any(p is None for p in paths):
            continue
        branch, shortcut = sorted(paths, key=len, reverse=True)
        out.append(Block(n.name, source, tuple(branch), tuple(shortcut)))
    return out


def block_index(graph: Graph) -> dict[str, int]:
    """``{conv: block}``: the number of boundaries (module docstring) before each conv, minus one."""
    dom = dominators(graph)
    out, count = {}, -1
    for n in graph.nodes:
        if n.name in dom and n.op in BOUNDARIES:
            count += 1
        if n.op == "conv":
            out[n.name] = max(count, 0)
    return out
