"""DCFF (Lin et al., "Training Compact CNNs by Dynamic-coded Filter Fusion", TPAMI 2023).

For one conv layer with ``n`` filters, ``F [n, d]`` is its weight ``[n, c, kh, kw]``
flattened per filter and ``t > 0`` the temperature (it multiplies the distance:
``t -> inf`` makes every distribution one-hot on its own filter):

* distances ``D_ji = ||F_j - F_i||_2`` (:func:`distances`, float64, exact 0 diagonal),
* similarity distributions ``p_j(i) = exp(-t D_ji) / sum_g exp(-t D_jg)``
  (:func:`log_similarity` returns ``log p``),
* importance ``s_j = (1/n) sum_k KL(p_j || p_k)`` (:func:`dcff_importance`), the
  highest ``m`` kept (:func:`select`, :func:`kept_count`),
* fused filters ``W'_j = sum_i p_j(i) F_i`` for kept ``j`` (:func:`dcff_fuse`),
* the temperature schedule of the reference (:func:`temperature`).

Departures from the released code (lmbxmu/DCFF) and MMRazor's rewrite: the KL divergence is
computed from log-probabilities with no ``+1e-7``, so it is finite at every
temperature (the reference's scores are NaN from epoch 1 on, and MMRazor's are all
equal); memory is ``O(n^2)`` instead of the reference's ``O(n^3)``; distances are
float64 (MMRazor's float32 ``torch.cdist`` has ~1e-3 errors, diagonal included);
and the mean over ``k`` runs over the right axis (MMRazor's rewrite averages over
the other one, :func:`dcff_importance_reference` keeps the reference formula).
"""

from __future__ import annotations

import math

import numpy as np

from compress_core.criteria.discriminant import _finite_number

#: pairs whose squared distance is below this fraction of ``||F_i||^2 + ||F_j||^2``
#: lose digits in the Gram formula and are recomputed from the differences
_CANCELLATION = 1e-2
#: exp below this argument is flushed to 0: its value is subnormal (< 3.3e-308, which no sum
#: holding the diagonal's 1 can feel) or 0, and libm computes those up to 80x slower
_EXP_FLUSH = -708.0
#: rows of pair differences per chunk when recomputing (bounds memory to ~32 MB)
_CHUNK_ELEMENTS = 1 << 22


def _filters(weight, name: str = "weight") -> np.ndarray:
    """``weight [n, ...]`` as float64 ``F [n, d]``; ValueError naming ``name`` on bad arrays."""
    w = np.asarray(weight)
    if w.ndim not in (2, 4) or 0 in w.shape:
        raise ValueError(f"{name} must be a non-empty conv kernel [out, in, kh, kw] or matrix [out, d], "
                         f"got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise ValueError(f"{name} must be real numbers, got dtype {w.dtype}")
    f = w.reshape(w.shape[0], -1).astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(f)))} NaN or infinite values")
    return f


def _temperature(t) -> float:
    return _finite_number(t, "temperature t", positive=True)


def temperature(step, total, t_start: float = 1.0, t_end: float = 1e4, k: float = 1.0) -> float:
    """``t(e) = t_s + (t_e - t_s) tanh(k e / 2) / tanh(k E / 2)`` for ``e = step``, ``E = total``.

    The closed form of the reference's ``A / (1 + exp(-k e)) + t_s - A / 2`` with
    ``A = 2 (t_e - t_s)(1 + exp(-k E)) / (1 - exp(-k E))``: ``t(0) = t_s`` and
    ``t(E) = t_e`` exactly, monotone in between. With ``k = 1`` and ``e`` in epochs
    it saturates within ~5 epochs whatever ``E`` is; a smaller ``k`` (or ``e``
    counted in finer units) spreads it out.
    """
    total = _finite_number(total, "total", positive=True)
    step = _finite_number(step, "step")
    t_start = _finite_number(t_start, "t_start", positive=True)
    t_end = _finite_number(t_end, "t_end", positive=True)
    k = _finite_number(k, "k", positive=True)
    if step > total:
        raise ValueError(f"step must be in [0, total={total:g}], got {step:g}")
    if step == total:
        return t_end  # t_s + (t_e - t_s) can differ from t_e in the last bit
    return t_start + (t_end - t_start) * math.tanh(k * step / 2) / math.tanh(k * total / 2)


