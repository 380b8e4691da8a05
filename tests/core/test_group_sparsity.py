"""Hinge's group-sparsity core: hand-derived goldens, brute-force oracles, degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress_core.criteria import group_sparsity as gs
from tests.oracle import _conv


def conv(x, w, b=None):
    """Stride-1, 'same'-padded ungrouped conv (numpy einsum oracle)."""
    k = w.shape[2]
    return _conv(x, w, b, (1, 1), (k // 2, k // 2), (1, 1), 1)


def mix(y, A, b=None):
    """The 1x1 conv of A: ``z_j = sum_i A_ij y_i (+ b_j)``."""
    z = np.einsum("nihw,ij->njhw", y, A)
    return z if b is None else z + b[None, :, None, None]


# -- proximal maps --------------------------------------------------------------------------------

def test_group_prox_by_hand():
    # columns of [[3, 0], [4, 1]] have norms 5 and 1; lam 2: column 0 * (1 - 2/5), column 1 -> 0
    A = np.array([[3.0, 0.0], [4.0, 1.0]])
    np.testing.assert_allclose(gs.group_prox(A, 2.0, "columns"), [[1.8, 0.0], [2.4, 0.0]], atol=1e-8)
    assert gs.group_norms(A, "columns").tolist() == [5.0, 1.0]
    # rows of a 3x2 matrix (norms 5, 0.5, 10) with one lam per row: * 0.8, -> 0, * 0.5
    B = np.array([[3.0, 4.0], [0.0, 0.5], [6.0, 8.0]], np.float32)
    out = gs.group_prox(B, [1.0, 1.0, 5.0], "rows")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[2.4, 3.2], [0.0, 0.0], [3.0, 4.0]], atol=1e-6)
    np.testing.assert_array_equal(gs.prox(B, [1.0, 1.0, 5.0], "rows", "l21"), out)
    np.testing.assert_array_equal(gs.group_prox(B, 0.0, "rows"), B)  # lam 0: identity (up to 1e-8 eps)
    assert not np.any(gs.group_prox(np.zeros((2, 2)), 1.0, "rows"))  # a zero group stays zero (no 0/0)


def test_prox_rejects_bad_input():
    A = np.ones((3, 2))
    with pytest.raises(ValueError, match="lam"):
        gs.group_prox(A, [1.0, 2.0, 3.0], "columns")  # 2 columns, 3 values
    with pytest.raises(ValueError, match="lam"):
        gs.group_prox(A, -1.0, "rows")
    with pytest.raises(ValueError, match="lam"):
        gs.half_prox(A, [np.nan, 1.0], "columns")
    with pytest.raises(ValueError, match="groups"):
        gs.group_prox(A, 1.0, "filters")
    with pytest.raises(ValueError, match=r"l21.*l1/2"):
        gs.prox(A, 1.0, "rows", "l1d2")
    with pytest.raises(ValueError, match="A"):
        gs.group_prox(np.ones(3), 1.0, "rows")
    with pytest.raises(ValueError, match="A"):
        gs.group_prox(np.array([[1.0, np.nan]]), 1.0, "rows")


def test_half_prox_is_the_minimiser_along_each_group():
    # prox of (lam/2) ||x||^(1/2): the solution keeps the group's direction, so it is
    # t * z / ||z||, t minimising 0.5 (t - r)^2 + (lam/2) sqrt(t) over t >= 0 (brute-force grid)
    rng = np.random.default_rng(0)
    lam = 0.3
    cut = 54 ** (1 / 3) / 4 * lam ** (2 / 3)  # 0.4216...
    A = rng.normal(size=(4, 6))
    A *= np.array([0.1, 0.2, 0.3, 0.5, 0.8, 1.5]) / np.linalg.norm(A, axis=0)  # column norms around the cut
    out = gs.half_prox(A, lam, "columns")
    t = np.linspace(0.0, 2.0, 2_000_001)
    for j, r in enumerate(np.linalg.norm(A, axis=0)):
        best = t[np.argmin(0.5 * (t - r) ** 2 + lam / 2 * np.sqrt(t))]
        np.testing.assert_allclose(out[:, j], best * A[:, j] / r, atol=2e-6)
        assert (np.linalg.norm(out[:, j]) == 0) == (r <= cut)
    # the jump at the cut: just above it the norm becomes 2/3 of the input norm
    s = gs.shrink_factors([cut * (1 + 1e-9), cut * (1 - 1e-9)], lam, "l1/2")
    assert s[0] == pytest.approx(2 / 3, abs=1e-4) and s[1] == 0
    np.testing.assert_array_equal(gs.prox(A, lam, "columns", "l1/2"), out)
    np.testing.assert_allclose(gs.half_prox(A, 0.0, "rows"), A, rtol=1e-12)  # lam 0: identity


# -- schedules ------------------------------------------------------------------------------------

def test_balancing_weights_and_anneal():
    w = gs.balancing_weights([np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5]), np.array([4.0], np.float32)])
    np.testing.assert_allclose(w, [2.0, 0.5, 4.0])
    with pytest.raises(ValueError, match=r"norms_per_layer\[1\]"):
        gs.balancing_weights([np.ones(2), np.array([])])
    # lam 2e-4, factor 2, t1 = 75, t2 = 60 (the ResNeXt-20 script)
    assert gs.anneal(2e-4, 80.0, 2, 75, 60) == 2e-4
    assert gs.anneal(2e-4, 75.0, 2, 75, 60) == 1e-4  # t2 < v <= t1
    assert gs.anneal(2e-4, 60.0, 2, 75, 60) == 5e-5  # v <= t2
    assert gs.anneal(2e-4, 1.0, 0, 75, 60) == 2e-4  # factor 0: off
    with pytest.raises(ValueError, match="t2"):
        gs.anneal(2e-4, 1.0, 2, 5, 10)


def test_grad_ratio_momentum_and_clipping():
    g = gs.GradRatio()
    assert g.scales() == {"rest": 1.0, "a1": 1.0, "a2": 1.0}
    assert g.update(3.0, 1.0) == 3.0  # the first ratio is taken as it is, not clipped
    assert g.scales()["a1"] == pytest.approx(3.0 ** -1.35)
    assert g.update(1.0, 1.0) == pytest.approx(1.2)  # 0.1 * 3 + 0.9 * 1, inside [5/9, 9/5]
    g2 = gs.GradRatio()
    g2.update(1.0, 1.0)
    assert g2.update(1.0, 2.0) == pytest.approx(5 / 9)  # 0.1 * 1 + 0.9 * 0.5 = 0.55 -> clipped to 5/9
    assert g2.update(4.0, 1.0) == pytest.approx(9 / 5)  # 0.1 * 5/9 + 3.6 -> 9/5
    assert g2.update(1.0, 0.0) == pytest.approx(9 / 5) and g2.updates == 3  # no ratio: skipped
    assert g2.scales() == {"rest": pytest.approx(1.8 ** -1.35), "a1": pytest.approx(1.8 ** -1.35), "a2": 1.0}
    with pytest.raises(ValueError, match="grad_norm_sum_1"):
        g2.update(float("nan"), 1.0)


# -- surviving groups -----------------------------------------------------------------------------

def test_keep_groups_threshold_floor_and_degenerate_cases():
    n = np.array([0.5, 0.01, 0.2, 0.003, 0.0, 0.04, 0.3, 0.002, 0.1, 0.001])  # 10 groups: k = 2
    assert gs.keep_groups(n, 0.05).tolist() == [0, 2, 6, 8]
    assert gs.keep_groups(n, 0.4).tolist() == [0, 6]  # the 2nd largest (0.3) is the floor
    assert gs.keep_groups(n, 10.0, floor=0.5).tolist() == [0, 2, 5, 6, 8]  # k = 5: norm >= 0.04
    assert gs.keep_groups(n, 0.0).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # tau 0: exactly the non-zero
    assert gs.keep_groups(np.zeros(10), 0.1).tolist() == [0, 1]  # all zero: the first k
    few = np.array([0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # 1 non-zero < k = 2
    assert gs.keep_groups(few, 0.1).tolist() == [0, 1, 3]
    assert gs.keep_groups(np.array([0.3, 0.3, 0.1]), 1.0).tolist() == [0, 1]  # k = max(1, 0): ties survive
    assert gs.keep_top(n, 3).tolist() == [0, 2, 6]
    assert gs.keep_top(few, 2).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="tau"):
        gs.keep_groups(n, -1.0)
    with pytest.raises(ValueError, match="norms"):
        gs.keep_groups(np.array([]), 0.1)
    with pytest.raises(ValueError, match="count"):
        gs.keep_top(n, 11)


# -- threshold search -----------------------------------------------------------------------------

def test_threshold_search_walk_by_hand():
    # ratio 1 - 10 tau, target 0.77: up by 0.01 to 0.03 (0.70, crossed: step 0.005), back to 0.025,
    # 0.02 (crossed: 0.0025), 0.0225, 0.025 (crossed: 0.00125), 0.02375, 0.0225 (crossed),
    # 0.023125 (crossed), 0.0228125 (crossed), 0.02296875: ratio 0.7703125, within 0.001
    r = gs.threshold_search(lambda t: 1 - 10 * t, 0.77, 0.0)
    expect = [0.0, 0.01, 0.02, 0.03, 0.025, 0.02, 0.0225, 0.025, 0.02375, 0.0225, 0.023125, 0.0228125,
              0.02296875]
    np.testing.assert_allclose([t for t, _ in r.evaluations], expect, atol=1e-12)
    assert r.converged and r.tau == pytest.approx(0.02296875) and r.ratio == pytest.approx(0.7703125)


def test_threshold_search_on_a_step_function():
    calls = []

    def steps(tau):  # remaining MACs fall in steps at tau = 0.012, 0.022 and 0.04
        calls.append(tau)
        return 1.0 - 0.25 * sum(tau >= c for c in (0.012, 0.022, 0.04))

    reach = gs.threshold_search(steps, 0.5, 0.005, tol=0.01)  # the 0.5 plateau is reachable
    assert reach.converged and reach.ratio == 0.5 and 0.022 <= reach.tau < 0.04
    assert [t for t, _ in reach.evaluations] == pytest.approx([0.005, 0.015, 0.025])
    # target 0.625 lies between plateaus 0.75 and 0.5 (equally far): the walk oscillates for all
    # 100 iterations; the best evaluated tau is the first one with ratio 0.5 (tie -> below target)
    calls.clear()
    miss = gs.threshold_search(steps, 0.625, 0.005, tol=0.001)
    assert not miss.converged and len(miss.evaluations) == 100
    assert len(calls) == len({t for t, _ in miss.evaluations}) < 100  # repeated taus are not re-evaluated
    first_half = next(t for t, v in miss.evaluations if v == 0.5)
    assert miss.ratio == 0.5 and miss.tau == first_half and (miss.tau, 0.5) in miss.evaluations
    # asymmetric plateaus: 0.55 is closer to 0.6 than 0.75, whichever comes first
    miss2 = gs.threshold_search(lambda t: 0.75 if t < 0.0123 else 0.55, 0.6, 0.0)
    assert miss2.ratio == 0.55 and miss2.tau >= 0.0123
    with pytest.raises(ValueError, match="target"):
        gs.threshold_search(steps, 0.0, 0.005)
    with pytest.raises(ValueError, match="ratio_of"):
        gs.threshold_search(lambda t: math.nan, 0.5, 0.005)


# -- SVD initialisation, merging, decomposition -------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 2, 3, 3), (6, 1, 2, 1)])  # d = 18 >= n = 4; d = 2 < n = 6
def test_svd_init_reproduces_the_weight(shape):
    w = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    n, d = shape[0], int(np.prod(shape[1:]))
    r = min(n, d)
    w0, a0 = gs.svd_init(w)
    assert w0.shape == (r, *shape[1:]) and a0.shape == (r, n) and w0.dtype == np.float32
    np.testing.assert_allclose(gs.merge(w0, a0)[0], w, atol=1e-5)
    sv = np.linalg.svd(w.reshape(n, -1).astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(gs.group_norms(a0, "rows"), sv, rtol=1e-5)
    f = w0.reshape(r, -1).astype(np.float64)
    np.testing.assert_allclose(f @ f.T, np.eye(r), atol=1e-5)  # orthonormal filters


def test_merge_and_decompose_are_exact_on_a_conv():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 5))
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    A, ba = rng.normal(size=(4, 6)), rng.normal(size=6)
    wm, bm = gs.merge(w, A, b, ba)
    assert wm.shape == (6, 3, 3, 3)
    np.testing.assert_allclose(conv(x, wm, bm), mix(conv(x, w, b), A, ba), atol=1e-10)
    np.testing.assert_allclose(gs.merge(w, A, b)[1], A.T @ b)
    np.testing.assert_array_equal(gs.merge(w, A, a_bias=ba)[1], ba)
    assert gs.merge(w, A)[1] is None
    # rows 1 and 3 of A are zero: keeping rows [0, 2] changes nothing
    A[[1, 3]] = 0.0
    wd, ad, bd = gs.decompose(w, A, [0, 2], b)
    assert wd.shape == (2, 3, 3, 3) and ad.shape == (2, 6) and bd.tolist() == b[[0, 2]].tolist()
    np.testing.assert_allclose(mix(conv(x, wd, bd), ad, ba), mix(conv(x, w, b), A, ba), atol=1e-10)
    # columns: the block's outputs 1 and 4 are dropped
    ap, bp = gs.prune_columns(A, np.array([0, 2, 3, 5]), ba)
    np.testing.assert_array_equal(ap, A[:, [0, 2, 3, 5]])
    np.testing.assert_array_equal(bp, ba[[0, 2, 3, 5]])
    assert gs.prune_columns(A, [1])[1] is None
    with pytest.raises(ValueError, match="rows"):
        gs.decompose(w, A, [0, 0])
    with pytest.raises(ValueError, match="cols"):
        gs.prune_columns(A, [6])
    with pytest.raises(ValueError, match="A"):
        gs.merge(w, A[:3])
    with pytest.raises(ValueError, match="a_bias"):
        gs.merge(w, A, a_bias=ba[:2])


def test_1x1_layout_round_trip():
    A = np.arange(6, dtype=np.float64).reshape(2, 3)  # n = 2 conv outputs, m = 3 block outputs
    P = gs.to_1x1(A)
    assert P.shape == (3, 2, 1, 1) and P.dtype == np.float32 and P[2, 1, 0, 0] == A[1, 2]
    np.testing.assert_array_equal(gs.from_1x1(P), A)
    with pytest.raises(ValueError, match="P"):
        gs.from_1x1(np.ones((3, 2, 3, 3)))
