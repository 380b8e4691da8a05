"""DCFF criteria: distances, similarity distributions, KL importance, selection, fusion, schedule."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from compress_core.criteria import dcff

LN2 = math.log(2.0)
# three 1-D filters at 0, 1 and 3: D01 = 1, D12 = 2, D02 = 3
LINE = np.array([0.0, 1.0, 3.0]).reshape(3, 1, 1, 1)


def kaiming(n=64, c=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, math.sqrt(2.0 / (c * k * k)), (n, c, k, k))


def naive_importance(weight, t):
    """The released code's n^3 formula (eps = 0), from scratch: sum_k mean_i p_j(i) log(p_j(i) / p_k(i))."""
    f = weight.reshape(len(weight), -1).astype(np.float64)
    d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(axis=2))
    e = np.exp(-t * d)
    p = e / e.sum(axis=1, keepdims=True)
    kl = p[:, None, :] * np.log(p[:, None, :] / p[None, :, :])  # [j, k, i]
    return kl.mean(axis=2).sum(axis=1)


def test_three_filters_on_a_line_by_hand():
    assert np.array_equal(dcff.distances(LINE), [[0, 1, 3], [1, 0, 2], [3, 2, 0]])
    # t = ln 2 makes exp(-t D) = 2^-D: row 0 is (1, 1/2, 1/8) / (13/8), row 1 (1/2, 1, 1/4) / (7/4),
    # row 2 (1/8, 1/4, 1) / (11/8)
    p = np.array([[8, 4, 1], [2, 4, 1], [1, 2, 8]]) / np.array([[13], [7], [11]])
    np.testing.assert_allclose(np.exp(dcff.log_similarity(LINE, LN2)), p, rtol=1e-14)
    # KL(p_j || p_k) = ln2 * sum_i p_j(i) (D_ki - D_ji) + ln(Z_k / Z_j), e.g. KL(p0 || p1) = 3/13 ln2 + ln(14/13)
    s = np.array([(28 / 13) * LN2 + math.log(14 / 13 * 11 / 13),
                  (13 / 7) * LN2 + math.log(13 / 14 * 11 / 14),
                  (29 / 11) * LN2 + math.log(13 / 11 * 14 / 11)]) / 3  # mean over k (KL(p_j||p_j) = 0)
    np.testing.assert_allclose(dcff.dcff_importance(LINE, LN2), s, rtol=1e-13)
    keep = dcff.select(s, 2)
    assert keep.tolist() == [0, 2]  # the middle filter is the most similar to the others
    # fused filters: p0 . (0, 1, 3) = 7/13 and p2 . (0, 1, 3) = 26/11
    fused = dcff.dcff_fuse(LINE, keep, LN2)
    assert fused.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(fused.ravel(), [7 / 13, 26 / 11], rtol=1e-14)
    np.testing.assert_allclose(dcff.fusion_matrix(LINE, keep, LN2), p[[0, 2]], rtol=1e-14)


@pytest.mark.parametrize("t", [0.3, 1.0, 5.0])
def test_matches_the_naive_n3_formula_on_the_right_axis(t):
    w = kaiming(n=40, c=8)
    ours = dcff.dcff_importance(w, t)
    want = naive_importance(w, t)
    np.testing.assert_allclose(ours, want, rtol=1e-10, atol=0)
    np.testing.assert_allclose(dcff.dcff_importance_reference(w, t, eps=0.0), want, rtol=1e-10)
    # MMRazor's O(n^2) rewrite averages log p over the other axis (row i's mean over its columns)
    log_p = dcff.log_similarity(w, t)
    p = np.exp(log_p)
    mmrazor = (p * log_p).sum(axis=1) - p @ log_p.mean(axis=1)
    # (it differs by sum_i p_j(i) (log Z_i - mean_k log Z_k): far above the 1e-10 agreement above)
    assert np.max(np.abs(mmrazor - ours)) > 1e-4 * np.max(np.abs(ours))


def test_large_temperature_is_finite_and_ranks_by_sum_of_distances():
    w = kaiming(n=64)
    t = 1e4
    s = dcff.dcff_importance(w, t)
    assert np.isfinite(s).all()
    d = dcff.distances(w)
    # every exp(-t D) with D > 0.5 underflows: p_j is one-hot and log p_j(i) = -t D_ji, so
    # s_j = log p_j(j) - mean_k log p_k(j) = (t/n) sum_k D_kj exactly
    assert d[~np.eye(64, dtype=bool)].min() > 0.5
    np.testing.assert_allclose(s, t * d.mean(axis=0), rtol=1e-12)
    assert np.array_equal(dcff.select(s, 41), np.sort(np.argsort(-d.sum(axis=0), kind="stable")[:41]))
    # the released code's formula gives 0 log 0 = NaN there
    assert np.isnan(dcff.dcff_importance_reference(w, t)).all()
    # fusion is the identity on the kept filters
    keep = dcff.select(s, 10)
    assert np.array_equal(dcff.dcff_fuse(w, keep, t), w[keep])


def test_log_similarity_rows_are_log_distributions_at_every_temperature():
    w = kaiming(n=32, c=4)
    for t in (1e-3, 1.0, 50.0, 1e4, 1e8):
        log_p = dcff.log_similarity(w, t)
        assert np.isfinite(log_p).all()
        np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-14)
        assert np.all(np.argmax(log_p, axis=1) == np.arange(32))  # its own filter is the most likely


