"""KSE compression of a graph (numpy): kernel clustering, the compressed network in two forms.

After :func:`compress_core.criteria.kse.kse_indicator` has given every input
channel ``c`` of a conv ``W [N, C, kh, kw]`` a centroid count ``q_c``, the layer
is described by a :class:`LayerCode`: for every kept input channel a codebook
``B_c [q_c, kh, kw]`` and assignments ``L_c [N]``, so that the effective kernel is
``W'[n, c] = B_c[L_c[n]]``. A channel kept in full is the codebook ``W[:, c]``
with ``L_c = 0..N-1``; a pruned channel has no codebook.

Forms of the compressed network, all ordinary graphs:

* **dense** (:func:`compress`): one conv per layer with the kernel ``W'`` rebuilt
  (what the reference runs); pruned input channels are removed from the
  network: the producing conv loses the filters when nothing else reads them
  (a block's inner channels), otherwise the conv reads a ``select`` of the kept
  channels (a residual stream, a DenseNet concatenation).
* **trainable centroids**: the dense form trained by the backend, with
  :func:`project` after every step putting the weights back on the codebook
  structure (fixed assignments; a centroid moves by the sum of its members'
  updates, i.e. it gets the sum of their gradients, as the reference's gather).
* **shared activations** (:func:`shared_form`): each input channel convolved once
  per centroid, then summed by assignment, as the paper's FLOPs assume:
  ``select`` (repeat channel c ``q_c`` times) -> depthwise conv (the centroids)
  -> ``select`` (for filter n, the map of centroid ``L_c[n]`` of every c) ->
  grouped 1x1 conv of ones (groups = N: the ``N * C`` additions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core import cdc, prune
from compress_core.criteria.kse import check_weight
from compress_core.errors import UserError
from compress_core.graph import Graph, Node, conv_node

#: distance entries per k-means chunk (bounds memory to ~64 MB of float64)
_CHUNK_ELEMENTS = 8_000_000


# -- k-means ------------------------------------------------------------------------------------
def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``||x_i - c_j||^2`` for batches ``x [B, N, D]``, ``c [B, q, D]`` -> ``[B, N, q]`` (clipped at 0)."""
    d2 = (np.einsum("bnd,bnd->bn", x, x)[:, :, None] + np.einsum("bqd,bqd->bq", c, c)[:, None, :]
          - 2.0 * np.matmul(x, c.transpose(0, 2, 1)))
    return np.maximum(d2, 0.0)


