"""Low-rank factorisations of conv and dense weights: EVBMF ranks, Tucker-2, CP (numpy).

* :func:`evbmf` is the empirical variational Bayesian matrix factorisation of
  Nakajima et al. (JMLR 2013), the rank rule of Kim et al. (2016), computed so
  that the answer does not depend on the orientation of the matrix (it is
  transposed to ``L <= M``) nor on its scale (it is divided by its RMS value
  before the noise variance is fitted, so a weight and ``1e-3`` times it get the
  same rank). The noise variance is the global minimum of the EVB free energy, which
  can have a local minimum per signal level (a scan, then a polish). It needs singular
  values only: the eigenvalues of the ``L x L`` Gram matrix, without singular vectors
  (:func:`evbmf_spectrum` takes them directly).
* :func:`tucker2` factorises the output and input channel modes of an OIHW
  kernel (HOOI through tensorly's numpy backend); :func:`cp` gives the rank-R
  CP factors of Lebedev et al. (2015) by ALS from a seeded initialisation.

Weights are OIHW ``[out, in, kh, kw]`` (of one group) or dense ``[out, in]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import brentq, minimize_scalar

from compress_core.errors import UserError
from compress_core.numeric import checked_array, one_blas_thread


@dataclass(frozen=True)
class EVBMFResult:
    """``rank``: singular values kept; ``sigma2``: fitted noise variance (in the units of the input);
    ``threshold``: singular values above it are kept; ``shrunk``: the kept values after VB shrinkage."""

    rank: int
    sigma2: float
    threshold: float
    shrunk: np.ndarray


def _matrix(matrix, name: str) -> np.ndarray:
    return checked_array(matrix, 2, "a non-empty 2-D array", name)


def tau_bar(alpha: float) -> float:
    """The root ``tau > 0`` of ``log(1 + tau) + alpha * log(1 + tau / alpha) = tau`` (0 < alpha <= 1).

    The reference approximates it by ``2.5129 * sqrt(alpha)`` (exact at alpha = 1,
    11 % low at alpha = 0.01); here it is solved to machine precision.
    """
    def f(t):
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    return float(brentq(f, 1e-3 * math.sqrt(alpha), 10.0, xtol=1e-14, rtol=1e-14))


def _evb_free_energy(sigma2, gamma2: np.ndarray, L: int, M: int, xbar: float):
    """EVB objective in ``sigma2`` (Nakajima et al. 2013, eq. for the empirical noise variance).

    ``Omega = sum_h phi(x_h)`` with ``x_h = gamma_h^2 / (M sigma2)``,
    ``phi(x) = x - log x`` for ``x <= xbar`` and
    ``phi(x) = x - log x + log(tau + 1) + alpha log(tau / alpha + 1) - tau`` above, where
    ``tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2``. All ``L``
    singular values are used, so the residual term of the reference is 0; a zero
    ``gamma_h`` counts as ``x_h = 1e-300`` (a constant). ``gamma2`` descending; ``sigma2``
    a scalar (a float is returned) or an array (one value per entry).

    Above ``xbar``, ``x - tau = 1 + alpha + alpha / tau`` (``tau`` solves
    ``tau^2 - (x - 1 - alpha) tau + alpha = 0``) replaces the difference of two large
    numbers. Below it ``sum (x_h - log x_h) = sum gamma_h^2 / (M sigma2) - sum log gamma_h^2
    + n log(M sigma2)`` over the trailing ``n`` values, from suffix sums: a scan of
    thousands of ``sigma2`` costs one array of ``sigma2`` by the values above ``xbar``.
    """
    alpha = L / M
    s = np.asarray(sigma2, np.float64)
    ms = M * s
    pos = gamma2[gamma2 > 0]
    const = (len(gamma2) - len(pos)) * (1e-300 - math.log(1e-300))
    # suffix sums of the values and their logs: [h:] for h = 0 .. len(pos)
    tail = np.concatenate((np.cumsum(pos[::-1])[::-1], [0.0]))
    tail_log = np.concatenate((np.cumsum(np.log(pos[::-1]))[::-1], [0.0]))
    n_big = np.searchsorted(-pos, -xbar * ms, side="left")  # number of gamma_h^2 > M sigma2 xbar
    out = tail[n_big] / ms - tail_log[n_big] + (len(pos) - n_big) * np.log(ms) + const
    big = pos[:int(np.max(n_big, initial=0))]
    if len(big):
        x = big / ms[..., None]
        b = np.maximum(x, xbar) - 1 - alpha  # below xbar tau / alpha could reach -1: no log of <= 0
        tau = 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))
        phi = 1 + alpha + alpha / tau - np.log(x) + np.log1p(tau) + alpha * np.log1p(tau / alpha)
        # the comparison that counted n_big, so that no value is in both sums or in neither
        out = out + np.where(big > (xbar * ms)[..., None], phi, 0.0).sum(axis=-1)
    return float(out) if s.ndim == 0 else out


def _gram_eigenvalues(y: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Squared singular values of ``y`` (descending) and its shape ``(L, M)`` with ``L <= M``.

    ``gamma_h^2`` are the eigenvalues of the ``L x L`` Gram matrix (``Y Y^T`` or
    ``Y^T Y``): ``L^2 M + 4/3 L^3`` flops instead of an SVD's ``4 L^2 M``, and no
    singular vectors, which only the rank's caller would never use.
    """
    L, M = sorted(y.shape)
    gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
    gamma2 = eigh(gram, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)[::-1]
    return np.clip(gamma2, 0.0, None), L, M


