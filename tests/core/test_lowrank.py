"""EVBMF ranks, Tucker-2, CP and the graph replacements (numpy only, hand-derived values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from compress_core.criteria import lowrank
from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.graph import Graph, Node, conv_node
from compress_core.recipes import decompose
from tests import oracle


def _planted(L, M, r, seed=0, noise=0.3):
    """Rank-r signal (singular values ~ sqrt(LM)) plus i.i.d. noise far below the MP edge."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(L, r)) @ rng.normal(size=(r, M)) + noise * rng.normal(size=(L, M))


def test_tau_bar_is_the_root_of_its_equation():
    # alpha = 1: 2 log(1 + tau) = tau has the root 2.51286... (the reference's constant 2.5129)
    assert lowrank.tau_bar(1.0) == pytest.approx(2.5128624, abs=1e-6)
    t = lowrank.tau_bar(0.01)
    assert math.log1p(t) + 0.01 * math.log1p(t / 0.01) == pytest.approx(t, abs=1e-12)
    assert t > 2.5129 * 0.1 * 1.1  # the reference's approximation is >10 % low at alpha = 0.01


@pytest.mark.parametrize("shape,r", [((64, 256), 9), ((256, 64), 9), ((64, 9), 3), ((100, 100), 10)])
def test_evbmf_recovers_planted_ranks_in_any_orientation_and_scale(shape, r):
    y = _planted(*shape, r)
    # the reference gives 7 for 256x64 and crashes on 64x9 (untransposed, section 3a of the method doc)
    assert lowrank.evbmf_rank(y) == r
    assert lowrank.evbmf_rank(y.T) == r
    # its absolute tolerance made the rank drift with the scale (3b); the RMS normalisation fixes it
    assert [lowrank.evbmf_rank(s * y) for s in (1e-3, 1e-2, 1e3)] == [r, r, r]


def test_evbmf_threshold_and_noise_variance():
    y = _planted(50, 50, 4, noise=1.0)
    res = lowrank.evbmf(y)
    # alpha = 1: xbar = (1 + tau)(1 + 1/tau) = 3.512862 * 1.397953 = 4.910815; threshold = sqrt(M sigma2 xbar)
    assert res.threshold == pytest.approx(math.sqrt(50 * res.sigma2 * 4.910815), rel=1e-6)
    assert res.sigma2 == pytest.approx(1.0, rel=0.15)  # the planted noise variance
    assert res.rank == 4 and res.shrunk.shape == (4,)
    s = np.linalg.svd(y, compute_uv=False)
    assert np.all(res.shrunk < s[:4]) and np.all(res.shrunk > 0.8 * s[:4])  # shrinkage, not selection
    assert lowrank.evbmf(1e-3 * y).sigma2 == pytest.approx(1e-6 * res.sigma2, rel=1e-6)


def test_evbmf_of_noise_or_zeros_is_rank_0_and_bad_input_is_named():
    assert lowrank.evbmf_rank(np.random.default_rng(0).normal(size=(32, 288))) == 0
    assert lowrank.evbmf_rank(np.zeros((5, 7))) == 0
    with pytest.raises(UserError, match="matrix"):
        lowrank.evbmf_rank(np.ones(4))
    with pytest.raises(UserError, match="NaN"):
        lowrank.evbmf_rank(np.full((3, 3), np.nan))