def test_distances_are_exact_for_offset_and_near_duplicate_filters():
    rng = np.random.default_rng(1)
    f = 1e3 + rng.normal(size=(50, 72))          # a large common component
    f[1] = f[0] + 1e-7 * rng.normal(size=72)     # a near duplicate: the Gram formula alone loses ~14 digits
    f[7] = f[3]                                  # an exact duplicate
    want = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(axis=2))
    got = dcff.distances(f.astype(np.float64))
    assert np.array_equal(got, got.T) and np.all(np.diag(got) == 0) and got[3, 7] == 0
    off = ~np.eye(50, dtype=bool) & (want > 0)
    assert np.max(np.abs(got[off] - want[off]) / want[off]) < 1e-12
    # float32 input is widened, not computed in float32
    f32 = rng.normal(size=(20, 3, 3, 3)).astype(np.float32)
    f64 = f32.reshape(20, -1).astype(np.float64)
    want = np.sqrt(((f64[:, None] - f64[None]) ** 2).sum(axis=2))
    np.testing.assert_allclose(dcff.distances(f32), want, rtol=1e-13, atol=1e-15)


def test_importance_memory_is_quadratic_not_cubic():
    w = kaiming(n=512, c=2, k=2)
    tracemalloc.start()
    dcff.dcff_importance(w, 1.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # [n, n] float64 is 2 MiB (a handful of them are alive); the n^3 tensor would be 1 GiB
    assert peak < 8 * 512 * 512 * 8


def test_temperature_schedule():
    assert dcff.temperature(0, 30) == 1.0 and dcff.temperature(30, 30) == 1e4
    assert dcff.temperature(7, 7, t_start=0.1, t_end=0.3) == 0.3
    ts = [dcff.temperature(e, 30) for e in range(31)]
    assert all(a < b for a, b in itertools.pairwise(ts))
    # the released code's sigmoid form, per epoch: 1, 4622, 7616, 9052, 9640, 9866
    E, ts_, te = 30, 1.0, 1e4
    A = 2 * (te - ts_) * (1 + math.exp(-E)) / (1 - math.exp(-E))
    for e in range(E + 1):
        assert dcff.temperature(e, E) == pytest.approx(A / (1 + math.exp(-e)) + ts_ - A / 2, rel=1e-12)
    assert [round(t) for t in ts[:6]] == [1, 4622, 7616, 9052, 9640, 9866]
    # a smaller k spreads the schedule over the run
    assert dcff.temperature(15, 30, k=0.1) == pytest.approx(1 + 9999 * math.tanh(0.75) / math.tanh(1.5))
    for kw in ({"step": 1, "total": 0}, {"step": -1, "total": 3}, {"step": 4, "total": 3},
               {"step": 1, "total": 3, "t_start": 0}, {"step": 1, "total": 3, "k": 0},
               {"step": 1, "total": 3, "t_end": float("nan")}):
        with pytest.raises(ValueError):
            dcff.temperature(**kw)


def test_select_and_kept_count():
    assert dcff.select([1.0, 2.0, 2.0, 0.0, 2.0], 2).tolist() == [1, 2]  # ties: lower index first
    assert dcff.select([3.0, 1.0, 2.0], 3).tolist() == [0, 1, 2]
    for m in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="m must be"):
            dcff.select([3.0, 1.0, 2.0], m)
    with pytest.raises(ValueError, match="scores"):
        dcff.select([1.0, np.nan], 1)
    assert dcff.kept_count(64, 0.35) == 41 and dcff.kept_count(64, 0.0) == 64
    assert dcff.kept_count(20, 0.9) == 2      # 20 * (1 - 0.9) is 1.9999999999999996 in floating point
    assert dcff.kept_count(10, 0.99) == 1     # at least one filter
    for rate in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            dcff.kept_count(10, rate)
    with pytest.raises(ValueError, match="n must be"):
        dcff.kept_count(0, 0.5)


def test_bad_input():
    w = kaiming(n=8, c=2)
    for t in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature.*must be.*> 0"):
            dcff.dcff_importance(w, t)
        with pytest.raises(ValueError, match="temperature"):
            dcff.log_similarity(w, t)
        with pytest.raises(ValueError, match="temperature"):
            dcff.dcff_fuse(w, [0, 1], t)
    bad = w.copy()
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="weight has 1 NaN"):
        dcff.dcff_importance(bad, 1.0)
    for shape in ((8, 2, 3), (0, 2, 3, 3)):
        with pytest.raises(ValueError, match="weight must be"):
            dcff.distances(np.zeros(shape))
    for keep in ([0, 0], [8], [], [0.5]):
        with pytest.raises(ValueError, match="keep"):
            dcff.fusion_matrix(w, keep, 1.0)


def test_identical_filters_tie_and_the_lowest_indices_are_kept():
    w = np.tile(kaiming(n=1, c=3), (6, 1, 1, 1))
    s = dcff.dcff_importance(w, 2.0)
    assert np.all(s == s[0]) and abs(s[0]) < 1e-12  # every p_j is uniform: all KL are 0
    assert dcff.select(s, 3).tolist() == [0, 1, 2]
    np.testing.assert_allclose(dcff.dcff_fuse(w, [4], 2.0)[0], w[0], rtol=1e-14)
