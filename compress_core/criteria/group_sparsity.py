"""Group sparsity for Hinge (Li et al., CVPR 2020): proximal maps, schedules, threshold search, merging.

Conventions. A conv weight is ``W [n, c, kh, kw]``; its matrix form is
``Wbar = W.reshape(n, d).T`` with ``d = c*kh*kw``. The sparsity-inducing matrix
``A [n, m]`` follows the conv: its rows are the conv's output channels, its
columns the block's outputs, and the block computes ``y_j = sum_i A_ij (W*x)_i``
(merged filter ``Wbar @ A``). In a :class:`~compress_core.ir.graph.Graph`, ``A`` is
a 1x1 conv whose weight is ``P [m, n, 1, 1] = A.T[:, :, None, None]``
(:func:`to_1x1` / :func:`from_1x1`).

Groups: ``"columns"`` (one group per column of A: zeroing one removes an output
of the block, i.e. **filter pruning**) or ``"rows"`` (one per row: zeroing one
removes an output of the conv and the matching input of the 1x1, i.e.
**low-rank decomposition**). The reference's ``dim=0`` is ``"columns"`` and
``dim=1`` is ``"rows"``.

Every function takes numpy arrays (float32 or float64) and computes in float64.
Transformed weights keep the input's dtype (float32 in, float32 out); norms,
factors and weights are float64. Bad arrays (wrong rank, empty, NaN) and bad
scalars raise a ``ValueError`` naming the argument.

Departures from the reference (``ofsoundof/group_sparsity``), both for corner
cases it does not handle: :func:`threshold_search` returns the best *evaluated*
threshold, and :func:`keep_groups` always keeps at least one group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core.numeric import checked_array

#: penalties of :func:`prox`: ``"l21"`` is the group lasso ``sum_g ||A_g||_2`` (reference
#: name ``'l1'``); ``"l1/2"`` is ``sum_g ||A_g||_2^(1/2)`` (reference name ``'l1d2'``)
PENALTIES = ("l21", "l1/2")
GROUPS = ("columns", "rows")
#: added to group norms in the l2,1 shrinkage, as the reference does, so a zero group stays zero
EPS = 1e-8
#: the reference keeps at least this fraction of the groups of every matrix (``--remain_percentage``)
FLOOR = 0.2
#: exponent of the gradient-ratio learning-rate adjustment (``HingeMultiStepLR``, method 'p1')
GRAD_RATIO_POWER = 1.35
#: bounds of the running gradient ratio from its second update on
GRAD_RATIO_CLIP = (5 / 9, 9 / 5)
#: weight of the *new* sample in the running gradient ratio (the reference's "momentum 0.9")
GRAD_RATIO_MOMENTUM = 0.9


# -- validation ------------------------------------------------------------------------------------

def _out_dtype(*arrays) -> np.dtype:
    """float32 if every given float array is float32, else float64."""
    kinds = [np.asarray(a).dtype for a in arrays if a is not None]
    return np.dtype(np.float32) if kinds and all(k == np.float32 for k in kinds) else np.dtype(np.float64)


def _mat(A, name: str = "A") -> np.ndarray:
    return checked_array(A, 2, "a non-empty 2-D array", name)


def _kernel(weight, name: str = "weight") -> np.ndarray:
    return checked_array(weight, 4, "a conv kernel [out, in, kh, kw]", name)


def _vec(v, length: int, name: str) -> np.ndarray:
    y = checked_array(v, 1, "a non-empty 1-D array", name)
    if y.size != length:
        raise ValueError(f"{name} must have {length} entries, got {y.size}")
    return y


def _number(value, name: str, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` if strict); else ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (v <= low if strict else v < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return v


def _axis(groups: str) -> int:
    """Axis of A reduced by a group norm: columns are reduced over rows (axis 0) and vice versa."""
    if groups not in GROUPS:
        raise ValueError(f"groups must be one of {GROUPS}, got {groups!r}")
    return 0 if groups == "columns" else 1


def _index(idx, size: int, name: str) -> np.ndarray:
    """Distinct integer indices in [0, size), at least one."""
    i = np.asarray(idx)
    if i.ndim != 1 or i.size == 0 or not np.issubdtype(i.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-D array of integer indices, got {i!r}")
    if i.min() < 0 or i.max() >= size or np.unique(i).size != i.size:
        raise ValueError(f"{name} must hold distinct indices in [0, {size}), got {i.tolist()}")
    return i


# -- group norms and proximal maps ---------------------------------------------------------------

def group_norms(A, groups: str) -> np.ndarray:
    """``||A_g||_2`` for every group: column norms ``[m]`` or row norms ``[n]`` of ``A [n, m]``."""
    a = _mat(A)
    return np.linalg.norm(a, axis=_axis(groups))


def _lams(lam, count: int) -> np.ndarray:
    """``lam`` broadcast to one non-negative finite value per group."""
    lv = np.asarray(lam, np.float64)
    if lv.ndim > 1 or (lv.ndim == 1 and lv.size != count):
        raise ValueError(f"lam must be a scalar or one value per group ({count}), got shape {lv.shape}")
    if not np.all(np.isfinite(lv)) or np.any(lv < 0):
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    return np.broadcast_to(lv, (count,))


def shrink_factors(norms, lam, penalty: str = "l21") -> np.ndarray:
    """Per-group factors ``s_g`` with ``prox(A)_g = s_g * A_g``, from the group norms ``r_g``.

    ``"l21"``: ``s = max(0, 1 - lam / (r + 1e-8))`` (group soft thresholding).
    ``"l1/2"``: ``s = 0`` if ``r <= (54^(1/3) / 4) lam^(2/3)``, else
    ``s = (2/3) (1 + cos(2 pi/3 - (2/3) phi))`` with ``phi = arccos((lam/8) (r/3)^(-3/2))``
    (group half thresholding; the factor jumps from 0 to 2/3 at the cut).
    Use it directly for groups that span several tensors (ResNeXt's joint paths).
    """
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    r = checked_array(norms, 1, "a non-empty 1-D array", "norms")
    if np.any(r < 0):
        raise ValueError("norms must be >= 0")
    lv = _lams(lam, r.size)
    if penalty == "l21":
        return np.maximum(0.0, 1.0 - lv / (r + EPS))
    cut = 54.0 ** (1 / 3) / 4 * lv ** (2 / 3)
    live = r > cut
    scale = np.zeros_like(r)
    rl, ll = r[live], lv[live]
    # rl > cut >= 0 here, and at the cut the arccos argument is 2^(-1/2): no clipping needed but for round-off
    phi = np.arccos(np.clip(ll / 8 * (rl / 3) ** -1.5, -1.0, 1.0))
    scale[live] = 2 / 3 * (1 + np.cos(2 * np.pi / 3 - 2 / 3 * phi))
    return scale


def _apply(A, lam, groups: str, penalty: str) -> np.ndarray:
    a, axis = _mat(A), _axis(groups)
    s = shrink_factors(np.linalg.norm(a, axis=axis), lam, penalty)
    out = a * (s[None, :] if axis == 0 else s[:, None])
    return out.astype(_out_dtype(A), copy=False)


def group_prox(A, lam, groups: str) -> np.ndarray:
    """Proximal map of ``lam * sum_g ||A_g||_2``: ``A_g <- max(0, 1 - lam_g / (||A_g|| + 1e-8)) A_g``.

    ``lam`` is a scalar or one value per group (the reference's ``tau_l = lr * lambda * w_l``).
    """
    return _apply(A, lam, groups, "l21")


def half_prox(A, lam, groups: str) -> np.ndarray:
    """Proximal map of ``(lam/2) * sum_g ||A_g||_2^(1/2)`` (group half thresholding, ``'l1d2'``).

    Each group keeps its direction; its norm ``r`` becomes ``s r`` with ``s`` of
    :func:`shrink_factors` (0 below ``r = (54^(1/3)/4) lam^(2/3)``).
    """
    return _apply(A, lam, groups, "l1/2")


def prox(A, lam, groups: str, penalty: str) -> np.ndarray:
    """:func:`group_prox` for ``penalty="l21"``, :func:`half_prox` for ``"l1/2"``."""
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    return _apply(A, lam, groups, penalty)


# -- schedules --------------------------------------------------------------------------------------

def balancing_weights(norms_per_layer: Sequence) -> np.ndarray:
    """Layer-balancing weights ``w_l = mean_g ||A_{l,g}||``, one per layer, from the group norms at init.

    With the SVD initialisation the row norms are singular values, so ``w_l`` is
    the layer's mean singular value. The prox threshold of layer ``l`` is
    ``lr * lambda * w_l``.
    """
    if len(norms_per_layer) == 0:
        raise ValueError("norms_per_layer must hold at least one layer")
    out = []
    for i, n in enumerate(norms_per_layer):
        v = checked_array(n, 1, "a non-empty 1-D array", f"norms_per_layer[{i}]")
        if np.any(v < 0):
            raise ValueError(f"norms_per_layer[{i}] must be >= 0")
        out.append(v.mean())
    return np.asarray(out)


def anneal(lam: float, value: float, factor: float, t1: float = 10.0, t2: float = 5.0) -> float:
    """Annealed regularisation factor from the current regulariser value ``v`` (``reg_anneal``).

    ``lam`` if ``factor == 0`` (off) or ``v > t1``; ``lam / factor`` if ``t2 < v <= t1``;
    ``lam / factor**2`` if ``v <= t2``.
    """
    lam = _number(lam, "lam")
    value = _number(value, "value")
    factor = _number(factor, "factor")
    t1, t2 = _number(t1, "t1"), _number(t2, "t2")
    if t2 > t1:
        raise ValueError(f"t2 ({t2}) must not exceed t1 ({t1})")
    if factor == 0 or value > t1:
        return lam
    return lam / factor if value > t2 else lam / factor ** 2


class GradRatio:
    """Running ratio ``rho`` of the gradient norms of the two sparsity families (``update_grad_ratio``).

    ``update(g1, g2)`` with ``g_k = sum_{l,g} ||grad A_{k,l,g}||``: the first update
    sets ``rho = g1 / g2``; later ones ``rho <- 0.1 rho + 0.9 g1 / g2`` and clip to
    ``[5/9, 9/5]`` (the reference's "momentum 0.9" weights the new sample). A
    sample with ``g2 == 0`` has no ratio and is skipped.
    :meth:`scales` gives the learning-rate multipliers ``rest: rho^-1.35``,
    ``a1: rho^-1.35``, ``a2: 1`` (``rho == 0`` counts as 1, as in ``HingeMultiStepLR``);
    the prox threshold always uses the unscaled ``a2`` rate.
    """

    def __init__(self):
        self.rho = 1.0
        self.updates = 0

    def update(self, grad_norm_sum_1: float, grad_norm_sum_2: float) -> float:
        g1 = _number(grad_norm_sum_1, "grad_norm_sum_1")
        g2 = _number(grad_norm_sum_2, "grad_norm_sum_2")
        if g2 == 0:
            return self.rho
        new = g1 / g2
        if self.updates == 0:
            self.rho = new
        else:
            lo, hi = GRAD_RATIO_CLIP
            self.rho = min(max((1 - GRAD_RATIO_MOMENTUM) * self.rho + GRAD_RATIO_MOMENTUM * new, lo), hi)
        self.updates += 1
        return self.rho

    def scales(self) -> dict[str, float]:
        f = (self.rho if self.rho != 0 else 1.0) ** -GRAD_RATIO_POWER
        return {"rest": f, "a1": f, "a2": 1.0}


# -- which groups survive, and the threshold search -----------------------------------------------

def _survivors(n: np.ndarray, k: int, cut: float, strict: bool) -> np.ndarray:
    """``get_nonzero_index``: groups with norm >= cut (> cut if strict), at least the first k if degenerate."""
    if n.max() == 0:
        return np.arange(k)
    t = np.sort(n)[::-1][k - 1]
    if t == 0:
        # fewer than k non-zero groups: the non-zero ones plus the first k
        return np.union1d(np.flatnonzero(n > 0), np.arange(k))
    return np.flatnonzero(n > min(t, cut) if strict else n >= min(t, cut))


def keep_groups(norms, tau: float, floor: float = FLOOR) -> np.ndarray:
    """Sorted indices of the groups that survive the nullifying threshold ``tau``.

    With ``k = max(1, floor(floor * G))`` and ``t_k`` the k-th largest norm, keep every
    group with ``||A_g|| >= min(tau, t_k)``, so at least ``k`` groups survive. Degenerate
    cases as the reference: all norms 0 -> the first ``k`` groups; fewer than ``k``
    non-zero norms -> the non-zero groups plus the first ``k``; ``tau == 0`` ->
    exactly the non-zero groups (``> 0``). Departure: ``k >= 1`` always (the
    reference fails for fewer than ``1 / floor`` groups; an empty layer cannot exist).
    """
    n = checked_array(norms, 1, "a non-empty 1-D array", "norms")
    if np.any(n < 0):
        raise ValueError("norms must be >= 0")
    tau = _number(tau, "tau")
    floor = _number(floor, "floor")
    if floor > 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    k = max(1, int(floor * n.size))
    return _survivors(n, k, tau, strict=tau == 0)


def keep_top(norms, count: int) -> np.ndarray:
    """The top-``count`` groups by norm (ties at the cut all survive), as ``--p1_p2_same_ratio``.

    The second matrix of a block keeps as many groups as the first; degenerate
    cases as :func:`keep_groups` with ``k = count``.
    """
    n = checked_array(norms, 1, "a non-empty 1-D array", "norms")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= n.size:
        raise ValueError(f"count must be an integer in [1, {n.size}], got {count!r}")
    return _survivors(n, int(count), math.inf, strict=False)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`threshold_search`.

    ``tau`` and ``ratio``: the best evaluated threshold and its MAC ratio;
    ``evaluations``: every ``(tau, ratio)`` of the walk, in order (``len`` = iterations);
    ``converged``: whether the walk ended within tolerance.
    """

    tau: float
    ratio: float
    evaluations: tuple[tuple[float, float], ...]
    converged: bool = False


def threshold_search(ratio_of: Callable[[float], float], target: float, tau0: float, step: float = 0.01,
                     tol: float = 0.001, max_iter: int = 100) -> SearchResult:
    """The reference's step-halving walk (``binary_search``) on the global nullifying threshold ``tau``.

    ``ratio_of(tau)`` is the remaining-MAC ratio after nullifying groups below
    ``tau`` (non-increasing in ``tau``). From ``tau0``: evaluate; stop if
    ``|ratio - target| <= tol``; halve ``step`` when the ratio crossed the target
    since the previous iteration (from the 2nd on); then ``tau += step`` if the
    ratio is above target, ``tau = max(tau - step, 0)`` if below; at most
    ``max_iter`` evaluations, and stop early on a ratio ``<= 0``.

    Departure: the reference ends on the last *updated* tau, which after an
    unreachable tolerance (the ratio is a step function) was never evaluated.
    This returns the best *evaluated* tau: the one whose ratio is closest to the
    target, preferring ``ratio <= target`` on a tie, then the earliest. On
    convergence that is the last tau, as in the reference.
    """
    if not callable(ratio_of):
        raise TypeError("ratio_of must be a callable tau -> ratio")
    target = _number(target, "target", strict=True)
    tau = _number(tau0, "tau0")
    step = _number(step, "step", strict=True)
    tol = _number(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    seen: dict[float, float] = {}
    walk: list[tuple[float, float]] = []
    ratio, converged = 1.0, False
    for it in range(max_iter):
        old = ratio
        if tau not in seen:  # ratio_of is deterministic: an oscillating walk revisits taus
            seen[tau] = _number(ratio_of(tau), f"ratio_of({tau})", low=-math.inf)
        ratio = seen[tau]
        walk.append((tau, ratio))
        if abs(ratio - target) <= tol:
            converged = True
            break
        if it > 0 and (old >= target) == (ratio < target):
            step /= 2
        if ratio > target:
            tau += step
        elif ratio < target:
            tau = max(tau - step, 0.0)
        if ratio <= 0:
            break
    best = min(range(len(walk)), key=lambda i: (abs(walk[i][1] - target), walk[i][1] > target, i))
    return SearchResult(walk[best][0], walk[best][1], tuple(walk), converged)


# -- initialisation and surgery ----------------------------------------------------------------------

def svd_init(weight) -> tuple[np.ndarray, np.ndarray]:
    """The ``svd2`` initialisation: ``(weight0 [r, c, kh, kw], A0 [r, n])`` with ``r = min(d, n)``.

    ``Wbar = U S V^T`` (thin SVD, ``Wbar = W.reshape(n, d).T``); ``weight0`` holds the
    orthonormal columns of ``U`` as filters and ``A0 = S V^T``, so
    ``merge(weight0, A0) == weight`` and the row norms of ``A0`` are the singular
    values (the first row prox soft-thresholds them).
    """
    w = _kernel(weight)
    n = w.shape[0]
    u, s, vt = np.linalg.svd(w.reshape(n, -1).T, full_matrices=False)
    dt = _out_dtype(weight)
    w0 = u.T.reshape(s.size, *w.shape[1:])
    return w0.astype(dt), (s[:, None] * vt).astype(dt)


def merge(weight, A, bias=None, a_bias=None) -> tuple[np.ndarray, np.ndarray | None]:
    """One conv for conv-then-1x1: ``W'_j = sum_i A_ij W_i`` ``[m, c, kh, kw]``, ``b' = A^T b + b_A``.

    ``bias [n]`` is the conv's, ``a_bias [m]`` the 1x1's; ``b'`` is None only when
    both are None. Exact for an ungrouped conv (nothing non-linear in between).
    """
    w, a = _kernel(weight), _mat(A)
    if a.shape[0] != w.shape[0]:
        raise ValueError(f"A must have one row per conv output ({w.shape[0]}), got shape {a.shape}")
    b = None if bias is None else _vec(bias, w.shape[0], "bias")
    ba = None if a_bias is None else _vec(a_bias, a.shape[1], "a_bias")
    dt = _out_dtype(weight, A)
    merged = np.einsum("ij,i...->j...", a, w).astype(dt)
    if b is None and ba is None:
        return merged, None
    out = (a.T @ b if b is not None else 0.0) + (ba if ba is not None else 0.0)
    return merged, np.asarray(out, dt)


def decompose(weight, A, rows, bias=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Keep rows ``R`` of ``A`` and the matching filters: ``(weight[R], A[R, :], bias[R] | None)``.

    The conv then has ``|R|`` outputs and the 1x1 maps ``|R| -> m``; exact when the
    removed rows of ``A`` are zero.
    """
    w, a = _kernel(weight), _mat(A)
    if a.shape[0] != w.shape[0]:
        raise ValueError(f"A must have one row per conv output ({w.shape[0]}), got shape {a.shape}")
    b = None if bias is None else _vec(bias, w.shape[0], "bias")
    r = _index(rows, a.shape[0], "rows")
    dw, da = _out_dtype(weight), _out_dtype(A)
    return (w[r].astype(dw), a[r].astype(da), None if b is None else b[r].astype(_out_dtype(bias)))


def prune_columns(A, cols, a_bias=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep columns ``K`` of ``A`` (outputs of the 1x1): ``(A[:, K], a_bias[K] | None)``.

    The consumers of the block's output (BatchNorm entries, the next conv's
    inputs) must be sliced with the same ``K``.
    """
    a = _mat(A)
    ba = None if a_bias is None else _vec(a_bias, a.shape[1], "a_bias")
    k = _index(cols, a.shape[1], "cols")
    return a[:, k].astype(_out_dtype(A)), None if ba is None else ba[k].astype(_out_dtype(a_bias))


def to_1x1(A) -> np.ndarray:
    """``A [n, m]`` as the weight of a 1x1 conv: ``P [m, n, 1, 1] = A.T[:, :, None, None]`` (float32)."""
    return np.ascontiguousarray(_mat(A).T[:, :, None, None], dtype=np.float32)


def from_1x1(P) -> np.ndarray:
    """``A [n, m]`` from a 1x1 conv weight ``P [m, n, 1, 1]``."""
    p = _kernel(P, "P")
    if p.shape[2:] != (1, 1):
        raise ValueError(f"P must be a 1x1 conv weight [m, n, 1, 1], got shape {p.shape}")
    return np.ascontiguousarray(p[:, :, 0, 0].T).astype(_out_dtype(P))