def _decaying(L, M, decay, seed):
    """Singular values 4 sqrt(M) exp(-decay h) plus unit noise: ranks in the middle of the spectrum."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(L, L)))[0]
    v = np.linalg.qr(rng.normal(size=(M, L)))[0]
    return (u * (np.sqrt(M) * 4.0 * np.exp(-decay * np.arange(L)))) @ v.T + rng.normal(size=(L, M))


# (L, M, decay) -> (rank, rank of the transpose, sigma2): values of the SVD-based implementation
# before the Gram-eigenvalue rewrite (kept so that the speed-up cannot change a rank)
GOLDEN = {(16, 144, 0.1): (5, 5, 3.708774), (32, 288, 0.05): (8, 8, 3.9837), (64, 576, 0.03): (20, 20, 2.889144),
          (64, 64, 0.08): (6, 6, 1.759251), (27, 64, 0.2): (4, 4, 1.439788), (128, 1152, 0.02): (42, 42, 1.935365),
          (9, 64, 0.3): (3, 3, 2.1197), (100, 300, 0.04): (19, 19, 1.643526)}


def test_evbmf_ranks_are_those_of_the_previous_implementation():
    for i, (case, (rank, rank_t, sigma2)) in enumerate(GOLDEN.items()):
        y = _decaying(*case, seed=i)
        res = lowrank.evbmf(y)
        assert (res.rank, lowrank.evbmf_rank(y.T)) == (rank, rank_t), case
        assert res.sigma2 == pytest.approx(sigma2, abs=2e-6), case
        # the Gram eigenvalues give what the full SVD's singular values give
        s = np.linalg.svd(y, compute_uv=False)
        assert lowrank.evbmf_spectrum(s ** 2, *sorted(y.shape)).rank == rank



def _levels(L, M, levels, noise, seed):
    """Orthonormal factors, singular values ``level`` repeated ``count`` times per ``(level, count)``,
    zeros after them, plus i.i.d. N(0, noise^2)."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(L, L)))[0]
    v = np.linalg.qr(rng.normal(size=(M, L)))[0]
    s = np.concatenate([np.full(count, level) for level, count in levels] + [np.zeros(L)])[:L]
    return (u * s) @ v.T + noise * rng.normal(size=(L, M))


def _free_energy(sigma2, gamma2, L, M):
    """The EVB objective of the docstring, re-derived term by term, at every ``sigma2`` (an array)."""
    alpha = L / M
    tau_b = lowrank.tau_bar(alpha)
    xbar = (1 + tau_b) * (1 + alpha / tau_b)
    out = np.empty(len(sigma2))
    for i in range(0, len(sigma2), 10_000):
        x = gamma2[None, :] / (M * sigma2[i:i + 10_000, None])
        z = np.maximum(x, xbar)  # tau is only needed above xbar
        tau = 0.5 * (z - 1 - alpha + np.sqrt((z - 1 - alpha) ** 2 - 4 * alpha))
        extra = np.log(1 + tau) + alpha * np.log(1 + tau / alpha) - tau
        out[i:i + 10_000] = (x - np.log(x) + np.where(x > xbar, extra, 0.0)).sum(axis=1)
    return out, xbar


def _interval(gamma2, L, M, xbar):
    """The docstring's ``[max(gamma_{k+1}^2 / (M xbar), mean_{h>k} gamma_h^2 / M), sum gamma^2 / (L M)]``."""
    k = math.ceil(L / (1 + L / M)) - 1
    return max(gamma2[k] / (M * xbar), gamma2[k:].mean() / M), gamma2.sum() / (L * M)



def test_evb_free_energy_of_many_sigma2_is_the_formula_term_by_term():
    y = _levels(16, 144, [(10.0, 4), (4.0, 6)], 0.15, seed=0)
    g = np.linalg.svd(y, compute_uv=False) ** 2
    sigma2 = np.geomspace(1e-4, 10.0, 997)  # every x_h from far below to far above xbar
    want, xbar = _free_energy(sigma2, g, 16, 144)
    got = lowrank._evb_free_energy(sigma2, g, 16, 144, xbar)
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert lowrank._evb_free_energy(float(sigma2[500]), g, 16, 144, xbar) == pytest.approx(want[500], rel=1e-12)

def test_evbmf_keeps_both_signal_levels_of_the_reported_spectrum():
    """12x108, singular values 4 x 10, 5 x 6, 3 x 0, noise 0.1: the spectrum of the bug report
    (10.2 .. 9.8, 6.3 .. 5.9, then 1.1, 1.0, 0.95). Both levels are far above the noise: rank 9."""
    y = _levels(12, 108, [(10.0, 4), (6.0, 5)], 0.1, seed=1)
    g = np.linalg.svd(y, compute_uv=False) ** 2
    assert np.all(np.abs(np.sqrt(g[:9]) - np.repeat([10.0, 6.0], [4, 5])) < 0.4) and np.sqrt(g[9]) < 1.2
    res = lowrank.evbmf(y)
    assert res.rank == 9
    assert lowrank.evbmf(y.T).rank == 9 and lowrank.evbmf(1e-3 * y).rank == 9
    # the objective has a second, higher local minimum that keeps only the first level: one bounded Brent
    # search over the interval (the previous implementation) stops in it
    f, xbar = _free_energy(np.array([res.sigma2]), g, 12, 108)
    lower, upper = _interval(g, 12, 108, xbar)
    local = minimize_scalar(lambda s: _free_energy(np.array([s]), g, 12, 108)[0][0], bounds=(lower, upper),
                            method="bounded", options={"xatol": 1e-10 * upper})
    assert np.sum(g > 108 * local.x * xbar) == 4 and local.fun > f[0] + 1.0



