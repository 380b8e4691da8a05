"""DCA subspace: hand case, eigen-equation, normalisation, streaming == batch, alignment."""

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
    w = dca_subspace(x, y, dim=5, ridge=0.3, ridge_prime=0.0)
    assert w.shape == (6, 5)
    peak = np.abs(w).argmax(0)
    assert np.all(w[peak, np.arange(5)] > 0)
    # flattening: [N, 2, 3] features give the same basis as [N, 6]
    np.testing.assert_allclose(dca_subspace(x.reshape(-1, 2, 3), y, dim=5, ridge=0.3, ridge_prime=0.0), w)


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
