"""Which channels are tied together, read off a graph.

Pruning an output channel of a convolution is only possible together with
everything that shares its channel space: the BatchNorm that follows it, the
layers that read it, and every other layer whose output is added to it (a
residual stream). :func:`prunable_layers` lists conv and dense layers in graph
order with that information, the same for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress_core.graph import Graph

_PASS = ("bn", "relu", "maxpool", "avgpool", "gap", "flatten")


@dataclass(frozen=True)
class PrunableLayer:
    """A conv or dense layer and its coupling.

    ``group`` names the channel space of the output: layers with the same
    group (residual-tied) must keep the same output channels. ``bn`` is the
    BatchNorm normalising these channels right after the layer, if any.
    ``consumers`` are ``(layer, offset)``: the layers that read these channels,
    at which input-channel offset (non-zero after a concatenation).
    """

    name: str
    op: str
    in_channels: int
    out_channels: int
    group: str
    bn: str | None
    consumers: tuple[tuple[str, int], ...]


def prunable_layers(graph: Graph) -> list[PrunableLayer]:
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    shapes = graph.shapes()
    # channel space of each node's output: list of (producer, start, count) segments
    space: dict[str, list[tuple[str, int, int]]] = {"input": [("input", 0, graph.input_shape[0])]}
    readers: dict[str, list[tuple[str, int]]] = {}
    for n in graph.nodes[1:]:
        ins = [space[i] for i in n.inputs]
        if n.op in ("conv", "dense", "select", "diagonal"):
            # a diagonal reads its inputs like a dense layer; it is not prunable itself, and
            # prune.keep_outputs refuses to cut the channels it reads (they map one to one)
            offset = 0
            if n.op != "select":
                for prod, _start, count in ins[0]:
                    readers.setdefault(prod, []).append((n.name, offset))
                    offset += count
            space[n.name] = [(n.name, 0, shapes[n.name][0])]
        elif n.op in _PASS:
            space[n.name] = ins[0]
        elif n.op == "add":
            for other in ins[1:]:
                for (a, _, _), (b, _, _) in zip(ins[0], other):
                    parent[find(b)] = find(a)
            space[n.name] = ins[0]
        elif n.op == "concat":
            space[n.name] = [seg for segs in ins for seg in segs]
    bn_after = {}
    for n in graph.of_op("bn"):
        src = graph[n.inputs[0]]
        if src.op in ("conv", "dense"):
            bn_after[src.name] = n.name
    return [PrunableLayer(n.name, n.op, graph.in_channels(n.name), shapes[n.name][0], find(n.name),
                          bn_after.get(n.name), tuple(readers.get(n.name, ())))
            for n in graph.of_op("conv", "dense")]
