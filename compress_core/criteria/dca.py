"""Discriminant Component Analysis (DCA) for CDC distillation (S.Y. Kung; the reference's ``Util/DCA_util.py``).

For features ``X [N, D]`` with class means ``mu_c``, counts ``n_c`` and mean ``mu``::

    S_W  = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T      (within-class scatter, a sum)
    S_B  = sum_c n_c (mu_c - mu)(mu_c - mu)^T
    Sbar = S_W + S_B
    (Sbar + (rho + rho') I) w = lam (S_W + rho I) w            (scipy.linalg.eigh(A, B))

Columns of ``W`` are the top ``dim`` eigenvectors by decreasing ``lam``,
normalised so ``W.T @ (S_W + rho I) @ W = I``. Equivalently
``lam = 1 + (w'S_B w + rho'|w|^2) / (w'(S_W + rho I) w)``: a doubly ridged LDA.
Defaults (reference): ``rho = 0.02 * max eig(S_W)``, ``rho' = 0.1 * rho``,
``dim`` = number of classes present (clipped to D). The reference keeps the
first fit's ``rho`` for later refits; here every fit computes its own unless
``ridge`` is passed (pass the teacher's ``DCAResult.ridge`` to reproduce that).

Components that exist: ``S_B`` has rank ``r <= K - 1`` (the rank of the
count-weighted centred class means, :meth:`ScatterStats.rank`), and only ``r``
eigenvalues can exceed ``1 + rho'/rho``; the rest are made by the ridges (the
reference's ``K``-th component is the best of them, picked by ``rho'``). So at
most ``min(D, r + 1)`` components exist (:meth:`ScatterStats.components`). A
larger ``dim``, the default ``K`` included when the class means are rank
deficient, raises ``UserError`` naming ``r``; ``r = 0`` (all class means equal,
e.g. an all-zero tap) raises too. Scatter below ``1e-12`` of the largest
scatter entry counts as zero (``S_W = S_total - S_B`` cancels to rounding of
that order).

Ties: every direction in which the data is constant (a dead ReLU channel, an
all-zero feature) lies in the null space of both ``S_W`` and ``S_B`` and has
``lam = 1 + rho'/rho`` exactly, so past ``r`` the spectrum can hold one
eigenvalue many times. LAPACK's subset solvers (``eigh(..., subset_by_index)``,
bisection) cannot split a tie at their cut: they silently return fewer
eigenpairs or fail. Hence every solve here computes the full spectrum and keeps
the top ``dim`` (the ``O(D^3)`` Cholesky and tridiagonal reduction is shared;
the full solve measured 1.1-1.7x the subset one at D = 2048-3072). Where a tie
straddles the cut, the kept columns are some ``(S_W + rho I)``-orthonormal
vectors of the tied space; when it is the data's constant directions, any
choice projects every image to the same value (0 for all-zero features).

Sign convention: an eigenvector is defined up to sign, so each column is
flipped to make its largest-magnitude entry (first one on ties) positive;
fits are then deterministic. This does not fix rotations inside repeated
eigenvalues, nor make independent teacher/student fits agree: see
:func:`align_subspace`.

:class:`ScatterStats` accumulates what the fit needs over batches (per-class
counts and sums plus the total ``D x D`` second moment; memory ``O(D^2 + K D)``,
independent of N), and the batch functions are "update once, solve", so the
solver exists once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from compress_core.criteria.discriminant import _as_features, _as_labels, _finite_number
from compress_core.errors import check


class DCAResult(NamedTuple):
    """``W [D, dim]``, ``eigenvalues [dim]`` (decreasing), the ridges used."""

    W: np.ndarray
    eigenvalues: np.ndarray
    ridge: float
    ridge_prime: float


def _flat_features(features, name: str = "features") -> np.ndarray:
    x = _as_features(features, allowed_ranks=range(2, 33), name=name)
    return x.reshape(x.shape[0], -1)


# Scatter below this fraction of the largest scatter entry is rounding: S_W = S_total - S_B
# cancels to about eps * scale.
_ZERO = 1e-12


def _rank(s_w, s_b, dev) -> int:
    """Numerical rank of ``S_B = dev.T @ dev`` (from the ``[K, D]`` ``dev``: cheap for ``K << D``)."""
    scale = np.abs(s_w).max() + np.abs(s_b).max()
    return int((np.linalg.svd(dev, compute_uv=False) ** 2 > _ZERO * scale).sum())


def _components(rank: int, d: int) -> int:
    """``min(D, r + 1)`` components exist (``r`` discriminant ones, one picked by ``rho'``); none when ``r = 0``."""
    return min(d, rank + 1) if rank else 0


def _solve(s_w, s_b, rank, num_classes, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
    """The DCA eigenproblem on scatter matrices (shared by batch and streaming fits)."""
    d = s_w.shape[0]
    default = dim is None
    if default:
        dim = min(num_classes, d)  # reference: L components; fewer if D < L
    check(isinstance(dim, (int, np.integer)) and 1 <= dim <= d,
          f"dim must be an integer in [1, {d}] (feature dimension), got {dim!r}")
    sw_scale = np.abs(s_w).max()
    check(rank > 0, "no DCA component exists: the class means coincide (rank of S_B = 0)"
          + ("" if sw_scale > 0 else " and the features are constant (S_W = 0)"))
    available = _components(rank, d)
    check(dim <= available,
          f"dim={dim}{' (the default: number of classes)' if default else ''} exceeds the {available} DCA "
          f"components that exist: the class means span {rank} dimension(s) (rank of S_B = {rank}); "
          f"pass dim <= {available}")
    if ridge is None:
        top = scipy.linalg.eigvalsh(s_w)[-1]  # full spectrum: a subset solve fails on a tied top
        check(top > _ZERO * (sw_scale + np.abs(s_b).max()),
              "within-class scatter is zero (constant classes); pass ridge > 0")
        ridge = 0.02 * top
    rho = _finite_number(ridge, "ridge", positive=True)  # > 0 makes S_W + rho I positive definite
    rho_p = _finite_number(0.1 * rho if ridge_prime is None else ridge_prime, "ridge_prime")
    eye = np.eye(d)
    # full spectrum (ascending), never subset_by_index: a cut inside a tie loses eigenpairs
    lam, w = scipy.linalg.eigh(s_w + s_b + (rho + rho_p) * eye, s_w + rho * eye)
    lam, w = lam[::-1][:dim], w[:, ::-1][:, :dim]
    peak = np.abs(w).argmax(0)
    w = w * np.sign(w[peak, np.arange(dim)])
    return DCAResult(np.ascontiguousarray(w), np.ascontiguousarray(lam), rho, rho_p)


class ScatterStats:
    """Streaming accumulator of the DCA scatter matrices for ``dim``-dimensional features.

    ``update(features, labels)`` takes ``[n, ...]`` features (flattened to
    ``[n, dim]``) and non-negative integer labels; the class set grows as labels
    appear. It keeps per-class counts and sums and the total second moment, all
    of ``x - shift`` with ``shift`` = the first batch's mean: scatter is shift
    invariant, and centring keeps ``sum x x^T - N m m^T`` from cancelling on
    large-offset activations. ``subspace``/``fit`` then equal the batch
    ``dca_subspace``/``dca_fit`` on the concatenated data.
    """

    def __init__(self, dim: int):
        check(isinstance(dim, (int, np.integer)) and dim >= 1, f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.shift = None
        self.counts = np.zeros(0, np.int64)
        self.sums = np.zeros((0, self.dim))
        self.second = np.zeros((self.dim, self.dim))

    def update(self, features, labels) -> ScatterStats:
        x = _flat_features(features)
        check(x.shape[1] == self.dim, f"features has {x.shape[1]} values per row, expected dim={self.dim}")
        y = _as_labels(labels, x.shape[0])
        x = x.astype(np.float64)
        if self.shift is None:
            self.shift = x.mean(0)
        x -= self.shift
        k = max(self.counts.size, int(y.max()) + 1)
        if k > self.counts.size:  # new classes: grow the per-class arrays
            self.counts = np.pad(self.counts, (0, k - self.counts.size))
            self.sums = np.pad(self.sums, ((0, k - self.sums.shape[0]), (0, 0)))
        self.counts += np.bincount(y, minlength=k)
        onehot = np.zeros((k, x.shape[0]))
        onehot[y, np.arange(x.shape[0])] = 1.0
        self.sums += onehot @ x  # BLAS; np.add.at is slow for wide rows
        self.second += x.T @ x
        return self

    def _moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(S_W, S_B, dev)`` with ``S_B = dev.T @ dev``, ``dev = sqrt(n_c) (mu_c - mu)`` ``[K, D]``."""
        check(int((self.counts > 0).sum()) >= 2,
              f"labels must contain at least 2 classes, got {int((self.counts > 0).sum())}")
        present = self.counts > 0
        n_c = self.counts[present].astype(np.float64)
        mu_c = self.sums[present] / n_c[:, None]
        mu = self.sums.sum(0) / n_c.sum()
        dev = np.sqrt(n_c)[:, None] * (mu_c - mu)
        s_b = dev.T @ dev
        s_total = self.second - n_c.sum() * np.outer(mu, mu)
        s_w = s_total - s_b
        return 0.5 * (s_w + s_w.T), s_b, dev  # symmetrise away rounding

    def scatter(self) -> tuple[np.ndarray, np.ndarray]:
        """``(S_W, S_B)`` of everything seen so far."""
        return self._moments()[:2]

    def rank(self) -> int:
        """Numerical rank ``r`` of ``S_B`` (``<= K - 1``): the dimensions the class means span."""
        return _rank(*self._moments())

    def components(self) -> int:
        """How many DCA components exist: ``min(D, rank() + 1)``, 0 when the class means coincide."""
        return _components(self.rank(), self.dim)

    def fit(self, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
        """``DCAResult`` of ``dim`` components; ``dim > components()`` raises ``UserError`` naming the rank."""
        s_w, s_b, dev = self._moments()
        return _solve(s_w, s_b, _rank(s_w, s_b, dev), int((self.counts > 0).sum()), dim, ridge, ridge_prime)

    def subspace(self, dim=None, ridge=None, ridge_prime=None) -> np.ndarray:
        return self.fit(dim, ridge, ridge_prime).W


def dca_fit(features, labels, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
    """Batch DCA fit: ``DCAResult(W, eigenvalues, ridge, ridge_prime)``."""
    x = _flat_features(features)
    return ScatterStats(x.shape[1]).update(x, labels).fit(dim, ridge, ridge_prime)


def dca_subspace(features, labels, dim=None, ridge=None, ridge_prime=None) -> np.ndarray:
    """DCA projection ``W [D, dim]``; project with ``X @ W``.

    Solves ``(S_B + S_W + (rho + rho') I) w = lam (S_W + rho I) w``; columns by
    decreasing ``lam``, normalised so ``W.T @ (S_W + rho I) @ W = I``. Defaults:
    ``rho = 0.02 * max eig(S_W)``, ``rho' = 0.1 * rho``, ``dim`` = number of
    classes (at most D). Exactly ``dim`` columns come back, or ``UserError``:
    when ``dim`` exceeds the ``min(D, r + 1)`` components that exist (``r`` =
    rank of the class means, named in the message; ask
    ``ScatterStats.components()`` first to fit what exists), when ``r = 0``,
    and when ``S_W = 0`` leaves no default ``rho``. See the module docstring.
    """
    return dca_fit(features, labels, dim, ridge, ridge_prime).W


def align_subspace(student_proj, teacher_proj) -> np.ndarray:
    """Orthogonal ``R [k, k]`` minimising ``||Zs @ R - Zt||_F`` (orthogonal Procrustes).

    ``student_proj = Zs = Fs @ Ws`` and ``teacher_proj = Zt = Ft @ Wt`` are the
    projections of the same images, ``[N, k]`` each. The reference fits
    ``Ws`` and ``Wt`` independently and regresses ``Zs`` on ``Zt`` directly;
    each fit's columns carry an arbitrary sign (and rotation within nearly
    equal eigenvalues), so a flip inverts a target. Use
    ``Zs @ R`` against ``Zt`` (or ``Ws @ R`` as the student basis) instead.
    """
    zs = _as_features(student_proj, allowed_ranks=(2,), name="student_proj")
    zt = _as_features(teacher_proj, allowed_ranks=(2,), name="teacher_proj")
    check(zs.shape == zt.shape,
          f"student_proj shape {zs.shape} differs from teacher_proj shape {zt.shape}")
    r, _ = scipy.linalg.orthogonal_procrustes(zs.astype(np.float64), zt.astype(np.float64))
    return r


__all__ = ["DCAResult", "ScatterStats", "align_subspace", "dca_fit", "dca_subspace"]