_SCAN_STEP = 0.01  # log-spacing of the scan of sigma2: 1 % steps
_SCAN_MIN = 64  # grid points of a narrow interval


def _global_minimum(g: np.ndarray, L: int, M: int, xbar: float, lower: float, upper: float) -> float:
    """The ``sigma2`` in ``[lower, upper]`` of least :func:`_evb_free_energy`: scan, then polish.

    With several signal levels the objective can have several local minima (a single
    bounded Brent search stops in whichever it meets first). It is smooth between the breakpoints
    ``gamma_h^2 / (M xbar)``, where an ``x_h`` crosses ``xbar``: the scan evaluates it there
    and on a grid of ``sigma2`` log-spaced by 1 %, then a bounded Brent search between the
    neighbours of the best grid point, and of every other local minimum of the scan whose
    parabola through its neighbours dips to the best scanned value, polishes it. The best
    point found wins, so the answer is never worse than the scan.

    The scan starts no lower than ``eps gamma_1^2 / xbar``, where the threshold ``M sigma2 xbar``
    is ``M eps gamma_1^2``, the rounding of Gram eigenvalues (sums of ``M`` products): for a
    matrix of exact low rank ``lower`` is that small or 0, and the minimum below would keep
    rounding values.
    """
    lower = max(lower, np.finfo(np.float64).eps * float(g[0]) / xbar)
    if lower >= upper:
        return upper
    n = max(_SCAN_MIN, math.ceil(math.log(upper / lower) / _SCAN_STEP) + 1)
    breaks = g / (M * xbar)
    t = np.union1d(np.geomspace(lower, upper, n), breaks[(breaks > lower) & (breaks < upper)])
    f = _evb_free_energy(t, g, L, M, xbar)
    best = int(np.argmin(f))
    sigma2, f_best = float(t[best]), float(f[best])
    if len(t) < 3:  # an interval a few ulps wide (lower = upper in exact arithmetic)
        return sigma2
    padded = np.concatenate(([np.inf], f, [np.inf]))
    minima = np.flatnonzero((f < padded[:-2]) & (f <= padded[2:]))  # a plateau once, by its first point
    u = np.log(t)
    for j in minima:
        p = min(max(j - 1, 0), len(t) - 3)  # three points, also at an end of the interval
        if j != best and _parabola_min(u[p:p + 3], f[p:p + 3]) > f[best]:
            continue
        res = minimize_scalar(_evb_free_energy, bounds=(t[max(j - 1, 0)], t[min(j + 1, len(t) - 1)]),
                              args=(g, L, M, xbar), method="bounded", options={"xatol": 1e-10 * upper})
        if res.fun < f_best:
            sigma2, f_best = float(res.x), float(res.fun)
    return sigma2


