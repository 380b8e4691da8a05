"""Criteria that need nothing but the weights: the L1-norm baseline every benchmark compares with.

A unit's L1 importance is the sum of the absolute weights of the rows its producers
make (every conv, dense or grouped conv of the group: a residual stream sums the
norms of every conv that writes it, as Torch-Pruning's group importance does); a
fused conv (DCFF's training form) counts the filters it really computes,
``fusion @ W``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from compress_core.errors import UserError
from compress_core.ir.graph import Graph
from compress_core.surgery.groups import ChannelGroup, channel_groups


def l1_norms(graph: Graph, params: Mapping[str, np.ndarray],
             groups: Sequence[ChannelGroup] | None = None) -> dict[str, np.ndarray]:
    """``{group id: [width]}`` L1 norms of every cuttable group's units (module docstring)."""
    groups = channel_groups(graph) if groups is None else groups
    out = {}
    for g in groups:
        if not g.cuttable:
            continue
        total = np.zeros(g.width)
        for m in g.of_kind("out", "fused", "grouped", "diagonal"):
            w = np.asarray(params[f"{m.node}.weight"], np.float64)
            if m.kind == "fused":
                f = np.asarray(params[f"{m.node}.fusion"], np.float64)
                w = f @ w.reshape(w.shape[0], -1)
            rows = np.abs(w.reshape(w.shape[0], -1)).sum(axis=1) if w.ndim > 1 else np.abs(w)
            total += rows.reshape(g.width, -1).sum(axis=1)[: g.width]
        out[g.id] = total
    return out


def l1_prune(graph: Graph, params: Mapping[str, np.ndarray], only: Sequence[str] | None = None,
             **plan_kw) -> tuple[Graph, dict[str, np.ndarray]]:
    """The L1-norm filter-pruning baseline every benchmark compares with (Li et al., 2017, in
    Torch-Pruning's group form): the cuttable groups (or the ids in ``only``) scored by
    :func:`l1_norms`, planned by :func:`compress_core.surgery.plan` with ``plan_kw`` (``ratio``,
    ``counts``, ``mac_target``, ...), cut in one pass."""
    from compress_core.surgery.plan import plan
    from compress_core.surgery.prune import prune

    groups = channel_groups(graph)
    scores = l1_norms(graph, params, groups)
    if only is not None:
        missing = sorted(set(only) - set(scores))
        if missing:
            raise UserError(f"L1 pruning: no cuttable channel group '{missing[0]}'")
        scores = {k: scores[k] for k in only}
    return prune(graph, params, plan(graph, scores, groups=groups, **plan_kw), groups)