def _assign(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of every point (1-D points: by the sorted centroids' midpoints)."""
    b, n, d = x.shape
    if d > 1:
        return _sq_dist(x, c).argmin(axis=2)
    order = np.argsort(c[..., 0], axis=1, kind="stable")
    cs = np.take_along_axis(c[..., 0], order, axis=1)
    mids = 0.5 * (cs[:, 1:] + cs[:, :-1])
    # one global search: channel b's values are shifted by b * span, past every other channel's
    span = 4.0 * max(float(np.abs(x).max()), float(np.abs(c).max()), 1e-30) + 1.0
    shift = span * np.arange(b)[:, None]
    pos = np.searchsorted((mids + shift).ravel(), (x[..., 0] + shift).ravel()).reshape(b, n)
    pos -= (mids.shape[1] * np.arange(b))[:, None]
    return np.take_along_axis(order, pos, axis=1)


def _means(x: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Cluster means; an empty cluster keeps its old centre."""
    b, _, d = x.shape
    q = old.shape[1]
    flat = (labels + q * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=b * q).reshape(b, q)
    sums = np.stack([np.bincount(flat, x[..., j].ravel(), b * q) for j in range(d)], axis=1).reshape(b, q, d)
    return np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], old)


def _init(x: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """Initial centres: k-means++ (each next centre drawn with probability ~ squared distance to the
    nearest chosen one); for 1-D points the ``q`` quantiles (one pass instead of ``q``)."""
    b, n, d = x.shape
    if d == 1:
        s = np.sort(x[..., 0], axis=1)
        idx = np.minimum(((np.arange(q) + 0.5) * n / q).astype(np.int64), n - 1)
        return s[:, idx, None]
    rows = np.arange(b)
    centres = np.empty((b, q, d))
    centres[:, 0] = x[rows, rng.integers(0, n, b)]
    d2 = ((x - centres[:, :1]) ** 2).sum(axis=2)
    for j in range(1, q):
        cum = np.cumsum(d2, axis=1)
        r = rng.random(b) * cum[:, -1]
        pick = np.minimum((cum < r[:, None]).sum(axis=1), n - 1)
        centres[:, j] = x[rows, pick]
        d2 = np.minimum(d2, ((x - centres[:, j:j + 1]) ** 2).sum(axis=2))
    return centres


def kmeans(points: np.ndarray, q: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4
           ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of each of ``B`` point sets ``points [B, N, D]`` into ``q`` clusters.

    Minimises ``sum_i ||x_i - c_{l_i}||^2`` per set. Seeded and deterministic (same
    input, same output); stops when every set's centres move less than ``tol``
    times its mean per-dimension variance (scikit-learn's criterion) or after
    ``max_iter`` iterations. Returns ``(centres [B, q, D], labels [B, N])``, the
    labels of the final centres.
    """
    x = np.asarray(points, np.float64)
    b, n, d = x.shape
    if not 1 <= q <= n:
        raise UserError(f"k-means: cannot make {q} clusters of {n} kernels")
    step = max(1, _CHUNK_ELEMENTS // (n * q if d > 1 else n))  # 1-D points need no [N, q] distances
    centres, labels = np.empty((b, q, d)), np.empty((b, n), np.int64)
    for lo in range(0, b, step):
        xs = x[lo:lo + step]
        rng = np.random.default_rng([seed, lo])
        c = _init(xs, q, rng)
        limit = tol * xs.var(axis=1).mean(axis=1)
        for _ in range(max_iter):
            new = _means(xs, _assign(xs, c), c)
            moved = ((new - c) ** 2).sum(axis=(1, 2))
            c = new
            if np.all(moved <= limit):
                break
        centres[lo:lo + step], labels[lo:lo + step] = c, _assign(xs, c)
    return centres, labels


# -- one layer's code ---------------------------------------------------------------------------
@dataclass
class LayerCode:
    """The compressed kernel of one conv: a codebook and assignments per kept input channel.

    ``channels [C']`` are the kept input channels (indices into the conv's input
    as it was when the code was made); ``codebooks[j] [q_j, kh, kw]`` and
    ``labels [C', N]`` (``labels[j, n]`` = centroid of filter ``n`` in channel ``j``);
    ``full [C']`` marks channels kept as they are. ``in_channels`` is ``C``.
    """

    channels: np.ndarray
    codebooks: list[np.ndarray]
    labels: np.ndarray
    full: np.ndarray
    in_channels: int

    @property
    def num_centroids(self) -> np.ndarray:
        return np.array([len(b) for b in self.codebooks], np.int64)

    def dense(self) -> np.ndarray:
        """The rebuilt kernel ``W'[n, j] = codebooks[j][labels[j, n]]``, ``[N, C', kh, kw]``."""
        return np.stack([b[lab] for b, lab in zip(self.codebooks, self.labels)], axis=1).astype(np.float32)

    def drop_filters(self, keep: Sequence[int]) -> LayerCode:
        """Only filters ``keep``; centroids no kept filter uses are removed (labels renumbered)."""
        books, labels = [], []
        for book, lab in zip(self.codebooks, self.labels[:, keep]):
            used, new = np.unique(lab, return_inverse=True)
            books.append(book[used])
            labels.append(new.reshape(lab.shape))
        return LayerCode(self.channels, books, np.array(labels, np.int64).reshape(len(books), len(keep)),
                         self.full, self.in_channels)


def cluster_layer(weight, num_centroids, seed: int = 0, max_iter: int = 100, tol: float = 1e-4) -> LayerCode:
    """Per input channel, k-means of its ``N`` kernels into ``num_centroids[c]`` centroids.

    ``q_c = 0``: channel pruned (no code); ``q_c = N``: kept as it is; otherwise
    :func:`kmeans` (channels with the same ``q`` run as one batch, seeded by
    ``(seed, q)``). Centroids no kernel is assigned to are removed, so a code
    can have fewer centroids than asked for (repeated identical kernels).
    """
    w = check_weight(weight)
    n, c = w.shape[:2]
    q = np.asarray(num_centroids, np.int64)
    if q.shape != (c,) or q.min() < 0 or q.max() > n:
        raise UserError(f"num_centroids must be {c} counts in [0, {n}], got shape {q.shape} "
                        f"and range [{q.min()}, {q.max()}]")
    kept = np.flatnonzero(q > 0)
    x = w.transpose(1, 0, 2, 3).reshape(c, n, -1)
    books: dict[int, np.ndarray] = {}
    labels = np.zeros((c, n), np.int64)
    for qv in np.unique(q[kept]).tolist():
        chans = np.flatnonzero(q == qv)
        if qv == n:
            cent, lab = x[chans], np.broadcast_to(np.arange(n), (len(chans), n))
        else:
            cent, lab = kmeans(x[chans], qv, seed=seed * 1_000_003 + qv, max_iter=max_iter, tol=tol)
        for i, ch in enumerate(chans.tolist()):
            used, new = np.unique(lab[i], return_inverse=True)
            books[ch] = cent[i][used].reshape(-1, *w.shape[2:]).astype(np.float32)
            labels[ch] = new.reshape(-1)
    return LayerCode(kept, [books[ch] for ch in kept.tolist()], labels[kept], q[kept] == n, c)


# -- the compressed network -----------------------------------------------------------------------
def compress(graph: Graph, params: Mapping[str, np.ndarray], codes: Mapping[str, LayerCode]
             ) -> tuple[Graph, dict[str, np.ndarray], dict[str, LayerCode]]:
    """The dense form: every coded conv's kernel rebuilt, pruned input channels removed.

    Returns the new graph, its parameters and the codes restricted to what the
    network still has (kept inputs and filters).
    """
    p = dict(params)
    codes = dict(codes)
    for name, code in codes.items():
        node = graph[name]
        if node.op != "conv" or node.attrs["groups"] != 1:
            raise UserError(f"KSE compresses ungrouped convolutions; '{name}' is not one")
        shape = graph.param_shapes()[f"{name}.weight"]
        if code.in_channels != shape[1] or code.labels.shape[1] != shape[0]:
            raise UserError(f"KSE code of '{name}' is for {code.labels.shape[1]}x{code.in_channels} "
                            f"kernels, the layer has {shape[0]}x{shape[1]}")
        dense = np.zeros(shape, np.float32)
        dense[:, code.channels] = code.dense()
        p[f"{name}.weight"] = dense
    points = {pt.conv: pt for pt in cdc.mask_points(graph)}
    for name, code in list(codes.items()):
        if len(code.channels) == code.in_channels:
            continue
        point = points.get(name)
        if point is not None and point.mode == "outputs":
            graph, p = prune.keep_outputs(graph, p, point.producer, code.channels)
            if point.producer in codes:
                codes[point.producer] = codes[point.producer].drop_filters(code.channels)
        else:
            graph, p = prune.keep_inputs(graph, p, name, code.channels)
    return graph, p, codes


def project(params: Mapping[str, np.ndarray], codes: Mapping[str, LayerCode]
            ) -> tuple[dict[str, np.ndarray], dict[str, LayerCode]]:
    """Weights of the dense form after an SGD step, put back on the codebook structure.

    Before the step every kernel equalled its centroid ``b``; a centroid moves by
    the sum of its members' updates, ``b' = b + sum_{n: L[n] = j} (W[n] - b)``:
    with (Nesterov) momentum this is exactly SGD on the centroid with the summed
    gradient (both are linear in the gradients). Returns the projected weights of
    the coded convs (for ``set_weights(strict=False)``) and the updated codes.
    """
    out, new_codes = {}, {}
    for name, code in codes.items():
        w = np.asarray(params[f"{name}.weight"], np.float64)
        books = []
        for j, (book, lab) in enumerate(zip(code.codebooks, code.labels)):
            delta = np.zeros(book.shape)
            np.add.at(delta, lab, w[:, j] - book[lab])
            books.append((book + delta).astype(np.float32))
        new = LayerCode(code.channels, books, code.labels, code.full, code.in_channels)
        new_codes[name] = new
        out[f"{name}.weight"] = new.dense()
    return out, new_codes


def codes_from_weights(params: Mapping[str, np.ndarray], codes: Mapping[str, LayerCode]
                       ) -> dict[str, LayerCode]:
    """Codebooks read back from dense-form weights that lie on the code structure (after a resume)."""
    out = {}
    for name, code in codes.items():
        w = np.asarray(params[f"{name}.weight"], np.float32)
        books = []
        for j, (book, lab) in enumerate(zip(code.codebooks, code.labels)):
            first = np.unique(lab, return_index=True)[1]
            books.append(w[first, j])
        out[name] = LayerCode(code.channels, books, code.labels, code.full, code.in_channels)
    return out


def shared_form(graph: Graph, params: Mapping[str, np.ndarray], codes: Mapping[str, LayerCode]
                ) -> tuple[Graph, dict[str, np.ndarray]]:
    """The shared-activation form of a dense-form network (see the module docstring).

    Coded conv ``name`` becomes ``name.kse_rep`` (select), ``name.kse_dw``
    (depthwise conv, the centroids, stride/padding of the original),
    ``name.kse_gather`` (select) and ``name`` (1x1 conv of ones, groups = N,
    ``kse_sum`` attribute set, the original bias). Same output as the dense form.
    """
    p = dict(params)
    nodes = list(graph.nodes)
    for name, code in codes.items():
        node = graph[name]
        a = node.attrs
        q = code.num_centroids
        offsets = np.concatenate([[0], np.cumsum(q)[:-1]])
        total, n = int(q.sum()), code.labels.shape[1]
        rep = tuple(int(j) for j, qj in enumerate(q.tolist()) for _ in range(qj))
        gather = tuple(int(v) for v in (code.labels + offsets[:, None]).T.ravel())
        new = [Node(f"{name}.kse_rep", "select", node.inputs, {"stride": 1, "src": rep}),
               conv_node(f"{name}.kse_dw", f"{name}.kse_rep", total, k=a["k"], stride=a["stride"], pad=a["pad"],
                         dilation=a["dilation"], groups=total),
               Node(f"{name}.kse_gather", "select", (f"{name}.kse_dw",), {"stride": 1, "src": gather}),
               Node(name, "conv", (f"{name}.kse_gather",),
                    {**conv_node(name, "", n, k=1, pad=0, groups=n, bias=a["bias"]).attrs, "kse_sum": True})]
        i = next(i for i, m in enumerate(nodes) if m.name == name)
        nodes[i:i + 1] = new
        p[f"{name}.kse_dw.weight"] = np.concatenate(code.codebooks)[:, None].astype(np.float32)
        p[f"{name}.weight"] = np.ones((n, len(q), 1, 1), np.float32)
    new_graph = graph.replace(nodes)
    new_graph.shapes()
    return new_graph, p


def paper_costs(graph: Graph, codes: Mapping[str, LayerCode]) -> dict[str, int]:
    """The paper's accounting of the coded convs of a dense-form graph.

    Per coded conv with output ``H x W``: MACs ``sum_c q_c kh kw H W`` (each
    input channel convolved once per centroid), additions ``N C' H W`` (summing
    the shared maps; listed apart, not MACs), parameters ``sum_c q_c kh kw``
    (centroids and full kernels) and index bits ``sum_{clustered c} N ceil(log2 q_c)``.
    """
    shapes = graph.shapes()
    out = {"macs": 0, "adds": 0, "params": 0, "index_bits": 0}
    for name, code in codes.items():
        kh, kw = graph[name].attrs["k"]
        hw = int(np.prod(shapes[name][1:]))
        q, n = code.num_centroids, code.labels.shape[1]
        out["macs"] += int(q.sum()) * kh * kw * hw
        out["adds"] += n * len(q) * hw
        out["params"] += int(q.sum()) * kh * kw
        out["index_bits"] += int(sum(n * int(np.ceil(np.log2(v))) for v, f in zip(q, code.full) if not f and v > 1))
    return out


def layer_names(graph, pattern: str) -> list[str]:
    """Ungrouped convs whose name fully matches ``pattern``, in graph order."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"kse.layers is not a regular expression ({e}): {pattern!r}") from None
    names = [n.name for n in graph.of_op("conv") if rx.fullmatch(n.name) and n.attrs["groups"] == 1]
    if not names:
        raise UserError(f"kse.layers {pattern!r} matches no convolution of '{graph.arch}'")
    return names
