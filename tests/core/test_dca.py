"""DCA subspace: hand case, eigen-equation, normalisation, streaming == batch, alignment,
rank-deficient and constant features."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from compress_core.criteria.dca import (
    ScatterStats,
    align_subspace,
    dca_fit,
    dca_subspace,
)
from compress_core.errors import UserError


def scatters(x, y):
    """Textbook S_W, S_B by loops over classes."""
    x = x.reshape(len(x), -1).astype(np.float64)
    mu = x.mean(0)
    s_w = np.zeros((x.shape[1],) * 2)
    s_b = np.zeros_like(s_w)
    for c in np.unique(y):
        xc = x[y == c]
        s_w += (xc - xc.mean(0)).T @ (xc - xc.mean(0))
        s_b += len(xc) * np.outer(xc.mean(0) - mu, xc.mean(0) - mu)
    return s_w, s_b


def data(seed=0, n=60, d=6, k=3, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    means = 2 * rng.normal(size=(k, d))
    x = offset + means[y] + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return x, y


def test_one_dim_hand_case():
    # x = {1, 3 | 5, 5, 9, 9}: S_W = 2*1 + 4*4 = 18, S_B = 100/3 (see test_discriminant),
    # rho = 0.02*18 = 0.36, rho' = 0.036, lam = (18 + 100/3 + 0.396)/(18 + 0.36),
    # W^T (S_W + rho) W = 1  ->  W = 1/sqrt(18.36) (positive by the sign convention).
    x = np.array([1, 3, 5, 5, 9, 9.0])[:, None]
    y = np.array([0, 0, 1, 1, 1, 1])
    res = dca_fit(x, y)
    assert res.ridge == pytest.approx(0.36) and res.ridge_prime == pytest.approx(0.036)
    np.testing.assert_allclose(res.eigenvalues, [(18 + 100 / 3 + 0.396) / 18.36], rtol=1e-12)
    np.testing.assert_allclose(res.W, [[1 / np.sqrt(18.36)]], rtol=1e-12)  # dim = min(2 classes, D=1)


def test_generalized_eigen_equation_and_normalisation():
    x, y = data()
    res = dca_fit(x, y)
    s_w, s_b = scatters(x, y)
    w, lam, rho, rho_p = res
    assert w.shape == (6, 3) and lam.shape == (3,)  # dim = number of classes
    assert rho == pytest.approx(0.02 * np.linalg.eigvalsh(s_w).max(), rel=1e-10)
    assert rho_p == pytest.approx(0.1 * rho, rel=1e-12)
    a = s_w + s_b + (rho + rho_p) * np.eye(6)
    b = s_w + rho * np.eye(6)
    np.testing.assert_allclose(a @ w - b @ w * lam, 0, atol=1e-8 * np.abs(a).max())
    np.testing.assert_allclose(w.T @ b @ w, np.eye(3), atol=1e-10)
    assert np.all(np.diff(lam) < 0) and np.all(lam > 1)
    # they are the top eigenvalues of the full problem
    full = np.sort(np.linalg.eigvals(np.linalg.solve(b, a)).real)[::-1]
    np.testing.assert_allclose(lam, full[:3], rtol=1e-10)


def test_sign_convention_and_dim():
    x, y = data(1)
    w = dca_subspace(x, y, dim=2, ridge=0.3, ridge_prime=0.0)  # 3 classes: at most 3 components exist
    assert w.shape == (6, 2)
    peak = np.abs(w).argmax(0)
    assert np.all(w[peak, np.arange(2)] > 0)
    # flattening: [N, 2, 3] features give the same basis as [N, 6]
    np.testing.assert_allclose(dca_subspace(x.reshape(-1, 2, 3), y, dim=2, ridge=0.3, ridge_prime=0.0), w)


def test_separable_two_class_direction_is_mean_difference():
    rng = np.random.default_rng(2)
    u = rng.normal(size=10)
    u /= np.linalg.norm(u)
    y = np.repeat([0, 1], 1000)
    x = rng.normal(size=(2000, 10)) + np.where(y[:, None] == 1, 4.0, -4.0) * u
    res = dca_fit(x, y)
    w = res.W
    assert w.shape == (10, 2)
    first = w[:, 0] / np.linalg.norm(w[:, 0])
    diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    # isotropic noise: the doubly ridged LDA direction (S_W + rho I)^-1 diff ~ diff
    assert abs(first @ diff) / np.linalg.norm(diff) > 0.99
    s_w, _ = scatters(x, y)
    fisher = np.linalg.solve(s_w + res.ridge * np.eye(10), diff)
    # not exact: the rho' I term tilts it slightly when S_W is not isotropic
    assert abs(first @ fisher) / np.linalg.norm(fisher) > 1 - 1e-6
    # projections separate the classes
    z = x @ w[:, 0]
    assert min(z[y == 0].max(), z[y == 1].max()) < max(z[y == 0].min(), z[y == 1].min())


def test_streaming_equals_batch():
    x, y = data(3, n=200, d=8, k=4, offset=1e3)  # offset exercises the shifted sums
    stats = ScatterStats(8)
    for idx in np.array_split(np.arange(200), [3, 50, 51, 140]):  # includes a 1-row batch
        stats.update(x[idx], y[idx])
    want = dca_fit(x, y)
    got = stats.fit()
    np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-9)
    np.testing.assert_allclose(got.W, want.W, atol=1e-9 * np.abs(want.W).max())
    np.testing.assert_allclose(stats.subspace(), want.W, atol=1e-9 * np.abs(want.W).max())
    s_w, s_b = scatters(x, y)
    got_w, got_b = stats.scatter()
    np.testing.assert_allclose(got_w, s_w, atol=1e-9 * np.abs(s_w).max())
    np.testing.assert_allclose(got_b, s_b, atol=1e-9 * np.abs(s_b).max())


def test_streaming_classes_appear_late():
    x, y = data(4, n=90, d=5, k=3)
    order = np.argsort(y, kind="stable")  # class 2 first shows up in the last batch
    stats = ScatterStats(5)
    for idx in np.array_split(order, 3):
        stats.update(x[idx], y[idx])
    np.testing.assert_allclose(stats.subspace(ridge=0.5), dca_subspace(x, y, ridge=0.5), atol=1e-10)


def test_align_subspace_recovers_rotation():
    rng = np.random.default_rng(5)
    zs = rng.normal(size=(50, 4))
    q = ortho_group.rvs(4, random_state=6) @ np.diag([1, -1, 1, -1])
    zt = zs @ q
    r = align_subspace(zs, zt)
    np.testing.assert_allclose(r, q, atol=1e-10)
    np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-12)


def test_errors_name_arguments():
    x, y = data()
    with pytest.raises(UserError, match="dim"):
        dca_subspace(x, y, dim=7)
    with pytest.raises(UserError, match="dim"):
        dca_subspace(x, y, dim=0)
    with pytest.raises(UserError, match="ridge"):
        dca_subspace(x, y, ridge=0.0)
    with pytest.raises(UserError, match="ridge_prime"):
        dca_subspace(x, y, ridge_prime=-1.0)
    with pytest.raises(UserError, match="labels"):
        dca_subspace(x, np.zeros(len(x), int))  # one class
    with pytest.raises(UserError, match="labels"):
        dca_subspace(x, y[:-1])
    with pytest.raises(UserError, match="features"):
        dca_subspace(x[:, 0], y)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UserError, match="features"):
        dca_subspace(bad, y)
    with pytest.raises(UserError, match="dim"):
        ScatterStats(6).update(x[:, :5], y)
    with pytest.raises(UserError, match="ridge"):  # constant classes: S_W = 0, no default rho
        dca_subspace(np.repeat(np.eye(2), 3, axis=0), np.repeat([0, 1], 3))
    with pytest.raises(UserError, match="teacher_proj"):
        align_subspace(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises(UserError, match="student_proj"):
        align_subspace(np.ones(5), np.ones(5))


def assert_solves(x, y, res):
    """``res`` solves the DCA pencil on ``(x, y)``, decreasing, with ``W.T (S_W + rho I) W = I``."""
    w, lam, rho, rho_p = res
    s_w, s_b = scatters(x, y)
    eye = np.eye(len(s_w))
    a, b = s_w + s_b + (rho + rho_p) * eye, s_w + rho * eye
    np.testing.assert_allclose(w.T @ b @ w, np.eye(w.shape[1]), atol=1e-9)
    np.testing.assert_allclose(a @ w - b @ w * lam, 0, atol=1e-8 * np.abs(a).max())
    assert np.all(np.diff(lam) <= 1e-12 * lam[0])
    full = np.sort(np.linalg.eigvals(np.linalg.solve(b, a)).real)[::-1]
    np.testing.assert_allclose(lam, full[:w.shape[1]], rtol=1e-9)


def test_all_zero_channels_still_give_every_component():
    # Half the features are 0 (dead ReLU channels): they lie in the null space of S_W and S_B,
    # so lam = 1 + rho'/rho = 1.1 is repeated, and the 4th (ridge-made) component sits in that
    # tie. LAPACK's bisection (eigh with subset_by_index) cut there returned fewer columns and
    # the sign flip raised IndexError (seeds 10, 39, 61 and 76 here); every seed must give all 4.
    for seed in range(100):
        rng = np.random.default_rng(seed)
        y = np.arange(480) % 4
        x = rng.normal(size=(4, 24))[y] + rng.normal(size=(480, 24))
        dead = rng.random(24) < 0.5
        x[:, dead] = 0
        stats = ScatterStats(24).update(x, y)
        assert stats.rank() == 3 and stats.components() == 4
        res = dca_fit(x, y)
        assert res.W.shape == (24, 4), seed
        assert_solves(x, y, res)
        assert res.eigenvalues[3] <= 1.1 + 1e-12 < res.eigenvalues[2]  # past rank(S_B): ridge-made
        if dead.any():  # the all-zero directions top the ridge-made rest: lam = 1.1, projection 0
            assert res.eigenvalues[3] == pytest.approx(1.1, rel=1e-12)
            np.testing.assert_allclose(x @ res.W[:, 3], 0, atol=1e-10)


def test_rank_deficient_class_means_raise_naming_the_rank():
    # 4 classes whose means lie on one line: S_B has rank 1, so 1 + 1 components exist
    rng = np.random.default_rng(7)
    u = rng.normal(size=6)
    z = rng.normal(size=(100, 6))
    y = np.tile(np.repeat(np.arange(4), 25), 2)
    x = 3.0 * y[:, None] * u + np.concatenate([z, -z])  # +-z: the noise leaves each class mean on the line
    stats = ScatterStats(6).update(x, y)
    assert stats.rank() == 1 and stats.components() == 2
    with pytest.raises(UserError, match=r"dim=4 \(the default: number of classes\) exceeds the 2 DCA components.*"
                                        r"rank of S_B = 1"):
        dca_subspace(x, y)
    with pytest.raises(UserError, match=r"dim=3 exceeds the 2 DCA components.*rank of S_B = 1.*dim <= 2"):
        stats.subspace(3)
    res = dca_fit(x, y, dim=stats.components())
    assert res.W.shape == (6, 2)
    assert_solves(x, y, res)
    assert res.eigenvalues[1] <= 1 + res.ridge_prime / res.ridge < res.eigenvalues[0]
    np.testing.assert_allclose(stats.fit(2).W, res.W, atol=1e-12)
    # fewer features than classes: D bounds the default as before
    x2, y2 = data(8, n=90, d=2, k=5)
    assert dca_subspace(x2, y2).shape == (2, 2)


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_features_have_no_component(value):
    # the tap of a dead student: S_W = S_B = 0 (constant float32 features sum exactly in float64)
    y = np.arange(60) % 3
    x = np.full((60, 2, 3, 3), value, np.float32)
    stats = ScatterStats(18)
    for idx in np.array_split(np.arange(60), 4):
        stats.update(x[idx], y[idx])
    assert stats.rank() == 0 and stats.components() == 0
    for fit in (lambda: dca_subspace(x, y), lambda: stats.fit(1), lambda: dca_fit(x, y, ridge=1.0)):
        with pytest.raises(UserError, match=r"no DCA component exists.*rank of S_B = 0.*constant"):
            fit()


def test_coinciding_class_means_have_no_component():
    # every class holds the same rows: S_W > 0 but S_B = 0
    rows = np.random.default_rng(9).normal(size=(20, 5))
    x, y = np.concatenate([rows] * 3), np.repeat([0, 1, 2], 20)
    assert ScatterStats(5).update(x, y).components() == 0
    with pytest.raises(UserError, match=r"class means coincide \(rank of S_B = 0\)$"):
        dca_subspace(x, y)
