"""Residual blocks removed whole: the depth cut (numpy).

A residual block ``y = x + f(x)`` whose shortcut is the identity (its ``add`` reads the
dominator ``x`` feeding it directly) can go: the network then reads ``x`` where it read
``y``. Its branch ``f`` (convs, BatchNorms, activations, a depthwise conv) disappears,
and so does an activation after the ``add`` that ``x`` already passed through (a basic
block's ``relu(x + f(x))`` becomes ``relu(x) = x`` when ``x`` is a ReLU's output).
Blocks with a projection or a strided shortcut change the shape and stay.

Why: a network's time is close to proportional to its depth at a given width, while cutting
channels of layers that are already narrow (16 and 32 channels in ResNet-56) saves MACs the
kernels do not turn into time (``benchmarks/speed.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from compress_core.errors import UserError
from compress_core.ir.graph import Graph, drop_unused
from compress_core.surgery.structure import Block, residual_blocks

#: an activation after a removed block's add is dropped when its new input is already such an output
#: (``relu(relu(x)) = relu(x)``, ``relu(relu6(x)) = relu6(x)``, ``relu6(relu6(x)) = relu6(x)``)
IDEMPOTENT = {"relu": ("relu", "relu6"), "relu6": ("relu6",)}


def branch_nodes(graph: Graph, block: Block) -> set[str]:
    """The nodes between ``block.source`` and its ``add`` on the branch side."""
    other = next(i for i in graph[block.add].inputs if i != block.source)
    out, todo = set(), [other]
    while todo:
        name = todo.pop()
        if name == block.source or name in out:
            continue
        out.add(name)
        todo.extend(graph[name].inputs)
    return out


def removable_blocks(graph: Graph) -> list[Block]:
    """The residual blocks that can be removed (module docstring), in graph order: the ``add`` reads
    the block's source directly, and nothing outside the branch reads a node inside it."""
    readers: dict[str, set[str]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, set()).add(n.name)
    out = []
    for b in residual_blocks(graph):
        if b.shortcut or b.source not in graph[b.add].inputs or graph[b.add].inputs[0] == graph[b.add].inputs[1]:
            continue
        inside = branch_nodes(graph, b)
        if "input" in inside or any(readers.get(n, set()) - inside - {b.add} for n in inside):
            continue
        out.append(b)
    return out


def remove_blocks(graph: Graph, params: Mapping[str, np.ndarray] | None, adds: Iterable[str]
                  ) -> tuple[Graph, dict[str, np.ndarray] | None]:
    """``graph`` (and ``params``) without the removable blocks closed by ``adds``: readers of each
    ``add`` read the block's source, the branch is dropped, an idempotent activation after it too."""
    adds = set(adds)
    blocks = {b.add: b for b in removable_blocks(graph)}
    unknown = sorted(adds - set(blocks))
    if unknown:
        raise UserError(f"cannot remove the block closed by '{unknown[0]}': not a residual block with an "
                        f"identity shortcut (removable: {', '.join(list(blocks)[:4]) or 'none'}, ...)")
    alias: dict[str, str] = {a: blocks[a].source for a in adds}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    nodes = []
    for n in graph.nodes:
        if n.name in alias:
            continue
        inputs = tuple(resolve(i) for i in n.inputs)
        if (len(inputs) == 1 and n.inputs[0] in alias and n.name != graph.output
                and graph[inputs[0]].op in IDEMPOTENT.get(n.op, ())):
            alias[n.name] = inputs[0]
            continue
        nodes.append(replace(n, inputs=inputs) if inputs != n.inputs else n)
    small = drop_unused(graph.replace(nodes, output=resolve(graph.output)))
    if params is None:
        return small, None
    kept = small.param_shapes()
    return small, {k: v for k, v in params.items() if k in kept}


def blocks_holding(graph: Graph, names: Iterable[str]) -> set[str]:
    """The removable blocks (their adds) whose removal takes away one of the nodes ``names`` (a tap a
    method reads, e.g. a distillation target)."""
    names = [n for n in names if n in graph]
    return {b.add for b in removable_blocks(graph)
            if any(n not in remove_blocks(graph, None, [b.add])[0] for n in names)}
