"""Physical channel pruning of a graph and its weights (numpy).

Two surgeries cover channel pruning in every architecture of the zoo:

* :func:`keep_outputs` removes output channels of a conv (or dense) layer: its
  weight rows and bias, the BatchNorm entries that normalise them, and the
  matching input columns of every layer that reads them (through ReLU,
  pooling and concatenations). Channels that reach a residual addition cannot
  be removed this way (the other branch still has them): that is an error.
* :func:`keep_inputs` makes a conv read only some of its input channels: a
  ``select`` node is inserted before it and its weight columns are sliced. The
  producer keeps computing all channels (other readers may need them), which is
  how the CDC reference prunes a block's read of the residual stream.

Both return a new ``(graph, params)``; the result is an ordinary graph that
every backend builds and every checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from compress_core.errors import UserError
from compress_core.graph import Graph, Node

_PER_CHANNEL = ("relu", "maxpool", "avgpool", "gap")


def _keep_index(keep: Sequence[int], width: int, what: str) -> np.ndarray:
    idx = np.asarray(keep, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise UserError(f"{what}: must keep at least one channel")
    if idx.min() < 0 or idx.max() >= width or len(np.unique(idx)) != idx.size:
        raise UserError(f"{what}: kept channels must be distinct indices in [0, {width})")
    return np.sort(idx)


def _set_attr(nodes: list[Node], name: str, **attrs) -> None:
    i = next(i for i, n in enumerate(nodes) if n.name == name)
    nodes[i] = Node(name, nodes[i].op, nodes[i].inputs, {**nodes[i].attrs, **attrs})


def keep_outputs(graph: Graph, params: Mapping[str, np.ndarray], layer: str,
                 keep: Sequence[int]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Keep only output channels ``keep`` of conv/dense ``layer`` (see module docstring)."""
    node = graph[layer]
    if node.op not in ("conv", "dense"):
        raise UserError(f"'{layer}' is a {node.op}, not a conv or dense layer")
    width = graph.shapes()[layer][0]
    idx = _keep_index(keep, width, f"pruning outputs of '{layer}'")
    if node.op == "conv" and node.attrs["groups"] != 1:
        raise UserError(f"cannot prune outputs of grouped conv '{layer}'")
    p = dict(params)
    nodes = list(graph.nodes)
    p[f"{layer}.weight"] = params[f"{layer}.weight"][idx]
    if f"{layer}.bias" in params:
        p[f"{layer}.bias"] = params[f"{layer}.bias"][idx]
    _set_attr(nodes, layer, out=int(idx.size))
    # walk the readers of these channels, tracking where they sit in each tensor
    frontier = [(layer, 0)]
    while frontier:
        src, offset = frontier.pop()
        for n in graph.consumers(src):
            cols = offset + idx
            if n.op in _PER_CHANNEL:
                frontier.append((n.name, offset))
            elif n.op == "bn":
                for k in ("weight", "bias", "running_mean", "running_var"):
                    full = params[f"{n.name}.{k}"]
                    p[f"{n.name}.{k}"] = np.concatenate([full[:offset], full[cols], full[offset + width:]])
                frontier.append((n.name, offset))
            elif n.op == "concat":
                shapes = graph.shapes()
                before = sum(shapes[i][0] for i in n.inputs[:n.inputs.index(src)])
                frontier.append((n.name, before + offset))
            elif n.op in ("conv", "dense"):
                if n.op == "conv" and n.attrs["groups"] != 1:
                    raise UserError(f"cannot prune outputs of '{layer}': grouped conv '{n.name}' reads them")
                w = params[f"{n.name}.weight"]
                p[f"{n.name}.weight"] = np.concatenate([w[:, :offset], w[:, cols], w[:, offset + width:]], axis=1)
            else:
                raise UserError(f"cannot prune outputs of '{layer}': they reach {n.op} '{n.name}' "
                                f"(a residual add or channel map needs all of them)")
    new = graph.replace(nodes)
    new.shapes()
    return new, p


def keep_inputs(graph: Graph, params: Mapping[str, np.ndarray], layer: str,
                keep: Sequence[int]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Make conv ``layer`` read only its input channels ``keep`` through an inserted ``select``."""
    node = graph[layer]
    if node.op != "conv" or node.attrs["groups"] != 1:
        raise UserError(f"'{layer}' is not an ungrouped conv; its inputs cannot be selected")
    width = graph.in_channels(layer)
    idx = _keep_index(keep, width, f"pruning inputs of '{layer}'")
    p = dict(params)
    p[f"{layer}.weight"] = params[f"{layer}.weight"][:, idx]
    nodes = list(graph.nodes)
    prev = graph[node.inputs[0]]
    sel_name = f"{layer}.in_select"
    if prev.name == sel_name:  # pruned before: compose the maps
        _set_attr(nodes, sel_name, src=tuple(int(prev.attrs["src"][i]) for i in idx))
    else:
        i = nodes.index(node)
        nodes[i:i + 1] = [Node(sel_name, "select", node.inputs, {"stride": 1, "src": tuple(int(j) for j in idx)}),
                          Node(layer, node.op, (sel_name,), node.attrs)]
    new = graph.replace(nodes)
    new.shapes()
    return new, p
