"""KSE indicator (Li et al., CVPR 2019): kernel sparsity and entropy of every input channel.

For a conv weight ``W [N, C, kh, kw]`` (``N`` filters, ``C`` input channels,
``D = kh * kw`` taps) every input channel ``c`` gets

* a sparsity ``s_c`` (:func:`kernel_sparsity`),
* an entropy ``e_c`` of a set of ``N`` kernels (:func:`knn_entropy`),
* an indicator ``v_c`` in ``[0, 1]`` (:func:`combine`),
* a level ``g_c`` and a centroid count ``q_c`` (:func:`centroid_counts`):
  ``0`` = the input channel is pruned, ``N`` = its kernels are kept as they are,
  in between = its ``N`` kernels are clustered into ``q_c`` centroids.

Which ``N`` kernels make the entropy's set of channel ``c`` (:func:`entropy_sets`):
``"paper"`` takes the kernels of input channel ``c``, ``W[:, c]``; ``"reference"``
reproduces the released code, whose reshape (where a transpose was meant) makes
set ``c`` the rows ``{a * C + c}`` of ``W`` transposed to ``[C, N, D]`` and
flattened (for ``N == C`` the kernels of *filter* ``c``).

Guards for what the reference leaves to NaN or to an exception: a constant
sparsity or entropy in a layer (max == min) and repeated identical kernels
(distance 0) have defined results (see :func:`minmax` and :func:`knn_entropy`);
fewer than ``k + 1`` filters, NaN weights, ``G < 2`` and ``T < 0`` are errors.

Speed: the kNN sums use exact neighbours without per-channel loops (sorted
points for 1x1 kernels, float32 Gram matrices with a rounding guard and an exact
re-ranking of near ties otherwise), in chunks of channels spread over the cores
(:func:`map_chunks`; results do not depend on the number of cores).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from compress_core.errors import UserError
from compress_core.numeric import one_blas_thread

#: the two definitions of the entropy's kernel sets (see the module docstring)
ENTROPY_SETS = ("paper", "reference")
#: entries per chunk of the pairwise-distance computation (bounds memory to ~32 MB per thread)
_CHUNK_ELEMENTS = 8_000_000


def map_chunks(fn: Callable[[int, int], None], total: int, step: int) -> None:
    """``fn(lo, hi)`` for every chunk ``[lo, hi)`` of ``range(total)`` of ``step`` rows, on all cores.

    The chunks do not depend on the number of cores and each writes only its own
    rows, so results are the same on any machine; numpy releases the GIL in its
    array loops, so threads run them in parallel (BLAS itself single-threaded,
    its threads would only contend with these).
    """
    bounds = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(bounds), cores)
    if workers <= 1:
        for lo, hi in bounds:
            fn(lo, hi)
        return
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda b: fn(*b), bounds):
            pass


@dataclass(frozen=True)
class KSEResult:
    """Per input channel of one conv layer: raw criteria, indicator, level and centroid count."""

    sparsity: np.ndarray       # [C] s_c, float64
    entropy: np.ndarray        # [C] e_c in bits, float64
    indicator: np.ndarray      # [C] v_c in [0, 1]
    levels: np.ndarray         # [C] g_c in 0..G-1
    num_centroids: np.ndarray  # [C] q_c: 0 pruned, N kept, else the k-means cluster count


def check_weight(weight, name: str = "weight") -> np.ndarray:
    """``weight`` as a float64 ``[N, C, kh, kw]`` array; raises :class:`UserError` on rank or NaN."""
    w = np.asarray(weight)
    if w.ndim != 4 or 0 in w.shape:
        raise UserError(f"{name} must be a non-empty conv kernel [out, in, kh, kw], got shape {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise UserError(f"{name} has {int(np.sum(~np.isfinite(w)))} NaN or infinite values")
    return w


def kernel_sparsity(weight) -> np.ndarray:
    """``s_c = sum_n sum_t |W[n, c, t]|``: the L1 norm over the taps, summed over the filters."""
    w = check_weight(weight)
    return np.abs(w).sum(axis=(0, 2, 3))


def entropy_sets(weight, sets: str = "paper") -> np.ndarray:
    """The ``C`` sets of ``N`` kernels ``[C, N, D]`` whose entropy scores each input channel.

    ``"paper"``: set ``c`` is ``W[:, c]``. ``"reference"``: with ``X = W`` transposed
    to ``[C, N, D]``, set ``c`` is ``X.reshape(N, C, D)[:, c]`` (the released code's
    reshape, where a transpose was meant).
    """
    w = check_weight(weight)
    n, c = w.shape[:2]
    x = w.transpose(1, 0, 2, 3).reshape(c, n, -1)
    if sets == "paper":
        return x
    if sets == "reference":
        return x.reshape(n, c, -1).transpose(1, 0, 2)
    raise UserError(f"entropy_sets must be one of {ENTROPY_SETS}, got {sets!r}")


def knn_distance_sums(points: np.ndarray, k: int = 5, in_order: bool = True) -> np.ndarray:
    """``dm[c, i] = sum of the Euclidean distances from point i of set c to its k nearest others``.

    ``points [C, N, D]``. Exact neighbours: a point's duplicates count as
    neighbours at distance 0, as in scikit-learn's query that drops only the
    first hit; the distances are ``sqrt(sum_t (x_jt - x_it)^2)`` in float64,
    summed in ascending order. One-dimensional points (1x1 kernels): see
    :func:`_line_distance_sums` (``in_order=False``: each set's sums in the order of
    its sorted points, which saves an argsort); otherwise :func:`_gram_distance_sums`.
    """
    pts = np.asarray(points, np.float64)
    _, n, d = pts.shape
    if n < k + 1:
        raise UserError(f"the kNN entropy with k={k} needs at least {k + 1} kernels per set, got {n}")
    if d == 1:
        return _line_distance_sums(pts[..., 0], k, in_order)
    return _gram_distance_sums(pts, k)


def _line_distance_sums(x: np.ndarray, k: int, in_order: bool = True) -> np.ndarray:
    """Points on a line ``x [C, N]``: the k nearest of a point form, in sorted order, a window of
    ``k + 1`` points around it, so ``dm_i = min_a (L_1 + .. + L_a + R_1 + .. + R_(k-a))`` with
    ``L_t`` / ``R_t`` the distances to the t-th point on its left / right (inf past the ends).
    Every window sums k distinct distances, the nearest k give the smallest sum.
    ``in_order=False``: the sums in the order of the sorted points (enough for an entropy)."""
    c, n = x.shape
    out = np.empty((c, n))

    def chunk(lo: int, hi: int) -> None:
        if in_order:
            order = np.argsort(x[lo:hi], axis=1)
            s = np.take_along_axis(x[lo:hi], order, axis=1)
        else:
            s = np.sort(x[lo:hi], axis=1)
        padded = np.concatenate([np.full((hi - lo, k), -np.inf), s, np.full((hi - lo, k), np.inf)], axis=1)
        left, right = [np.zeros(s.shape)], [np.zeros(s.shape)]
        for t in range(1, k + 1):
            left.append(left[-1] + (s - padded[:, k - t:k - t + n]))
            right.append(right[-1] + (padded[:, k + t:k + t + n] - s))
        sums = left[0] + right[k]
        for a in range(1, k + 1):
            np.minimum(sums, left[a] + right[k - a], out=sums)
        if in_order:
            np.put_along_axis(out[lo:hi], order, sums, axis=1)
        else:
            out[lo:hi] = sums

    map_chunks(chunk, c, max(1, _CHUNK_ELEMENTS // 16 // n))
    return out


def _gram_distance_sums(x: np.ndarray, k: int) -> np.ndarray:
    """Points ``x [C, N, D]``, D > 1. Candidates from ``r_ij = [x_i, 1, |x_i|^2] . [-2 x_j, |x_j|^2, 1]``
    ``= |x_i - x_j|^2`` up to a rounding error below ``B_i = (4D + 8) 2^-24 (|x_i|^2 + max_j |x_j|^2)``
    (one float32 product per set, in chunks of sets; the float32 rounding of x, of the squared
    norms and of the (D + 2)-term products add up to at most (3D + 8) 2^-24 (|x_i|^2 + |x_j|^2)). Where the (k+1)-th smallest ``r`` of a row
    exceeds the k-th by more than ``2 B_i``, its k smallest are the exact nearest; the other rows
    (near ties, duplicates) are ranked again by exact float64 distances."""
    c, n, d = x.shape
    x32 = x.astype(np.float32)
    sq = np.einsum("cnd,cnd->cn", x32, x32)[..., None]
    one = np.ones((c, n, 1), np.float32)
    left = np.concatenate([x32, one, sq], axis=2)
    # contiguous operands: a transposed view makes matmul several times slower
    right = np.ascontiguousarray(np.concatenate([-2.0 * x32, sq, one], axis=2).transpose(0, 2, 1))
    bound = (4 * d + 8) * 2.0 ** -24 * (sq[..., 0] + sq.max(axis=1)).astype(np.float64)
    dist = np.empty((c, n, k))
    diag = np.arange(n)

    def chunk(lo: int, hi: int) -> None:
        xs = x[lo:hi]
        b = len(xs)
        r = np.matmul(left[lo:hi], right[lo:hi])
        r[:, diag, diag] = np.inf
        idx, sure = _smallest(r.reshape(b * n, n), k, bound[lo:hi].ravel())
        out = dist[lo:hi].reshape(b * n, k)
        rows = np.flatnonzero(sure)
        diff = xs.reshape(-1, d)[idx + (n * (rows // n))[:, None]] - xs.reshape(-1, d)[rows][:, None]
        out[rows] = np.sqrt(np.einsum("mkd,mkd->mk", diff, diff))
        rows = np.flatnonzero(~sure)
        for r0 in range(0, len(rows), max(1, _CHUNK_ELEMENTS // (n * d))):
            part = rows[r0:r0 + _CHUNK_ELEMENTS // (n * d)]
            diff = xs[part // n] - xs.reshape(-1, d)[part][:, None]
            exact = np.sqrt(np.einsum("mnd,mnd->mn", diff, diff))
            exact[np.arange(len(part)), part % n] = np.inf
            out[part] = np.partition(exact, k - 1, axis=1)[:, :k]

    map_chunks(chunk, c, max(1, _CHUNK_ELEMENTS // 2 // (n * n)))
    return np.sort(dist, axis=2).sum(axis=2)


def _smallest(r: np.ndarray, k: int, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the rows of ``r [R, M]`` whose ``k`` smallest entries are certain (``sure [R]``: the
    (k+1)-th smallest exceeds the k-th by more than ``2 bound``, no ties), their column indices
    ``[sure.sum(), k]`` (in no particular order). Long rows are split into ``L`` interleaved lanes
    (column ``j`` in lane ``j mod L``): the k+1 smallest entries lie in the k+1 lanes with the
    smallest minima (a lane holding one of them but not among those would leave k+1 other lanes
    whose minima are no larger), so only those lanes' entries are ranked. Selection by value
    (``np.partition``, much faster than ``argpartition``) and comparison: a row whose threshold is
    tied is not sure."""
    m = k + 1
    rows, cols = r.shape
    lanes = 64
    if cols > 4 * lanes:
        groups = -(-cols // lanes)
        if groups * lanes != cols:
            r = np.concatenate([r, np.full((rows, groups * lanes - cols), np.inf, r.dtype)], axis=1)
        lane_min = r.reshape(rows, groups, lanes).min(axis=1)
        chosen = lane_min <= np.partition(lane_min, m - 1, axis=1)[:, m - 1:m]
        ok = chosen.sum(axis=1) == m
        best = np.nonzero(chosen[ok])[1].reshape(-1, m)
        cand = (best[:, :, None] + lanes * np.arange(groups)).reshape(len(best), m * groups)
        vals = r.reshape(-1)[cand + r.shape[1] * np.flatnonzero(ok)[:, None]]
        cols_of = cand
    else:
        ok = np.ones(rows, bool)
        vals, cols_of = r, None
    top = np.sort(np.partition(vals, m - 1, axis=1)[:, :m], axis=1).astype(np.float64)
    sure_sub = top[:, k] - top[:, k - 1] > 2 * bound[ok]
    pick = np.nonzero(vals[sure_sub] <= top[sure_sub, k - 1:k])[1].reshape(-1, k)
    if cols_of is not None:
        pick = np.take_along_axis(cols_of[sure_sub], pick, axis=1)
    sure = np.zeros(rows, bool)
    sure[np.flatnonzero(ok)[sure_sub]] = True
    return pick, sure


def knn_entropy(points: np.ndarray, k: int = 5) -> np.ndarray:
    """``e_c = -sum_i p_i log2 p_i`` with ``p_i = dm_i / sum_j dm_j`` (``dm`` from :func:`knn_distance_sums`).

    Guards: a point with ``dm_i = 0`` contributes ``0 * log 0 = 0`` (its limit), and
    a set whose points all coincide (every ``dm_i = 0``) has entropy 0: one point.
    """
    dm = knn_distance_sums(points, k, in_order=False)  # the entropy does not depend on the order
    total = dm.sum(axis=1, keepdims=True)
    p = np.divide(dm, total, out=np.zeros_like(dm), where=total > 0)
    logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=1)