def test_evbmf_of_an_exact_low_rank_matrix_keeps_no_rounding_value():
    """Without noise the trailing Gram eigenvalues are rounding (~1e-16 of the largest), where the free
    energy keeps falling: the search stops at the rounding level, so the rank is the exact rank."""
    rng = np.random.default_rng(0)
    for L, M, r in ((20, 50, 3), (64, 576, 20), (10, 10, 1)):
        y = rng.normal(size=(L, r)) @ rng.normal(size=(r, M))
        assert lowrank.evbmf_rank(y) == r and lowrank.evbmf_rank(y.astype(np.float32)) == r
        assert lowrank.evbmf_rank(y.T) == r

@pytest.mark.parametrize("L,M,levels,seed", [
    (12, 108, [(10.0, 4), (6.0, 5)], 0), (16, 144, [(10.0, 4), (4.0, 6)], 1), (24, 96, [(10.0, 4), (6.0, 5)], 2),
    (12, 108, [(10.0, 3), (5.0, 4), (2.5, 4)], 0), (12, 108, [(10.0, 2), (6.0, 3), (3.5, 4)], 3),
    (24, 96, [(10.0, 3), (5.0, 4), (2.5, 4)], 1), (24, 96, [(10.0, 3), (5.0, 4), (2.5, 4)], 3),
    (32, 288, [(12.0, 3), (6.0, 4), (3.0, 5)], 2)])
def test_evbmf_noise_variance_is_the_global_minimum_of_a_dense_scan(L, M, levels, seed):
    y = _levels(L, M, levels, 0.1 if L == 12 else 0.15, seed)
    g = np.linalg.svd(y, compute_uv=False) ** 2
    res = lowrank.evbmf_spectrum(g, L, M)
    f_res, xbar = _free_energy(np.array([res.sigma2]), g, L, M)
    lower, upper = _interval(g, L, M, xbar)
    grid = np.geomspace(lower, upper, 200_000)
    f = _free_energy(grid, g, L, M)[0]
    best = int(np.argmin(f))
    assert lower <= res.sigma2 <= upper
    assert f_res[0] <= f[best] + 1e-9 * abs(f[best])
    assert res.rank == np.sum(g > M * grid[best] * xbar)
    assert res.threshold == pytest.approx(math.sqrt(M * res.sigma2 * xbar), rel=1e-12)

def test_tucker2_ranks_of_a_1x1_kernel_are_one_evbmf():
    y = _decaying(48, 96, 0.05, seed=3)
    r = lowrank.evbmf_rank(y)
    assert lowrank.tucker2_ranks(y[:, :, None, None]) == (r, r)
    assert lowrank.tucker2_ranks(y.T[:, :, None, None]) == (r, r)
    with pytest.raises(ValueError, match="gamma2"):
        lowrank.evbmf_spectrum(np.ones(3), 4, 5)


def test_tucker2_ranks_and_weakening():
    rng = np.random.default_rng(0)
    core = rng.normal(size=(3, 5, 3, 3))
    w = lowrank.tucker2_reconstruct(core, np.linalg.qr(rng.normal(size=(32, 3)))[0],
                                    np.linalg.qr(rng.normal(size=(24, 5)))[0])
    w += 1e-3 * rng.normal(size=w.shape)
    assert lowrank.tucker2_ranks(w) == (3, 5)
    # rank + ceil(w (dim - rank)): 0 + ceil(0.5 * 16) = 8; 3 + ceil(0.5 * 7) = 7; w = 1 is full rank
    assert lowrank.weaken(0, 16, 0.5) == 8 and lowrank.weaken(3, 10, 0.5) == 7 and lowrank.weaken(3, 10, 1.0) == 10
    assert lowrank.weaken(3, 10, 0.0) == 3


