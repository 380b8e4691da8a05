"""CDC channel scorers: hand-derived golden values, streaming == batch, validation."""

import numpy as np
import pytest

from compress_core.criteria.discriminant import (
    ClassStats,
    abs_snr_scores,
    di_scores,
    fdr_scores,
    gsd_scores,
    t_test_scores,
)
from compress_core.errors import UserError

BATCH = {"gsd": gsd_scores, "abs_snr": abs_snr_scores, "fdr": fdr_scores, "t_test": t_test_scores}


def naive(name, features, labels, e):
    """Direct re-implementation from the formulas (masks + np.var), per channel."""
    x = np.asarray(features, np.float64)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    out = []
    for k in range(x.shape[1]):
        per_class = []
        for c in np.unique(labels):
            p, q = x[labels == c, k].ravel(), x[labels != c, k].ravel()
            mp, mq, vp, vq = p.mean(), q.mean(), p.var(), q.var()
            n_p, n_q = np.sum(labels == c), np.sum(labels != c)
            per_class.append({
                "gsd": 0.5 * (vp / (vq + e) + vq / (vp + e)) + 0.5 * (mp - mq) ** 2 / (vp + vq + e) - 1,
                "abs_snr": abs(mp - mq) / (np.sqrt(vp) + np.sqrt(vq) + e),
                "fdr": (mp - mq) ** 2 / (vp + vq + e),
                "t_test": abs(mp - mq) / np.sqrt(vp / n_p + vq / n_q + e),
            }[name])
        out.append(np.mean(per_class))
    return np.array(out)


# --- hand-derived cases -------------------------------------------------------------
# Two classes, [N, 1]: class 0 = {1, 3}, class 1 = {5, 5, 9, 9}.
# c=0: P={1,3}: mp=2, vp=((1-2)^2+(3-2)^2)/2=1; Q={5,5,9,9}: mq=7, vq=(4+4+4+4)/4=4;
#      Np=2, Nq=4.  (c=1 swaps P and Q, which every statistic below is symmetric in:
#      for t_test vp/Np + vq/Nq = 1/2 + 4/4 either way.)  With ridge e = 0:
#   gsd     = 0.5*(1/4 + 4/1) + 0.5*25/5 - 1 = 2.125 + 2.5 - 1 = 3.625
#   abs_snr = 5/(1+2) = 5/3;  fdr = 25/5 = 5;  t_test = 5/sqrt(1/2 + 1) = 5/sqrt(1.5)
X2 = np.array([1, 3, 5, 5, 9, 9], np.float32)[:, None]
Y2 = np.array([0, 0, 1, 1, 1, 1])
GOLD2 = {"gsd": 3.625, "abs_snr": 5 / 3, "fdr": 5.0, "t_test": 5 / np.sqrt(1.5)}


@pytest.mark.parametrize("name", list(BATCH))
def test_two_class_hand_values(name):
    np.testing.assert_allclose(BATCH[name](X2, Y2, ridge=0.0), [GOLD2[name]], rtol=1e-12)
    # with a ridge e, e.g. fdr = 25/(5+e)
    e = 0.05
    np.testing.assert_allclose(BATCH[name](X2, Y2, ridge=e), naive(name, X2, Y2, e), rtol=1e-12)


def test_two_class_fdr_ridge_by_hand():
    np.testing.assert_allclose(fdr_scores(X2, Y2, ridge=0.5), [25 / 5.5], rtol=1e-12)


