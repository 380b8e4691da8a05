"""DCFF (Lin et al., "Training Compact CNNs ... using Dynamic-coded Filter Fusion"): rates, fused graph, export.

The numpy side of the method, framework-free:

* **Rates** (:func:`parse_rates`, :func:`conv_rates`): the per-layer prune rates
  in the formats users already have, checked against the network.

  ==============  =====================================================================
  model           accepted lengths
  ==============  =====================================================================
  vgg16           13: one per conv ``features.0 .. features.12``
  resnet20..110   lmbxmu: ``3n`` per-block ``conv1`` rates + 3 per-stage rates (a stage
  (6n+2)          rate prunes every ``conv2`` of the stage, and stage 1's also the stem
                  ``conv1``: they add into one residual stream); or one per conv
                  (``6n+1``: stem, then ``conv1, conv2`` of every block)
  resnet50        lmbxmu 37: stem + 16 ``conv1`` + 16 ``conv2`` + 4 per-stage ``conv3``
                  rates (the stage's ``downsample.0`` follows); MMRazor 49: stem + ``(conv1,
                  conv2, conv3)`` of each of the 16 blocks
  ==============  =====================================================================

  In a one-per-conv list, convs tied by a residual addition must have equal rates.
  A layer keeps ``kept_count(n, rate) = floor(n (1 - rate))`` of its ``n`` filters.

* **Training graph** (:func:`training_graph`): the compact network (zoo model with
  the kept widths) whose rated convs are *fused*: each keeps its ``n`` raw filters
  ``W [n, in, kh, kw]`` and computes with ``fusion @ W`` (``fusion [m, n]`` is a
  buffer; see :mod:`compress_core.graph`). Rated convs are every conv but ResNet-50's
  ``downsample.0`` (a plain compact conv, as in the reference code). Inputs are
  already compact (the previous layer's ``m`` channels), as in lmbxmu/DCFF.

* **Selection and fusion** (:func:`select_and_fuse`): per residual-tied group
  (:func:`compress_core.coupling.prunable_layers`) one keep set. The score of
  filter ``j`` of a group is the **sum** over the group's fused convs of their DCFF
  importance ``s_j = mean_k KL(p_j || p_k)`` (each conv's own distributions, on its
  own weights): summing treats the convs of a stage as one layer of wider filters,
  where the KL of concatenated independent parts adds. Then the ``m`` best (ties to
  the lower index), sorted; channel ``r`` of the layer (and of its BatchNorm) is the
  fused filter of the ``r``-th kept index, ``fusion[r] = p_keep[r]``.

* **Starting points**: seeded weights (:func:`init_params`, the paper trains from
  scratch) or a trained unpruned model (:func:`warm_start`); :func:`slice_params`
  also gives the L1-norm filter-pruning baseline at the same widths.

* **Export** (:func:`export`): each fused conv becomes a plain conv of ``m``
  filters holding ``fusion @ W`` (and ``fusion @ b``); BatchNorm and everything
  else are copied as trained. The result is an ordinary zoo-shaped graph.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core import zoo
from compress_core.coupling import prunable_layers
from compress_core.criteria import dcff as crit
from compress_core.errors import UserError
from compress_core.graph import Graph, Node
from compress_core.init import init_params as _init_params

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.conv1$")


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
    """The convs DCFF fuses, in graph order: every conv but ResNet-50's projection shortcuts."""
    return [n.name for n in graph.of_op("conv") if ".downsample." not in n.name]


def _blocks(graph: Graph) -> list[tuple[int, str]]:
    out = []
    for name in fused_convs(graph):
        m = _BLOCK.match(name)
        if m:
            out.append((int(m.group(1)), name.rsplit(".", 1)[0]))
    return out


def rate_formats(graph: Graph) -> dict[str, int]:
    """Accepted rate-list lengths of ``graph``'s architecture: ``{format description: length}``."""
    arch, convs = graph.arch, fused_convs(graph)
    if arch == "vgg16":
        return {"one per conv": len(convs)}
    blocks = _blocks(graph)
    stages = len({s for s, _ in blocks})
    if arch == "resnet50":
        return {"lmbxmu: stem + 16 conv1 + 16 conv2 + 4 stage": 1 + 2 * len(blocks) + stages,
                "MMRazor: stem + (conv1, conv2, conv3) per block": len(convs)}
    if re.fullmatch(r"resnet\d+", arch) and arch in zoo.MODELS and arch != "resnet164":
        return {f"lmbxmu: {len(blocks)} block conv1 + {stages} stage": len(blocks) + stages,
                "one per conv": len(convs)}
    raise UserError(f"DCFF rates are defined for vgg16, resnet20..110 and resnet50, not '{arch}'")


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
    if len(rates) == len(convs):
        out = dict(zip(convs, rates))
    else:
        out = _grouped_rates(graph, rates)
    for members in tied_groups(graph).values():
        values = {out[c] for c in members}
        if len(values) > 1:
            raise UserError("dcff.rates: residual-tied convs share one keep set and need one rate, got "
                            + ", ".join(f"{c}={out[c]}" for c in members[:4]))
    return out


