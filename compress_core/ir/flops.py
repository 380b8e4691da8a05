"""MAC and parameter counts from a :class:`~compress_core.ir.graph.Graph`.

One multiply-add counts as one MAC (the convention of the CDC, KSE, Hinge and
DCFF papers when they say "FLOPs"). Convolutions and dense layers are counted;
BatchNorm, ReLU, additions, pooling and channel selection are not, since they
are negligible and often folded away at deployment. Both backends report these
numbers, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress_core.ir.graph import Graph


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    macs: int
    params: int


def layer_costs(graph: Graph) -> list[LayerCost]:
    """MACs and trainable parameters of every conv / dense / bn node, in graph order.

    conv: ``out * H_out * W_out * (in / groups) * kh * kw`` MACs;
    dense: ``in * out`` MACs; diagonal: ``min(in, out)`` MACs. Parameters are trainable values (weights, biases,
    BN gamma and beta); running statistics are buffers and are not counted.
    """
    shapes, pshapes = graph.shapes(), graph.param_shapes()
    costs = []
    for n in graph.of_op("conv", "dense", "bn", "diagonal"):
        params = sum(int(np.prod(s)) for k, s in pshapes.items()
                     if k.rsplit(".", 1)[0] == n.name and not Graph.is_buffer(k)
                     and not (n.attrs.get("kse_sum") and k.endswith(".weight")))
        macs = 0
        if n.op in ("conv", "dense", "diagonal"):
            w = pshapes[f"{n.name}.weight"]
            spatial = int(np.prod(shapes[n.name][1:])) if n.op == "conv" else 1
            macs = int(np.prod(w)) * spatial
        if n.attrs.get("fused_from"):
            # a DCFF fused conv costs what its export costs (``out`` filters): the n raw filters
            # and the fusion product exist only while training
            w = pshapes[f"{n.name}.weight"]
            params = n.attrs["out"] * (int(np.prod(w[1:])) + int(bool(n.attrs["bias"])))
            macs = macs // w[0] * n.attrs["out"]
        costs.append(LayerCost(n.name, n.op, macs, params))
    return costs


def count_macs(graph: Graph) -> int:
    """Total MACs of one forward pass on one image."""
    return sum(c.macs for c in layer_costs(graph))


def count_params(graph: Graph) -> int:
    """Total trainable parameters."""
    return sum(c.params for c in layer_costs(graph))


def summary(graph: Graph) -> dict:
    """``{"macs": ..., "params": ...}`` for metrics files."""
    return {"macs": count_macs(graph), "params": count_params(graph)}