def _parabola_min(u: np.ndarray, f: np.ndarray) -> float:
    """Least value of the parabola ``f0 + d1 (u - u0) + c (u - u0)(u - u1)`` through three points
    ``(u_i, f_i)``, at ``u = (u0 + u1) / 2 - d1 / (2 c)``; ``-inf`` if it opens downward, ``min f`` if a line."""
    d1 = (f[1] - f[0]) / (u[1] - u[0])
    d2 = (f[2] - f[1]) / (u[2] - u[1])
    c = (d2 - d1) / (u[2] - u[0])  # f = f0 + d1 (u - u0) + c (u - u0)(u - u1)
    if c <= 0:
        return float(f.min()) if c == 0 else -math.inf
    v = 0.5 * (u[0] + u[1]) - d1 / (2 * c)
    return float(f[0] + d1 * (v - u[0]) + c * (v - u[0]) * (v - u[1]))


def evbmf_spectrum(gamma2, L: int, M: int) -> EVBMFResult:
    """EVBMF from the squared singular values ``gamma2`` (descending) of an ``L x M`` matrix, ``L <= M``.

    ``alpha = L / M``; the noise variance ``sigma2`` is the global minimum of :func:`_evb_free_energy`
    over ``[max(gamma_{k+1}^2 / (M xbar), mean_{h>k} gamma_h^2 / M), sum gamma^2 / (L M)]``
    (``k = ceil(L / (1 + alpha)) - 1``, ``xbar = (1 + tau)(1 + alpha / tau)``,
    ``tau`` = :func:`tau_bar`); values ``gamma_h > sqrt(M sigma2 xbar)`` are kept and shrink to
    ``gamma/2 (1 - (L+M) sigma2/gamma^2 + sqrt((1 - (L+M) sigma2/gamma^2)^2 - 4 L M sigma2^2/gamma^4))``.
    The objective can have a local minimum per signal level: it is scanned on a 1 %
    log-spaced grid of ``sigma2`` plus the breakpoints ``gamma_h^2 / (M xbar)``, and a
    bounded Brent search polishes the best bracket (:func:`_global_minimum`; never worse
    than the best scanned point). The spectrum is divided by its mean ``sum gamma^2 / (L M)``
    (the matrix by its RMS value) before the fit and ``sigma2`` scaled back, so the
    optimiser's tolerance is relative and the rank does not depend on the scale.
    """
    g = np.asarray(gamma2, np.float64)
    if g.ndim != 1 or len(g) != L or not 0 < L <= M:
        raise ValueError(f"gamma2 must hold the L = {L} squared singular values of an L x M matrix "
                         f"with L <= M = {M}, got shape {g.shape}")
    scale2 = float(g.sum()) / (L * M)
    if scale2 == 0.0:
        return EVBMFResult(0, 0.0, 0.0, np.zeros(0))
    g = g / scale2
    alpha = L / M
    tau = tau_bar(alpha)
    xbar = (1 + tau) * (1 + alpha / tau)
    k = min(math.ceil(L / (1 + alpha)) - 1, L - 1)
    upper = 1.0  # sum gamma^2 / (L M) after the normalisation
    lower = max(g[k] / (M * xbar), g[k:].mean() / M)
    sigma2 = _global_minimum(g, L, M, xbar, lower, upper) if lower < upper else upper
    threshold2 = M * sigma2 * xbar
    rank = int(np.sum(g > threshold2))
    g2 = g[:rank]
    c = 1 - (L + M) * sigma2 / g2
    shrunk = 0.5 * np.sqrt(g2) * (c + np.sqrt(np.maximum(c * c - 4 * L * M * sigma2 ** 2 / g2 ** 2, 0.0)))
    scale = math.sqrt(scale2)
    return EVBMFResult(rank, sigma2 * scale2, math.sqrt(threshold2) * scale, shrunk * scale)


