"""BatchNorm folded into the layer before it, for inference-only files (numpy only).

An inference BatchNorm is an affine map per channel, ``y = s (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``; when ``z`` is a conv or dense output that nothing else
reads, the map moves into that layer: ``W' = s W`` (row by row) and ``b' = s (b - mean) + beta``.
The result computes the same function at inference with one pass over each map fewer; it
cannot be trained as the original (the batch statistics are gone).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from compress_core.ir.checkpoint import check_params
from compress_core.ir.graph import Graph, Node


def foldable(graph: Graph) -> dict[str, str]:
    """BatchNorm name -> the conv or dense node it folds into.

    A BatchNorm folds when its input is a plain conv (not a DCFF fused conv, whose
    weights are a product) or a dense layer that the BatchNorm alone reads; a layer
    read elsewhere too (another branch, the graph's output) keeps its BatchNorm.
    """
    readers = Counter(i for n in graph.nodes for i in n.inputs)
    readers[graph.output] += 1
    out = {}
    for n in graph.of_op("bn"):
        src = graph[n.inputs[0]]
        if src.op in ("conv", "dense") and "fused_from" not in src.attrs and readers[src.name] == 1:
            out[n.name] = src.name
    return out


def fold_bn(graph: Graph, params: Mapping[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """An equivalent graph (at inference) with every :func:`foldable` BatchNorm folded into its layer.

    The layer keeps its name and gains a bias; readers of the BatchNorm read the layer. The
    products are taken in float64 and stored as float32. Other BatchNorms stay as they are.
    """
    check_params(graph, params)
    folds = foldable(graph)
    out = {k: v for k, v in params.items() if k.rsplit(".", 1)[0] not in folds}
    for bn, layer in folds.items():
        p = {k: np.asarray(params[f"{bn}.{k}"], np.float64) for k in ("weight", "bias", "running_mean", "running_var")}
        s = p["weight"] / np.sqrt(p["running_var"] + float(graph[bn].attrs["eps"]))
        w = np.asarray(params[f"{layer}.weight"], np.float64)
        b = np.asarray(params.get(f"{layer}.bias", 0.0), np.float64)
        out[f"{layer}.weight"] = (w * s.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
        out[f"{layer}.bias"] = ((b - p["running_mean"]) * s + p["bias"]).astype(np.float32)
    nodes = []
    for n in graph.nodes:
        if n.name in folds:
            continue
        attrs = dict(n.attrs, bias=True) if n.name in folds.values() else dict(n.attrs)
        nodes.append(Node(n.name, n.op, tuple(folds.get(i, i) for i in n.inputs), attrs))
    return graph.replace(nodes, output=folds.get(graph.output, graph.output)), out