def test_three_class_mean_over_classes():
    # class 0 = {0,2} (m 1, v 1), class 1 = {4,6} (m 5, v 1), class 2 = {8,10} (m 9, v 1).
    # c=0: Q={4,6,8,10}: mq=7, vq=(9+1+1+9)/4=5 -> fdr=36/6=6, gsd=0.5*(1/5+5)+0.5*6-1=4.6
    # c=1: Q={0,2,8,10}: mq=5, vq=(25+9+9+25)/4=17 -> fdr=0, gsd=0.5*(1/17+17)-1=128/17
    # c=2: mirror of c=0.  Unweighted mean over classes:
    x = np.array([0, 2, 4, 6, 8, 10.0])[:, None]
    y = np.array([0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(fdr_scores(x, y, ridge=0), [4.0], rtol=1e-12)
    np.testing.assert_allclose(gsd_scores(x, y, ridge=0), [(4.6 + 128 / 17 + 4.6) / 3], rtol=1e-12)
    # abs_snr c=0: 6/(1+sqrt 5); t_test c=0: 6/sqrt(1/2 + 5/4); both 0 for c=1
    np.testing.assert_allclose(abs_snr_scores(x, y, ridge=0), [2 / 3 * 6 / (1 + np.sqrt(5))], rtol=1e-12)
    np.testing.assert_allclose(t_test_scores(x, y, ridge=0), [2 / 3 * 6 / np.sqrt(1.75)], rtol=1e-12)


def test_4d_pools_positions_and_t_test_counts_images():
    # [N=3, C=1, H=1, W=2]: class 0 image [1, 3]; class 1 images [5, 9], [5, 9].
    # Pooled observations equal X2/Y2 (P={1,3}, Q={5,9,5,9}) but with Np=1, Nq=2 images:
    # t_test = 5/sqrt(1/1 + 4/2) = 5/sqrt(3) for both classes, not 5/sqrt(1.5).
    x4 = np.array([[1, 3], [5, 9], [5, 9]], np.float64).reshape(3, 1, 1, 2)
    y4 = np.array([0, 1, 1])
    for name in ("gsd", "abs_snr", "fdr"):
        np.testing.assert_allclose(BATCH[name](x4, y4, ridge=0), [GOLD2[name]], rtol=1e-12)
    np.testing.assert_allclose(t_test_scores(x4, y4, ridge=0), [5 / np.sqrt(3)], rtol=1e-12)


def test_4d_equals_positions_as_observations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3, 4, 5)) + rng.integers(0, 4, size=(20, 1, 1, 1))
    y = rng.integers(0, 4, size=20)
    # every (image, position) as its own [N*HW, C] row with the image's label
    flat = x.reshape(20, 3, 20).transpose(0, 2, 1).reshape(-1, 3)
    for name in ("gsd", "abs_snr", "fdr"):
        np.testing.assert_allclose(BATCH[name](x, y), BATCH[name](flat, np.repeat(y, 20)), rtol=1e-10)


def test_absent_class_is_skipped():
    # labels {0, 2} of 3 classes: class 1 has no image and is left out of the mean
    y_gap = np.where(Y2 == 1, 2, 0)
    for name, fn in BATCH.items():
        np.testing.assert_allclose(fn(X2, y_gap, ridge=0), [GOLD2[name]], rtol=1e-12)
    stats = ClassStats(5, 1).update(X2, y_gap)
    np.testing.assert_allclose(stats.scores("fdr", ridge=0), [5.0], rtol=1e-12)


# --- random data: formulas, streaming, stability -----------------------------------
def random_batches(seed, sizes, k=5, c=3, offset=0.0):
    rng = np.random.default_rng(seed)
    shift = rng.normal(size=(k, c, 1, 1))
    out = []
    for n in sizes:
        y = rng.integers(0, k, size=n)
        x = offset + shift[y] + rng.gamma(2.0, size=(n, c, 3, 2)) * (1 + np.arange(c))[:, None, None]
        out.append((x.astype(np.float32), y))
    return out


@pytest.mark.parametrize("name", list(BATCH))
def test_matches_naive_formula(name):
    (x, y), = random_batches(1, [40])
    np.testing.assert_allclose(BATCH[name](x, y), naive(name, x, y, 0.05 if name == "gsd" else 1e-4),
                               rtol=1e-10)


@pytest.mark.parametrize("name", list(BATCH))
def test_streaming_equals_batch_and_split_invariant(name):
    batches = random_batches(2, [7, 1, 30, 12, 3])  # tiny batches miss classes
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    stats = ClassStats(5, 3)
    for xb, yb in batches:
        stats.update(xb, yb)
    want = BATCH[name](x, y)
    np.testing.assert_allclose(stats.scores(name), want, rtol=1e-10)
    other = ClassStats(5, 3)
    for idx in np.array_split(np.random.default_rng(3).permutation(len(y)), 4):
        other.update(x[idx], y[idx])
    np.testing.assert_allclose(other.scores(name), want, rtol=1e-10)


