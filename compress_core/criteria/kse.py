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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress_core.errors import UserError

#: the two definitions of the entropy's kernel sets (see the module docstring)
ENTROPY_SETS = ("paper", "reference")
#: channels per chunk of the pairwise-distance computation (bounds memory to ~64 MB)
_CHUNK_ELEMENTS = 8_000_000


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


def knn_distance_sums(points: np.ndarray, k: int = 5) -> np.ndarray:
    """``dm[c, i] = sum of the Euclidean distances from point i of set c to its k nearest others``.

    ``points [C, N, D]``. A point's duplicates count as neighbours at distance 0,
    as in scikit-learn's query that drops only the first hit. One-dimensional
    points (1x1 kernels) are sorted, so the k nearest lie among the k left and k
    right neighbours; otherwise squared distances come from Gram matrices (in
    chunks of channels) and the k chosen neighbours' distances are recomputed
    exactly from the differences.
    """
    pts = np.asarray(points, np.float64)
    c, n, d = pts.shape
    if n < k + 1:
        raise UserError(f"the kNN entropy with k={k} needs at least {k + 1} kernels per set, got {n}")
    if d == 1:
        s = np.sort(pts[..., 0], axis=1)
        padded = np.concatenate([np.full((c, k), np.inf), s, np.full((c, k), np.inf)], axis=1)
        cand = np.stack([np.abs(padded[:, k + off:k + off + n] - s) for off in range(-k, k + 1) if off], axis=2)
        return np.sort(cand, axis=2)[:, :, :k].sum(axis=2)
    out = np.empty((c, n))
    step = max(1, _CHUNK_ELEMENTS // (n * n))
    for lo in range(0, c, step):
        x = pts[lo:lo + step]
        # ranking only: ||x_j||^2 - 2 <x_i, x_j> orders j as ||x_i - x_j||^2 does (float32 is enough,
        # the chosen neighbours' distances are recomputed exactly below)
        x32 = x.astype(np.float32)
        d2 = np.matmul(x32, x32.transpose(0, 2, 1))
        d2 *= -2.0
        d2 += np.einsum("cnd,cnd->cn", x32, x32)[:, None, :]
        d2[:, np.arange(n), np.arange(n)] = np.inf
        nearest = np.argpartition(d2, k - 1, axis=2)[:, :, :k]
        diff = np.take_along_axis(x[:, None, :, :], nearest[..., None], axis=2) - x[:, :, None, :]
        out[lo:lo + step] = np.sqrt((diff * diff).sum(axis=3)).sum(axis=2)
    return out


def knn_entropy(points: np.ndarray, k: int = 5) -> np.ndarray:
    """``e_c = -sum_i p_i log2 p_i`` with ``p_i = dm_i / sum_j dm_j`` (``dm`` from :func:`knn_distance_sums`).

    Guards: a point with ``dm_i = 0`` contributes ``0 * log 0 = 0`` (its limit), and
    a set whose points all coincide (every ``dm_i = 0``) has entropy 0: one point.
    """
    dm = knn_distance_sums(points, k)
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