def _pairwise(f: np.ndarray) -> np.ndarray:
    """Exact Euclidean distances of the rows of float64 ``f`` (see :func:`distances`)."""
    # distances do not change under a common shift; centring shrinks the norms the Gram
    # formula cancels against (filters of a layer often share a large mean component)
    c = f - f.mean(axis=0)
    sq = np.einsum("nd,nd->n", c, c)
    d2 = c @ c.T  # a @ a.T is one symmetric BLAS call, and so d2 stays exactly symmetric
    d2 *= -2.0
    d2 += np.add.outer(sq, sq)
    np.maximum(d2, 0.0, out=d2)
    # rows that may hold a cancelling pair (by the row minimum, one cheap pass), then the pairs
    np.fill_diagonal(d2, np.inf)
    # (strict: two filters equal to the mean filter have sq = 0 and an exact d2 = 0 already)
    suspect = np.flatnonzero(d2.min(axis=1) < _CANCELLATION * (sq + sq.max()))
    rows, cols = np.nonzero(d2[suspect] < _CANCELLATION * (sq[suspect, None] + sq.max()))
    rows = suspect[rows]
    pick = (rows < cols) & (d2[rows, cols] < _CANCELLATION * (sq[rows] + sq[cols]))
    rows, cols = rows[pick], cols[pick]
    step = max(1, _CHUNK_ELEMENTS // f.shape[1])
    for lo in range(0, len(rows), step):
        i, j = rows[lo:lo + step], cols[lo:lo + step]
        diff = f[i] - f[j]
        d2[i, j] = d2[j, i] = np.einsum("pd,pd->p", diff, diff)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


def distances(weight) -> np.ndarray:
    """``D [n, n]``, ``D_ji = ||F_j - F_i||_2`` in float64, symmetric with an exact 0 diagonal.

    Computed as ``sqrt(max(0, |c_j|^2 + |c_i|^2 - 2 <c_j, c_i>))`` on the centred
    filters ``c = F - mean(F)``; pairs where that difference cancels more than two
    digits are recomputed from ``F_j - F_i``, so every entry is accurate to ~1e-13
    relative (the Gram formula alone loses ``|F|^2 / D^2`` digits on close filters).
    """
    return _pairwise(_filters(weight))


def _exp(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` in place for ``x <= 0``, flushing ``x < -708`` to 0 (see ``_EXP_FLUSH``)."""
    flush = x < _EXP_FLUSH
    if flush.any():
        np.exp(x, out=x, where=~flush)
        x[flush] = 0.0
    else:
        np.exp(x, out=x)
    return x


def _log_p(d: np.ndarray, t: float, with_p: bool = False):
    """``log p`` from distances ``d`` (overwritten): ``-t D_ji - log sum_g exp(-t D_jg)``; and ``p``."""
    d *= -t
    # the row maximum is the diagonal 0, so exp never overflows; the normaliser is
    # 1 + sum of the off-diagonal terms, taken through log1p to keep the small ones
    e = _exp(d.copy())
    np.fill_diagonal(e, 0.0)
    log_z = np.log1p(e.sum(axis=1))
    d -= log_z[:, None]
    if not with_p:
        return d
    np.fill_diagonal(e, 1.0)
    e *= np.exp(-log_z)[:, None]  # p = exp(-t D) / Z without a second exp over [n, n]
    return d, e


def log_similarity(weight, t) -> np.ndarray:
    """``L [n, n]``, ``L_ji = log p_j(i) = -t D_ji - log sum_g exp(-t D_jg)`` (row ``j`` = ``log p_j``).

    Finite for every ``t > 0`` (at large ``t``, ``p_j`` is one-hot but ``log p_j`` is
    ``-t D_ji`` off the diagonal, not ``-inf``). ValueError for ``t <= 0`` or non-finite.
    """
    t = _temperature(t)
    return _log_p(distances(weight), t)


def dcff_importance(weight, t) -> np.ndarray:
    """``s_j = (1/n) sum_k KL(p_j || p_k) = sum_i p_j(i) (log p_j(i) - (1/n) sum_k log p_k(i))``.

    The mean over ``k`` is over the rows of ``L = log p`` (column means). This is
    the released code's score (which averages over ``i`` and sums over ``k``) with
    its ``+1e-7`` dropped, i.e. the paper's ``sum_k KL`` divided by ``n``; MMRazor's
    rewrite takes row means instead. With ``log p_j(i) = -t D_ji - log Z_j`` the sum
    is taken in log space without forming ``L``:

        ``s_j = -t sum_i p_j(i) (D_ji - Dbar_i) - log Z_j + mean_k log Z_k``,
        ``Dbar_i = (1/n) sum_k D_ki``, ``Z_j = sum_g exp(-t D_jg)``,

    finite for every ``t > 0`` (no ``0 log 0``); memory ``O(n^2)``. As ``t -> inf``,
    ``s_j -> t Dbar_j``: the ranking by the sum of distances to the other filters.
    """
    t = _temperature(t)
    d = distances(weight)
    dbar = d.mean(axis=0)
    e = _exp(np.multiply(d, -t))     # exp(-t D), diagonal 1: Z >= 1
    log_z = np.log(e.sum(axis=1))
    d -= dbar                        # differences before the weighted sum: no cancellation
    return -t * np.einsum("ji,ji->j", e, d) / np.exp(log_z) - log_z + log_z.mean()


def dcff_importance_reference(weight, t, eps: float = 1e-7) -> np.ndarray:
    """The released code's formula, ``O(n^3)`` memory: ``sum_k mean_i p_j(i) log(p_j(i) / (p_k(i) + eps))``.

    Written as the reference writes it (the ``[n, n, n]`` tensor, averaged over
    ``i``, summed over ``k``), with float64 distances; at ``eps = 0`` it equals
    :func:`dcff_importance`. For checks and benchmarks on small layers only: NaN
    (``0 log 0``) once ``p`` underflows.
    """
    t = _temperature(t)
    z = -t * distances(weight)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = p[:, None, :] * np.log(p[:, None, :] / (p[None, :, :] + eps))
    return kl.mean(axis=2).sum(axis=1)


def select(scores, m) -> np.ndarray:
    """Indices of the ``m`` highest ``scores``, sorted ascending; ties go to the lower index."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty vector, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores has {int(np.sum(~np.isfinite(s)))} NaN or infinite values")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= s.size:
        raise ValueError(f"m must be an integer in [1, {s.size}], got {m!r}")
    # stable sort of -s: equal scores keep index order, so both backends pick the same set
    return np.sort(np.argsort(-s, kind="stable")[:int(m)])


def kept_count(n, rate) -> int:
    """``max(1, floor(n (1 - rate)))`` filters kept when pruning ``rate`` of ``n``.

    The product gets a 1e-9 slack so that e.g. ``n (1 - rate) = 57`` in exact
    arithmetic is not floored to 56 by float round-off.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rate = _finite_number(rate, "rate")
    if rate >= 1:
        raise ValueError(f"rate must be in [0, 1), got {rate:g}")
    return max(1, math.floor(int(n) * (1.0 - rate) + 1e-9))


def _keep(keep, n: int) -> np.ndarray:
    k = np.asarray(keep)
    if k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer):
        raise ValueError(f"keep must be a non-empty vector of integer indices, got {k!r}")
    if k.min() < 0 or k.max() >= n or len(np.unique(k)) != k.size:
        raise ValueError(f"keep must hold distinct indices in [0, {n}), got {k.tolist()}")
    return k


def _fusion(f: np.ndarray, keep, t) -> np.ndarray:
    t = _temperature(t)
    keep = _keep(keep, len(f))
    return _log_p(_pairwise(f), t, with_p=True)[1][keep]


def fusion_matrix(weight, keep, t) -> np.ndarray:
    """``P [m, n]`` float64, row ``r`` = ``p_{keep[r]}``: the fusion weights of the kept filters."""
    return _fusion(_filters(weight), keep, t)


def dcff_fuse(weight, keep, t) -> np.ndarray:
    """``W' [m, c, kh, kw]``, ``W'_r = sum_i p_{keep[r]}(i) F_i`` (float64): the fused filters.

    Output channel ``r`` is ``keep[r]``'s fusion, so the BatchNorm channel that
    follows pairs with ``keep`` by position. A conv bias fuses the same way:
    ``fusion_matrix(weight, keep, t) @ bias``.
    """
    w = np.asarray(weight)
    f = _filters(w)
    p = _fusion(f, keep, t)
    return (p @ f).reshape((len(p),) + w.shape[1:])