def test_merged_accumulators_of_parts_equal_one_pass():
    batches = random_batches(5, [7, 1, 30, 12, 3, 9])
    whole, parts = ClassStats(5, 3), [ClassStats(5, 3), ClassStats(5, 3)]
    for i, (xb, yb) in enumerate(batches):
        whole.update(xb, yb)
        parts[i % 2].update(xb, yb)  # a data-parallel scoring pass: every other batch per process
    merged = ClassStats(5, 3)
    for p in parts:
        merged.merge(*p.moments())
    np.testing.assert_array_equal(merged.n_img, whole.n_img)
    np.testing.assert_array_equal(merged.n_obs, whole.n_obs)
    for name in BATCH:
        np.testing.assert_allclose(merged.scores(name), whole.scores(name), rtol=1e-12)
    with pytest.raises(UserError, match="merge"):
        merged.merge(*ClassStats(4, 3).moments())


def test_large_offset_is_stable():
    # activations around 1e6 with unit spread: raw E[x^2]-E[x]^2 would lose ~all digits
    batches = random_batches(4, [25, 25], offset=1e6)
    x = np.concatenate([b[0] for b in batches]).astype(np.float64) + 1e6
    y = np.concatenate([b[1] for b in batches])
    stats = ClassStats(5, 3)
    for xb, yb in batches:
        stats.update(xb.astype(np.float64) + 1e6, yb)
    for name in BATCH:
        np.testing.assert_allclose(stats.scores(name), naive(name, x, y, 0.05 if name == "gsd" else 1e-4),
                                   rtol=1e-8)


def test_chunked_update_equals_single_chunk(monkeypatch):
    import compress_core.criteria.discriminant as mod
    (x, y), = random_batches(5, [50])
    want = gsd_scores(x, y)
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 7)  # forces one image per chunk
    np.testing.assert_allclose(gsd_scores(x, y), want, rtol=1e-10)


def test_discriminative_channel_beats_noise():
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(4), 25)
    signal = 3.0 * y[:, None, None] + 0.1 * rng.normal(size=(100, 4, 4))
    noise = rng.normal(size=(100, 4, 4))
    x = np.stack([noise, signal], axis=1)  # channel 1 is the discriminative one
    for fn in [*BATCH.values(), di_scores]:
        s = fn(x, y)
        assert s.shape == (2,) and s[1] > s[0], fn.__name__


# --- DI ----------------------------------------------------------------------------
def test_di_hand_value():
    # X2/Y2: m = 32/6 = 16/3; S_B = 2*(2-16/3)^2 + 4*(7-16/3)^2 = 200/9 + 100/9 = 100/3;
    # S_W = 2*1 + 4*4 = 18; Sbar = 18 + 100/3 = 154/3; DI = (100/3) / (154/3 + rho)
    rho = 0.5
    np.testing.assert_allclose(di_scores(X2, Y2, rho=rho), [(100 / 3) / (154 / 3 + rho)], rtol=1e-12)


def test_di_matches_matrix_formula():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=30)
    x = rng.normal(size=(30, 2, 2, 2)) + y[:, None, None, None] * rng.normal(size=(1, 2, 2, 2))
    rho = 1e-2
    want = []
    for k in range(2):
        f = x[:, k].reshape(30, -1)
        m = f.mean(0)
        s_bar = (f - m).T @ (f - m)
        s_b = sum(np.sum(y == c) * np.outer(f[y == c].mean(0) - m, f[y == c].mean(0) - m) for c in range(3))
        want.append(np.trace(np.linalg.inv(s_bar + rho * np.eye(4)) @ s_b))
    np.testing.assert_allclose(di_scores(x, y, rho=rho), want, rtol=1e-10)


# --- validation ----------------------------------------------------------------------
@pytest.mark.parametrize("features, labels, word", [
    (np.zeros((4, 2, 3)), np.array([0, 0, 1, 1]), "features"),        # rank 3
    (np.zeros((4,)), np.array([0, 0, 1, 1]), "features"),              # rank 1
    (np.zeros((0, 2)), np.zeros(0, int), "features"),                  # empty
    (np.array([[0.0], [np.nan], [1], [2]]), np.array([0, 0, 1, 1]), "features"),
    (np.array([[0.0], [np.inf], [1], [2]]), np.array([0, 0, 1, 1]), "features"),
    (np.zeros((4, 2)), np.array([0, 1, 1]), "labels"),                 # length mismatch
    (np.zeros((4, 2)), np.array([0, -1, 1, 1]), "labels"),             # negative
    (np.zeros((4, 2)), np.array([0.0, 0, 1, 1]), "labels"),            # not integer
    (np.zeros((4, 2)), np.array([1, 1, 1, 1]), "labels"),              # one class
])
def test_bad_input_names_argument(features, labels, word):
    for fn in [*BATCH.values(), di_scores]:
        with pytest.raises(UserError, match=word):
            fn(features, labels)