def _grouped_rates(graph: Graph, rates: list[float]) -> dict[str, float]:
    """lmbxmu's layout: [stem] + per-block rates of each inner conv kind + one rate per stage."""
    blocks = _blocks(graph)
    stages = sorted({s for s, _ in blocks})
    bottleneck = graph.arch == "resnet50"
    inner, tied = (("conv1", "conv2"), "conv3") if bottleneck else (("conv1",), "conv2")
    out, i = {}, 0
    if bottleneck:
        out["conv1"], i = rates[0], 1
    for kind in inner:
        for _, b in blocks:
            out[f"{b}.{kind}"], i = rates[i], i + 1
    stage_rate = dict(zip(stages, rates[i:]))
    for s, b in blocks:
        out[f"{b}.{tied}"] = stage_rate[s]
    if not bottleneck:
        out["conv1"] = stage_rate[stages[0]]  # the stem adds into stage 1's stream
    return out


def tied_groups(graph: Graph) -> dict[str, list[str]]:
    """Fused convs by residual-tied channel space: ``{first member: [members in graph order]}``."""
    fused = set(fused_convs(graph))
    by_group: dict[str, list[str]] = {}
    for layer in prunable_layers(graph):
        if layer.name in fused:
            by_group.setdefault(layer.group, []).append(layer.name)
    return {members[0]: members for members in by_group.values()}


# -- the training graph ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """One keep set: its fused convs, raw width ``n`` and kept width ``m``."""

    name: str
    members: tuple[str, ...]
    n: int
    m: int


def training_graph(name: str, rates: Sequence[float], num_classes: int = 10,
                   input_shape=(3, 32, 32)) -> tuple[Graph, list[Group]]:
    """The fused compact network of zoo model ``name`` at ``rates`` and its keep-set groups."""
    full = zoo.build(name, num_classes, input_shape)
    per_conv = conv_rates(full, rates)
    raw = {c: full.shapes()[c][0] for c in per_conv}
    widths = {c: crit.kept_count(raw[c], r) for c, r in per_conv.items()}
    compact = zoo.build(name, num_classes, input_shape, widths)
    nodes = [Node(n.name, n.op, n.inputs, {**n.attrs, "fused_from": raw[n.name]}) if n.name in raw else n
             for n in compact.nodes]
    meta = dict(compact.meta, dcff_rates=list(per_conv.values()))
    graph = compact.replace(nodes, meta=meta)
    groups = [Group(g, tuple(members), raw[g], widths[g]) for g, members in tied_groups(graph).items()]
    return graph, groups


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


def slice_params(full: Graph, params: Mapping[str, np.ndarray], compact: Graph,
                 keeps: Mapping[str, Sequence[int]], whole_rows: frozenset = frozenset()) -> dict[str, np.ndarray]:
    """Weights of ``compact`` cut out of ``full``'s: filter pruning at DCFF's widths.

    ``keeps`` maps one conv of each tied group (e.g. :class:`Group` names) to its
    kept output indices; every layer of that channel space keeps those rows (and
    its BatchNorm those entries), every reader those input columns. Layers in
    ``whole_rows`` keep all their rows (the raw filters of a fused conv). Returns
    the parameters of ``compact`` that ``full`` has (a fused graph's fusion
    matrices are not among them).
    """
    layers = prunable_layers(full)
    group_keep = {layer.group: np.asarray(keeps[layer.name]) for layer in layers if layer.name in keeps}
    out = {k: np.asarray(v) for k, v in params.items()}
    for layer in layers:
        idx = group_keep.get(layer.group)
        if idx is None:
            continue
        for k in (f"{layer.name}.weight", f"{layer.name}.bias"):
            if k in out and layer.name not in whole_rows:
                out[k] = out[k][idx]
        if layer.bn:
            for p in ("weight", "bias", "running_mean", "running_var"):
                out[f"{layer.bn}.{p}"] = out[f"{layer.bn}.{p}"][idx]
        for reader, offset in layer.consumers:
            out[f"{reader}.weight"] = out[f"{reader}.weight"][:, offset + idx]
    return {k: np.ascontiguousarray(out[k], np.float32) for k in compact.param_shapes() if k in out}


def warm_start(full: Graph, params: Mapping[str, np.ndarray], graph: Graph, groups: Sequence[Group],
               t: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights of fused ``graph`` from a trained unpruned ``full``, and the keep sets used.

    Each group keeps the ``m`` filters of highest summed DCFF importance of the full
    filters at ``t``; fused convs keep all ``n`` raw filters and read the kept input
    channels, BatchNorm and plain layers keep the kept entries (by position), and
    the fusion matrices are computed at ``t`` on the sliced filters.
    """
    keeps = {g.name: crit.select(sum(crit.dcff_importance(params[f"{c}.weight"], t) for c in g.members), g.m)
             for g in groups}
    fused = frozenset(c for g in groups for c in g.members)
    out = slice_params(full, params, graph, keeps, fused)
    for g in groups:
        for c in g.members:
            out[f"{c}.fusion"] = np.asarray(crit.fusion_matrix(out[f"{c}.weight"], keeps[g.name], t), np.float32)
    return out, keeps


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