def minmax(x: np.ndarray, fill: float) -> np.ndarray:
    """``(x - min x) / (max x - min x)``; a constant ``x`` (no ranking) maps to ``fill`` everywhere."""
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    if not span > 0:
        return np.full_like(x, fill)
    return (x - x.min()) / span


def combine(sparsity: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """``v = minmax(sqrt(s~ / (1 + e~)))`` with ``s~ = minmax(s)``, ``e~ = minmax(e)`` over the layer.

    Constant vectors (see :func:`minmax`): a constant sparsity or indicator
    maps to 1 (every channel as important as the best: kept), a constant entropy
    to 0 (no penalty).
    """
    u = np.sqrt(minmax(sparsity, 1.0) / (1.0 + minmax(entropy, 0.0)))
    return minmax(u, 1.0)


def centroid_counts(indicator: np.ndarray, num_filters: int, G: int = 4, T: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Levels ``g = min(floor(v G), G - 1)`` and centroid counts ``q(g)``.

    ``q = 0`` for ``g = 0`` (pruned), ``q = N`` for ``g = G - 1`` (kept), else
    ``q = ceil(N / 2^(G - 1 - g + T))`` (at least 1; ``T`` only shrinks the
    intermediate levels, it never prunes). Exact integer arithmetic.
    """
    G, T = check_levels(G, T)
    v = np.asarray(indicator, np.float64)
    g = np.minimum(np.floor(v * G).astype(np.int64), G - 1)
    q = np.array([0 if lv == 0 else num_filters if lv == G - 1 else -(-num_filters // 2 ** (G - 1 - lv + T))
                  for lv in g.tolist()], np.int64)
    return g, q


def check_levels(G, T) -> tuple[int, int]:
    """``G >= 2`` and ``T >= 0`` as integers, else :class:`UserError` naming the value."""
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or G < 2:
        raise UserError(f"KSE G (number of levels) must be an integer >= 2, got {G!r}")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise UserError(f"KSE T (centroid shrink exponent) must be an integer >= 0, got {T!r}")
    return int(G), int(T)


def kse_indicator(weight, G: int = 4, T: int = 0, k: int = 5, entropy_sets: str = "paper") -> KSEResult:
    """Sparsity, kNN entropy, indicator, levels and centroid counts of every input channel of ``weight``.

    ``weight [N, C, kh, kw]``; see the module docstring for each step.
    """
    G, T = check_levels(G, T)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"KSE k (nearest neighbours) must be an integer >= 1, got {k!r}")
    w = check_weight(weight)
    if w.shape[0] < k + 1:
        raise UserError(f"weight has {w.shape[0]} filters; the kNN entropy with k={k} needs at least {k + 1}")
    s = kernel_sparsity(w)
    e = knn_entropy(_sets(w, entropy_sets), k)
    v = combine(s, e)
    g, q = centroid_counts(v, w.shape[0], G, T)
    return KSEResult(s, e, v, g, q)


_sets = entropy_sets  # the function, under a name the keyword argument does not shadow
