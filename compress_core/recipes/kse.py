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

from compress_core.criteria.kse import check_weight, map_chunks
from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node, conv_node
from compress_core.surgery import channel_groups, prune, select_inputs
from compress_core.surgery.groups import sole_reader_group

#: distance entries per k-means chunk (bounds memory to ~64 MB of float64)
_CHUNK_ELEMENTS = 8_000_000


# -- k-means ------------------------------------------------------------------------------------
def _init(x: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ centres of each set ``x [B, N, D]``: the first drawn uniformly, each next one with
    probability proportional to the squared distance to the nearest chosen centre (the uniform
    draws made up front, in the order of drawing them step by step for all sets, so that chunks of
    sets run apart)."""
    b, n, d = x.shape
    first, u = rng.integers(0, n, b), rng.random((q - 1, b))
    xx = np.einsum("bnd,bnd->bn", x, x)
    centres = np.empty((b, q, d))

    def chunk(lo: int, hi: int) -> None:
        xs, rows = x[lo:hi], np.arange(hi - lo)
        centres[lo:hi, 0] = xs[rows, first[lo:hi]]
        d2 = _sq_to(xs, xx[lo:hi], centres[lo:hi, 0])
        for j in range(1, q):
            cum = np.cumsum(d2, axis=1)
            pick = np.minimum((cum < (u[j - 1, lo:hi] * cum[:, -1])[:, None]).sum(axis=1), n - 1)
            centres[lo:hi, j] = xs[rows, pick]
            np.minimum(d2, _sq_to(xs, xx[lo:hi], centres[lo:hi, j]), out=d2)

    map_chunks(chunk, b, 64)
    return centres


def _sq_to(x: np.ndarray, xx: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``||x_i - c||^2 = |x_i|^2 - 2 <x_i, c> + |c|^2`` (clipped at 0), ``x [B, N, D]``, ``c [B, D]``."""
    r = np.matmul(x, c[:, :, None])[..., 0]
    r *= -2.0
    r += xx
    r += np.einsum("bd,bd->b", c, c)[:, None]
    return np.maximum(r, 0.0, out=r)


def _lloyd(x: np.ndarray, c: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Lloyd iterations of the sets ``x [B, N, D]`` from centres ``c [B, q, D]`` until, in one
    iteration, every set's centres move less than ``tol`` times its mean per-dimension variance
    (scikit-learn's rule, for the batch). A set whose centres no longer move is at a fixed point
    (further iterations would repeat it) and leaves the batch. An empty cluster keeps its centre."""
    c = c.copy()
    limit = tol * x.var(axis=1).mean(axis=1)
    active = np.arange(len(x))
    for _ in range(max_iter):
        xa, ca = x[active], c[active]
        new = _means(xa, _nearest(xa, ca), ca)
        moved = ((new - ca) ** 2).sum(axis=(1, 2))
        c[active] = new
        if np.all(moved <= limit[active]):
            break
        active = active[moved > 0]
    return c


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every point: ``argmin_j ||c_j||^2 - 2 <x_i, c_j>`` (in chunks of
    sets whose ``[N, q]`` scores stay in cache)."""
    b, n, _ = x.shape
    q = c.shape[1]
    ct = np.ascontiguousarray(-2.0 * c.transpose(0, 2, 1))  # a transposed view would make matmul slower
    cc = np.einsum("bqd,bqd->bq", c, c)[:, None, :]
    out = np.empty((b, n), np.int64)
    cached = max(1, 131_072 // (n * q))  # sets whose [N, q] scores stay in cache

    def chunk(lo: int, hi: int) -> None:
        for a in range(lo, hi, cached):
            r = np.matmul(x[a:min(a + cached, hi)], ct[a:min(a + cached, hi)])
            r += cc[a:min(a + cached, hi)]
            out[a:min(a + cached, hi)] = r.argmin(axis=2)

    map_chunks(chunk, b, max(1, 2_000_000 // (n * q)))
    return out


def _means(x: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Cluster means; an empty cluster keeps its old centre."""
    b, _, d = x.shape
    q = old.shape[1]
    flat = (labels + q * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=b * q).reshape(b, q)
    sums = np.stack([np.bincount(flat, x[..., j].ravel(), b * q) for j in range(d)], axis=1).reshape(b, q, d)
    return np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], old)


def _lloyd_line(x: np.ndarray, q: int, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of points on a line ``x [B, N]`` from the ``q`` quantiles, on the sorted
    points: clusters are runs of consecutive points, cut at the midpoints of consecutive centres
    (a point on a midpoint goes to the lower centre), and their means are segment sums. Same
    stopping rule as :func:`_lloyd`. Returns sorted centres ``[B, q]`` and labels ``[B, N]``."""
    b, n = x.shape
    order = np.argsort(x, axis=1)  # ties may go either way: the cuts are by value
    line = _Line(np.take_along_axis(x, order, axis=1))
    c = line.s[:, np.minimum(((np.arange(q) + 0.5) * n / q).astype(np.int64), n - 1)]
    limit = tol * x.var(axis=1)
    active = np.arange(b)
    cuts = line.cuts(active, c, None)
    for _ in range(max_iter):
        ca = np.sort(c[active], axis=1)
        new, cut = np.empty_like(ca), np.empty((len(active), q + 1), np.int64)

        def chunk(lo: int, hi: int, ca=ca, new=new, cut=cut, active=active) -> None:
            sets = active[lo:hi]
            cut[lo:hi] = line.cuts(sets, ca[lo:hi], cuts[sets])
            counts = np.diff(cut[lo:hi], axis=1)
            # every set's end is a start too, so no segment runs on into a set that is not active
            base = n * sets[0]
            sums = np.add.reduceat(line.padded[base:n * (sets[-1] + 1) + 1],
                                   (cut[lo:hi] + n * sets[:, None] - base).ravel()).reshape(hi - lo, -1)[:, :-1]
            new[lo:hi] = np.where(counts > 0, sums / np.maximum(counts, 1), ca[lo:hi])

        map_chunks(chunk, len(active), max(1, 262_144 // n))
        moved = ((new - ca) ** 2).sum(axis=1)
        c[active], cuts[active] = new, cut
        if np.all(moved <= limit[active]):
            break
        active = active[moved > 0]
    c = np.sort(c, axis=1)
    counts = np.diff(line.cuts(np.arange(b), c, cuts), axis=1)
    labels = np.empty((b, n), np.int64)
    np.put_along_axis(labels, order, np.repeat(np.tile(np.arange(q), b), counts.ravel()).reshape(b, n), axis=1)
    return c, labels


class _Line:
    """Sorted points ``s [B, N]`` of many sets, searched all at once."""

    def __init__(self, s: np.ndarray):
        self.s, self.n = s, s.shape[1]
        # a trailing 0: the last set's end (= size) is a valid reduceat index
        self.padded = np.append(s.ravel(), 0.0)
        # pairs (set, value) ordered lexicographically as complex numbers set + i value: one exact
        # search for all sets (shifting the values by set would round them)
        self.keys = (np.arange(len(s))[:, None] + 1j * s).ravel()

    def cuts(self, sets: np.ndarray, c: np.ndarray, guess: np.ndarray | None) -> np.ndarray:
        """``[0, #(s <= m_1), .., #(s <= m_(q-1)), N]`` for sets ``sets`` and the midpoints ``m`` of
        their sorted centres ``c``; ``guess``: earlier cuts, kept where still right (most of them
        once Lloyd settles), searched for elsewhere."""
        n = self.n
        mids = 0.5 * (c[:, 1:] + c[:, :-1])
        if guess is None:
            pos, wrong = np.zeros(mids.shape, np.int64), np.ones(mids.shape, bool)
        else:
            pos = guess[:, 1:-1].copy()
            at = pos + n * sets[:, None]
            wrong = ((pos > 0) & (self.padded[at - 1] > mids)) | ((pos < n) & (self.padded[at] <= mids))
        rows, cols = np.nonzero(wrong)
        if len(rows):
            pos[rows, cols] = np.searchsorted(self.keys, sets[rows] + 1j * mids[rows, cols], side="right") \
                - n * sets[rows]
        edge = np.zeros((len(sets), 1), np.int64)
        return np.concatenate([edge, pos, edge + n], axis=1)


def kmeans(points: np.ndarray, q: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4
           ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of each of ``B`` point sets ``points [B, N, D]`` into ``q`` clusters.

    Minimises ``sum_i ||x_i - c_{l_i}||^2`` per set. Seeded and deterministic (same
    input, same output, on any number of cores). Initial centres: k-means++ with
    the uniforms of ``default_rng([seed, lo])`` for the chunk of sets starting at
    ``lo`` (1-D points: the ``q`` quantiles, no randomness). Lloyd iterations stop
    when, in one iteration, every set's centres move less than ``tol`` times its
    mean per-dimension variance (scikit-learn's criterion, for the whole chunk),
    or after ``max_iter``; a set whose centres stop moving is done early (more
    iterations would repeat it). Returns ``(centres [B, q, D], labels [B, N])``,
    the labels of the final centres (1-D: centres in ascending order).
    """
    x = np.asarray(points, np.float64)
    b, n, d = x.shape
    if not 1 <= q <= n:
        raise UserError(f"k-means: cannot make {q} clusters of {n} kernels")
    if d == 1:
        c, labels = _lloyd_line(x[..., 0], q, max_iter, tol)
        return c[..., None], labels
    step = max(1, _CHUNK_ELEMENTS // (n * q))
    centres, labels = np.empty((b, q, d)), np.empty((b, n), np.int64)
    for lo in range(0, b, step):
        xs = x[lo:lo + step]
        c = _lloyd(xs, _init(xs, q, np.random.default_rng([seed, lo])), max_iter, tol)
        centres[lo:lo + step], labels[lo:lo + step] = c, _nearest(xs, c)
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
        # drop the centroids no kernel uses, renumbering the labels in the centroids' order
        used = np.zeros((len(chans), qv), bool)
        used[np.arange(len(chans))[:, None], lab] = True
        renumber = np.cumsum(used, axis=1) - 1
        labels[chans] = np.take_along_axis(renumber, lab, axis=1)
        flat = cent[used].reshape(-1, *w.shape[2:]).astype(np.float32)
        for ch, book in zip(chans.tolist(), np.split(flat, np.cumsum(used.sum(axis=1))[:-1])):
            books[ch] = book
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
    # a pruned input channel goes with its producer when this conv is the only reader of its group
    # (the producer's code, when it has one, drops those filters); a shared stream is read through a select
    groups = channel_groups(graph)
    cut, selects = {}, []
    for name, code in codes.items():
        if len(code.channels) == code.in_channels:
            continue
        group = sole_reader_group(groups, name)
        if group is None:
            selects.append((name, code.channels))
            continue
        cut[group.id] = code.channels
        for producer in (m.node for m in group.producers):
            if producer in codes:
                codes[producer] = codes[producer].drop_filters(code.channels)
    graph, p = prune(graph, p, cut, groups)
    for name, channels in selects:
        graph, p = select_inputs(graph, p, name, channels)
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


def layer_names(graph, pattern: str, min_filters: int = 1) -> list[str]:
    """Ungrouped convs whose name fully matches the regular expression ``pattern``, in graph order;
    ``all``: every ungrouped conv but the stem (the convs that read the network input) with at least
    ``min_filters`` filters (the kNN entropy needs ``k + 1``), for any graph. (A grouped conv is left as
    it is: cutting its input channels would unbalance its groups.)"""
    if pattern == "all":
        shapes = graph.shapes()
        names = [n.name for n in graph.of_op("conv") if n.attrs["groups"] == 1 and n.inputs[0] != "input"
                 and shapes[n.name][0] >= min_filters]
        if not names:
            raise UserError(f"'{graph.arch}' has no ungrouped conv past its stem to compress")
        return names
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"kse.layers is not a regular expression ({e}): {pattern!r}") from None
    names = [n.name for n in graph.of_op("conv") if rx.fullmatch(n.name) and n.attrs["groups"] == 1]
    if not names:
        raise UserError(f"kse.layers {pattern!r} matches no convolution of '{graph.arch}'")
    return names