def test_tucker2_full_rank_is_exact_and_truncated_factors_are_orthonormal():
    w = np.random.default_rng(1).normal(size=(8, 6, 3, 2))
    core, u_out, u_in = lowrank.tucker2(w, (8, 6))
    assert np.allclose(lowrank.tucker2_reconstruct(core, u_out, u_in), w, atol=1e-10)
    core, u_out, u_in = lowrank.tucker2(w.astype(np.float32), (3, 2))
    assert core.shape == (3, 2, 3, 2) and u_out.shape == (8, 3) and u_in.shape == (6, 2)
    assert np.allclose(u_out.T @ u_out, np.eye(3)) and np.allclose(u_in.T @ u_in, np.eye(2))


@pytest.mark.parametrize("ranks,needle", [((9, 2), r"rank 9 outside \[1, 8\]"), ((2, -1), "rank -1"),
                                          ((2.5, 2), "integer"), ((2,), "two ranks")])
def test_tucker2_rejects_bad_ranks(ranks, needle):
    with pytest.raises(UserError, match=needle):
        lowrank.tucker2(np.ones((8, 6, 3, 3)), ranks)


def test_cp_finds_exact_factors_reproducibly():
    rng = np.random.default_rng(2)
    w = lowrank.cp_reconstruct(*[rng.normal(size=(d, 4)) for d in (10, 7, 3, 3)])
    f = lowrank.cp(w, 4)
    assert f.error < 1e-5
    assert np.allclose(lowrank.cp_reconstruct(f.out, f.inp, f.h, f.w), w, atol=1e-4 * np.abs(w).max())
    again = lowrank.cp(w, 4)
    assert np.array_equal(f.out, again.out)  # seeded: the same factors every run
    assert lowrank.cp_rank(w, "seed") == 10 // 3
    with pytest.raises(UserError, match="rule"):
        lowrank.cp_rank(w, "guess")


def test_rule_ranks_of_a_first_conv_are_capped_at_the_exact_cp_rank():
    """A 1-channel 3x3 kernel [64, 1, 3, 3] is the sum of its 9 spatial slices (rank <= 9), while
    its Tucker-2 ranks (up to 64 by 1) and the seed rule (64 // 3 = 21) ask for more: capped, not an error."""
    w = np.random.default_rng(4).normal(size=(64, 1, 3, 3))
    assert lowrank.cp_max_rank(w.shape) == 9
    assert lowrank.cp_rank(w, "seed") == 9
    assert lowrank.cp_rank(w, "vbmf") <= 9
    f = lowrank.cp(w, 9)
    assert f.error < 1e-3  # rank 9 is exact; ALS gets close


def _net(cout=16, groups=1):
    nodes = [Node("input", "input"), conv_node("c", "input", cout, groups=groups), Node("pool", "gap", ("c",)),
             Node("fc", "dense", ("pool",), {"out": 10, "bias": True})]
    return Graph("net", (16, 8, 8), nodes, "fc")


def _params(g, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in g.param_shapes().items()}


def test_replacement_costs_and_skips():
    g = _net()
    p = _params(g)
    rep = decompose.tucker2_conv(g, p, "c", ranks=(4, 4))
    # per pixel (8x8 = 64): 16*4 (1x1) + 4*4*9 (core) + 4*16 (1x1) = 272 MACs vs 16*16*9 = 2304
    assert decompose.costs(g, rep) == {"macs_before": 2304 * 64, "macs_after": 272 * 64,
                                       "params_before": 2304, "params_after": 272}
    # full rank costs more than the conv: left alone, with the reason
    with pytest.raises(decompose.Skip, match="would not save MACs"):
        decompose.check_saves(g, decompose.tucker2_conv(g, p, "c", ranks=(16, 16)))
    with pytest.raises(decompose.Skip, match="zero"):
        decompose.tucker2_conv(g, p, "c", ranks=(0, 3))
    # CP rank 5: 16*5 + 5*3 + 5*3 + 5*16 = 190 MACs per pixel
    cp = decompose.cp_conv(g, p, "c", rank=5)
    assert decompose.costs(g, cp)["macs_after"] == 190 * 64
    # dense 10x64... here 10x16: SVD rank 3 has 16*3 + 3*10 + 10 (bias) parameters
    svd = decompose.svd_dense(g, p, "fc", rank=3)
    assert decompose.costs(g, svd)["params_after"] == 48 + 30 + 10
    with pytest.raises(UserError, match=r"rank 11 outside \[1, 10\]"):
        decompose.svd_dense(g, p, "fc", rank=11)
    with pytest.raises(UserError, match="no layer named 'nope'"):
        decompose.tucker2_conv(g, p, "nope", ranks=(2, 2))