def evbmf(matrix) -> EVBMFResult:
    """Empirical VBMF of ``matrix`` (:func:`evbmf_spectrum` of its singular values),
    independent of its orientation (``L <= M`` either way) and of its scale."""
    y = _matrix(matrix, "matrix")
    with one_blas_thread():
        return evbmf_spectrum(*_gram_eigenvalues(y))


def evbmf_rank(matrix) -> int:
    """Number of singular values EVBMF keeps (:func:`evbmf`)."""
    return evbmf(matrix).rank


def _kernel(weight, name: str = "weight") -> np.ndarray:
    return checked_array(weight, 4, "a conv kernel [out, in, kh, kw]", name)


def unfold(weight, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding: ``[dim_mode, prod(other dims)]`` (0: output channels, 1: input channels)."""
    w = np.asarray(weight)
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def tucker2_ranks(weight) -> tuple[int, int]:
    """``(rank_out, rank_in)``: :func:`evbmf_rank` of the mode-0 and mode-1 unfoldings of an OIHW kernel.

    A ``1 x 1`` kernel's two unfoldings are transposes of each other: one EVBMF gives both.
    """
    w = _kernel(weight)
    with one_blas_thread():
        r_out = evbmf_spectrum(*_gram_eigenvalues(unfold(w, 0))).rank
        if w.shape[2] * w.shape[3] == 1:
            return r_out, r_out
        return r_out, evbmf_spectrum(*_gram_eigenvalues(unfold(w, 1))).rank


def weaken(rank: int, dim: int, weakening: float) -> int:
    """``rank + ceil(weakening * (dim - rank))``: 0 keeps the VBMF rank, 1 gives the full ``dim``.

    VBMF finds no structure in weights still dominated by their random
    initialisation (short training: every rank is 0); weakening moves the rank
    toward full rank, in the spirit of the weakened VBMF of Gusak et al. (2019).
    """
    if not 0.0 <= weakening <= 1.0:
        raise UserError(f"rank weakening must be in [0, 1], got {weakening}")
    return int(rank + math.ceil(weakening * (dim - rank) - 1e-12))


def check_rank(rank, dim: int, what: str) -> int:
    """``rank`` as an int in ``[1, dim]``, or a one-line error naming ``what``."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise UserError(f"{what}: rank must be an integer, got {rank!r}")
    if rank < 1 or rank > dim:
        raise UserError(f"{what}: rank {rank} outside [1, {dim}]")
    return int(rank)


def tucker2(weight, ranks, n_iter_max: int = 100, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of an OIHW kernel: ``W ~ core x_0 u_out x_1 u_in`` (HOOI, SVD initialisation).

    Returns ``core [r_out, r_in, kh, kw]``, ``u_out [out, r_out]`` and ``u_in [in, r_in]``
    (orthonormal columns), i.e. ``W[t, s] ~ sum_ab u_out[t, a] core[a, b] u_in[s, b]``.
    Full ranks reproduce ``W`` exactly.
    """
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    w = _kernel(weight)
    if len(ranks) != 2:
        raise UserError(f"Tucker-2 needs two ranks (out, in), got {ranks!r}")
    r_out = check_rank(ranks[0], w.shape[0], "Tucker-2 output")
    r_in = check_rank(ranks[1], w.shape[1], "Tucker-2 input")
    with tl.backend_context("numpy"), one_blas_thread(), warnings.catch_warnings():
        # tensorly warns when a rank exceeds a mode's other unfolding size and clamps it: that is exact
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], init="svd",
                                                  n_iter_max=n_iter_max, tol=tol)
    return np.asarray(core), np.asarray(u_out), np.asarray(u_in)


def tucker2_reconstruct(core, u_out, u_in) -> np.ndarray:
    """``W[t, s, i, j] = sum_ab u_out[t, a] core[a, b, i, j] u_in[s, b]``."""
    return np.einsum("ta,abij,sb->tsij", u_out, core, u_in, optimize=True)  # BLAS contractions, not a 6-deep loop


class CPFactors(NamedTuple):
    """Rank-R CP factors of an OIHW kernel, ``W[t, s, i, j] ~ sum_r out[t, r] inp[s, r] h[i, r] w[j, r]``;
    ``error`` is the relative reconstruction error ``||W - W_R|| / ||W||``."""

    out: np.ndarray
    inp: np.ndarray
    h: np.ndarray
    w: np.ndarray
    error: float


def cp_reconstruct(out, inp, h, w) -> np.ndarray:
    """``W[t, s, i, j] = sum_r out[t, r] inp[s, r] h[i, r] w[j, r]``."""
    return np.einsum("tr,sr,ir,jr->tsij", out, inp, h, w, optimize=True)


def cp_max_rank(shape) -> int:
    """``prod(shape) // max(shape)``: every tensor of ``shape`` is a sum of that many rank-one
    terms (the slices along its longest mode), so no larger CP rank is needed."""
    return int(np.prod(shape)) // max(shape)


def cp_rank(weight, rule: str = "vbmf") -> int:
    """CP rank of an OIHW kernel by ``rule``, at most :func:`cp_max_rank`.

    ``"vbmf"``: ``max(tucker2_ranks(weight))`` (a CP rank is at least every
    multilinear rank); ``"seed"``: ``max(weight.shape) // 3``, the heuristic of the
    reference code (Lebedev et al. chose ranks by hand). Either can exceed the bound
    for a kernel with few input channels (a first conv): it is then capped.
    """
    w = _kernel(weight)
    if rule == "vbmf":
        r = max(tucker2_ranks(w))
    elif rule == "seed":
        r = max(w.shape) // 3
    else:
        raise UserError(f"unknown CP rank rule '{rule}' (choose vbmf or seed)")
    return min(r, cp_max_rank(w.shape))


def cp(weight, rank, n_iter_max: int = 200, tol: float = 1e-8, seed: int = 0,
       l2_reg: float = 1e-6) -> CPFactors:
    """Rank-``rank`` CP factors of an OIHW kernel by ALS (tensorly ``parafac``, numpy backend).

    Stable and reproducible: a seeded random initialisation (the reference's
    ``init='svd'`` pads with unseeded random columns anyway and costs minutes on
    512-channel layers) and a ridge ``l2_reg * ||W||^2 / (T S kh kw)`` on the factors that
    bounds their norms, against the diverging, cancelling rank-one terms of a
    degenerate CP problem. The weights of the CP tensor are folded into ``out``.
    """
    import tensorly as tl
    from tensorly.decomposition import parafac

    w = _kernel(weight)
    r = check_rank(rank, cp_max_rank(w.shape), "CP")
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        raise UserError("CP of an all-zero weight")
    with tl.backend_context("numpy"), one_blas_thread():
        cpt = parafac(w / norm, rank=r, n_iter_max=n_iter_max, init="random", tol=tol,
                      random_state=seed, l2_reg=l2_reg / w.size, normalize_factors=False)
    weights, (out, inp, h, wf) = cpt
    out = np.asarray(out) * np.asarray(weights)[None, :] * norm
    inp, h, wf = (np.asarray(a) for a in (inp, h, wf))
    error = float(np.linalg.norm(w - cp_reconstruct(out, inp, h, wf)) / norm)
    return CPFactors(out, inp, h, wf, error)
