"""Discriminant Component Analysis (DCA) for CDC distillation (docs/methods/cdc.md §2).

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


def _solve(s_w, s_b, num_classes, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
    """The DCA eigenproblem on scatter matrices (shared by batch and streaming fits)."""
    d = s_w.shape[0]
    if dim is None:
        dim = min(num_classes, d)  # reference: L components; fewer if D < L
    check(isinstance(dim, (int, np.integer)) and 1 <= dim <= d,
          f"dim must be an integer in [1, {d}] (feature dimension), got {dim!r}")
    if ridge is None:
        top = scipy.linalg.eigvalsh(s_w, subset_by_index=[d - 1, d - 1])[0]
        # S_W = S_total - S_B carries rounding of order eps * scale; below that it is zero
        scale = np.abs(s_w).max() + np.abs(s_b).max()
        check(top > 1e-12 * scale, "within-class scatter is zero (constant classes); pass ridge > 0")
        ridge = 0.02 * top
    rho = _finite_number(ridge, "ridge", positive=True)  # > 0 makes S_W + rho I positive definite
    rho_p = _finite_number(0.1 * rho if ridge_prime is None else ridge_prime, "ridge_prime")
    eye = np.eye(d)
    lam, w = scipy.linalg.eigh(s_w + s_b + (rho + rho_p) * eye, s_w + rho * eye,
                               subset_by_index=[d - dim, d - 1])
    lam, w = lam[::-1], w[:, ::-1]
    peak = np.abs(w).argmax(0)
    w = w * np.sign(w[peak, np.arange(dim)])
    return DCAResult(np.ascontiguousarray(w), lam, rho, rho_p)


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

    def scatter(self) -> tuple[np.ndarray, np.ndarray]:
        """``(S_W, S_B)`` of everything seen so far."""
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
        return 0.5 * (s_w + s_w.T), s_b  # symmetrise away rounding

    def fit(self, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
        s_w, s_b = self.scatter()
        return _solve(s_w, s_b, int((self.counts > 0).sum()), dim, ridge, ridge_prime)

    def subspace(self, dim=None, ridge=None, ridge_prime=None) -> np.ndarray:
        return self.fit(dim, ridge, ridge_prime).W


def dca_fit(features, labels, dim=None, ridge=None, ridge_prime=None) -> DCAResult:
    """Batch DCA fit: ``DCAResult(W, eigenvalues, ridge, ridge_prime)``."""
    x = _flat_features(features)
    return ScatterStats(x.shape[1]).update(x, labels).fit(dim, ridge, ridge_prime)


def dca_subspace(features, labels, dim=None, ridge=None, ridge_prime=None) -> np.ndarray:
    """DCA projection ``W [D, dim]`` (see the module docstring); project with ``X @ W``."""
    return dca_fit(features, labels, dim, ridge, ridge_prime).W


def align_subspace(student_proj, teacher_proj) -> np.ndarray:
    """Orthogonal ``R [k, k]`` minimising ``||Zs @ R - Zt||_F`` (orthogonal Procrustes).

    ``student_proj = Zs = Fs @ Ws`` and ``teacher_proj = Zt = Ft @ Wt`` are the
    projections of the same images, ``[N, k]`` each. The reference fits
    ``Ws`` and ``Wt`` independently and regresses ``Zs`` on ``Zt`` directly;
    each fit's columns carry an arbitrary sign (and rotation within nearly
    equal eigenvalues), so a flip inverts a target (cdc.md §2). Use
    ``Zs @ R`` against ``Zt`` (or ``Ws @ R`` as the student basis) instead.
    """
    zs = _as_features(student_proj, allowed_ranks=(2,), name="student_proj")
    zt = _as_features(teacher_proj, allowed_ranks=(2,), name="teacher_proj")
    check(zs.shape == zt.shape,
          f"student_proj shape {zs.shape} differs from teacher_proj shape {zt.shape}")
    r, _ = scipy.linalg.orthogonal_procrustes(zs.astype(np.float64), zt.astype(np.float64))
    return r


__all__ = ["DCAResult", "ScatterStats", "align_subspace", "dca_fit", "dca_subspace"]