def test_diagonal_structure_shrink_and_compact_layer():
    w = np.arange(1, 7, dtype=np.float32).reshape(2, 3)  # [[1,2,3],[4,5,6]]
    # off-diagonal entries divided by 1 + step = 2; the diagonal (1, 5) is untouched
    assert np.array_equal(decompose.shrink_off_diagonal(w, 1.0), [[1, 1, 1.5], [2, 5, 3]])
    g = _net()
    p = _params(g)
    rep = decompose.diagonal_dense(g, p, "fc")
    g2, p2 = decompose.apply(g, p, [rep])
    # the dense layer becomes a diagonal node in place: min(10, 16) weights + 10 biases, 10 MACs
    assert [n.op for n in g2.nodes] == ["input", "conv", "gap", "diagonal"]
    assert np.array_equal(p2["fc.weight"], np.diagonal(p["fc.weight"]))
    assert decompose.costs(g, rep) == {"macs_before": 160, "macs_after": 10, "params_before": 170,
                                       "params_after": 20}
    # channel groups go through the diagonal head; cutting the channels it maps one to one onto fewer
    # outputs is a clear error
    from compress_core.surgery import channel_groups, prune

    groups = {g.id: g for g in channel_groups(g2)}
    assert not groups["c"].cuttable and "diagonal 'fc'" in groups["c"].reason
    with pytest.raises(UserError, match="diagonal 'fc'"):
        prune(g2, p2, {"c": [0, 1]})


@pytest.mark.parametrize("out,inp", [(2, 3), (3, 2)])
def test_diagonal_node_on_any_vector_hand_computed(out, inp):
    """[[1,2,3],[4,5,6]] (2x3) and its transpose [[1,4],[2,5],[3,6]] (3x2), bias (10, 20, 30)[:out]."""
    x = np.array([[1.0, -1.0, 2.0]])[:, :inp]
    w = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    w = w if out == 2 else w.T
    b = np.array([10.0, 20.0, 30.0], np.float32)[:out]
    head = Graph("h", (inp,), [Node("input", "input"), Node("fc", "dense", ("input",), {"out": out, "bias": True})],
                 "fc")
    g2, p2 = decompose.apply(head, {"fc.weight": w, "fc.bias": b}, [decompose.diagonal_dense(head, {
        "fc.weight": w, "fc.bias": b}, "fc")])
    assert g2.param_shapes() == {"fc.weight": (2,), "fc.bias": (out,)}
    # y_j = W[j, j] x_j + b_j for j < 2: 1*1 + 10 = 11, 5*(-1) + 20 = 15; beyond: the bias alone, 30
    want = [[11.0, 15.0]] if out == 2 else [[11.0, 15.0, 30.0]]
    assert np.array_equal(oracle.forward(g2, p2, x)["fc"], want)
    assert flops.count_macs(g2) == 2 and flops.count_params(g2) == 2 + out
    with pytest.raises(UserError, match="vector input"):
        Graph("bad", (3, 2, 2), [Node("input", "input"), Node("d", "diagonal", ("input",),
                                                                 {"out": 3, "bias": False})], "d").shapes()


def test_grouped_conv_ranks_are_per_group():
    g = _net(cout=16, groups=2)
    p = _params(g)
    rep = decompose.tucker2_conv(g, p, "c", ranks=(3, 2))
    assert rep.params["c.reduce.weight"].shape == (4, 8, 1, 1)   # 2 groups x r_in 2, 8 inputs per group
    assert rep.params["c.core.weight"].shape == (6, 2, 3, 3)
    assert rep.params["c.weight"].shape == (16, 3, 1, 1)
    assert decompose.tucker2_ranks_of(g, p, "c", weakening=1.0) == (8, 8)