def test_bad_ridge_and_accumulator_input():
    with pytest.raises(UserError, match="ridge"):
        gsd_scores(X2, Y2, ridge=-1.0)
    with pytest.raises(UserError, match="rho"):
        di_scores(X2, Y2, rho=0.0)
    stats = ClassStats(2, 1)
    with pytest.raises(UserError, match="labels"):
        stats.update(X2, Y2 + 1)  # label 2 outside [0, 2)
    with pytest.raises(UserError, match="features"):
        stats.update(np.zeros((6, 2)), Y2)  # 2 channels, expected 1
    with pytest.raises(UserError, match="gsd, abs_snr, fdr, t_test"):
        stats.update(X2, Y2).scores("symdiv")
    with pytest.raises(UserError, match="num_classes"):
        ClassStats(0, 1)
    np.testing.assert_allclose(stats.scores("gsd", ridge=0), [3.625], rtol=1e-12)
    np.testing.assert_allclose(gsd_scores(X2, Y2[:, None], ridge=0), [3.625])  # labels [N, 1]


def test_update_sums_equals_update_on_full_maps():
    from compress_core.criteria.discriminant import spatial_sums

    rng = np.random.default_rng(11)
    x = rng.normal(3.0, 2.0, size=(40, 5, 4, 3))
    y = rng.integers(0, 3, 40)
    full = ClassStats(3, 5).update(x[:25], y[:25]).update(x[25:], y[25:])
    summed = ClassStats(3, 5)
    for sl in (slice(0, 10), slice(10, 40)):
        summed.update_sums(*spatial_sums(x[sl]), y[sl])
    for name in ("gsd", "abs_snr", "fdr", "t_test"):
        np.testing.assert_allclose(summed.scores(name), full.scores(name), rtol=1e-10)
    v = rng.normal(size=(12, 4))  # vectors: one position per image
    np.testing.assert_allclose(ClassStats(3, 4).update_sums(v, np.abs(v), 1, y[:12]).m2,
                               ClassStats(3, 4).update(v, y[:12]).m2, rtol=1e-12)
    with pytest.raises(UserError, match="count"):
        summed.update_sums(*spatial_sums(x[:2])[:2], 0, y[:2])
    with pytest.raises(UserError, match="must both be"):
        summed.update_sums(np.ones((2, 5)), np.ones((2, 4)), 12, y[:2])


def test_update_sums_hand_case_and_float32_inputs():
    # one class, one channel; image A = 1, 2, 3, 4 (sum 10, norm sqrt 30), image B = 5, 5, 5, 5
    # (sum 20, norm 10): 8 observations, mean 30 / 8 = 3.75, m2 = 130 - 30 * 3.75 = 17.5
    # (by deviations: 7.5625 + 3.0625 + 0.5625 + 0.0625 + 4 * 1.5625 = 17.5)
    st = ClassStats(1, 1).update_sums([[10.0], [20.0]], [[np.sqrt(30.0)], [10.0]], 4, [0, 0])
    assert st.n_img[0] == 2 and st.n_obs[0] == 8 and st.mean[0, 0] == 3.75
    assert st.m2[0, 0] == pytest.approx(17.5, rel=1e-14)
    # float32 reductions (as a backend computes them) of ReLU maps offset by 3: every score within
    # 1e-5 of the exact float64 statistics of the maps
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(3.0, 1.0, (64, 6, 16, 16)) + rng.normal(0, 0.3, (64, 6, 1, 1)), 0).astype(np.float32)
    y = rng.integers(0, 4, 64)
    flat = x.reshape(64, 6, -1)
    approx = ClassStats(4, 6).update_sums(flat.sum(2), np.sqrt((flat * flat).sum(2)), 256, y)
    exact = ClassStats(4, 6).update(x, y)
    np.testing.assert_allclose(approx.m2, exact.m2, rtol=1e-5)
    for name in ("gsd", "abs_snr", "fdr", "t_test"):
        np.testing.assert_allclose(approx.scores(name), exact.scores(name), rtol=1e-5)
