"""KSE core: indicator (hand-derived values, scikit-learn's kNN), k-means, the compressed graph forms."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from compress_core.criteria import kse as kse_criteria
from compress_core.criteria.kse import (
    centroid_counts,
    combine,
    entropy_sets,
    kernel_sparsity,
    knn_entropy,
    kse_indicator,
)
from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.ir.graph import Graph, Node, conv_node
from compress_core.recipes import kse
from tests import oracle
from tests.conftest import trained_like


def _line(values, dims=1):
    """Points on a line as a [1, N, dims] set (the line is the first axis)."""
    pts = np.zeros((1, len(values), dims))
    pts[0, :, 0] = values
    return pts


def test_entropy_of_six_points_on_a_line_by_hand():
    # points 0..5, k=5: every other point is a neighbour, dm_i = sum_j |i - j|
    # = 15, 11, 9, 9, 11, 15 (sum 70); e = -sum p log2 p with p = dm / 70
    p = np.array([15, 11, 9, 9, 11, 15]) / 70
    expected = -np.sum(p * np.log2(p))
    for dims in (1, 3):  # the sorted 1-D path and the Gram path
        assert knn_entropy(_line(np.arange(6.0), dims))[0] == pytest.approx(expected, abs=1e-12)


def test_entropy_matches_scikit_learn_nearest_neighbours():
    rng = np.random.default_rng(0)
    for d in (1, 9):
        sets = rng.normal(size=(5, 20, d))
        ours = knn_entropy(sets)
        for c in range(5):
            dist, _ = NearestNeighbors(n_neighbors=6).fit(sets[c]).kneighbors(sets[c])
            dm = dist[:, 1:].sum(1)
            p = dm / dm.sum()
            assert ours[c] == pytest.approx(-np.sum(p * np.log2(p)), abs=1e-10)


def test_repeated_identical_kernels_give_a_finite_entropy():
    # 6 copies of one point: every dm = 0, one point, entropy 0 (the reference takes log 0)
    assert knn_entropy(_line(np.zeros(6), 2))[0] == 0.0
    # 6 copies plus 6 spread points: the copies have dm = 0 and add 0 * log 0 = 0
    e = knn_entropy(_line(np.r_[np.zeros(6), np.arange(1.0, 7.0)], 2))[0]
    assert np.isfinite(e) and e > 0


def test_sparsity_is_l1_over_taps_summed_over_filters():
    w = np.zeros((2, 3, 1, 2))
    w[0, 1] = [[1.0, -2.0]]
    w[1, 1] = [[0.5, 0.0]]
    w[1, 2] = [[-4.0, 0.0]]
    assert kernel_sparsity(w).tolist() == [0.0, 3.5, 4.0]


def test_reference_entropy_sets_are_the_released_codes_reshape():
    w = np.arange(6 * 6 * 4, dtype=np.float64).reshape(6, 6, 2, 2)
    sets = entropy_sets(w, "reference")
    # N == C: set c holds the kernels of output filter c
    for c in range(6):
        assert np.array_equal(sets[c], w[c].reshape(6, 4))
    assert np.array_equal(entropy_sets(w, "paper")[2], w[:, 2].reshape(6, 4))
    # N = 2C (a 16 -> 32 downsampling conv, here 3 -> 6): set c = filters c and c + C of every input
    w = np.arange(6 * 3 * 1.0).reshape(6, 3, 1, 1)
    sets = entropy_sets(w, "reference")
    for c in range(3):
        assert sorted(sets[c, :, 0]) == sorted(np.r_[w[c, :, 0, 0], w[c + 3, :, 0, 0]])


def test_combine_by_hand():
    # s~ = [0, .5, 1], e~ = [0, 0, 1] -> u = [0, sqrt(.5), sqrt(1/2)] -> v = [0, 1, 1]
    assert combine(np.array([0.0, 1.0, 2.0]), np.array([3.0, 3.0, 5.0])) == pytest.approx([0.0, 1.0, 1.0])
    # higher entropy lowers the indicator: s~ = [0, 1, 1], e~ = [0, 0, 1] -> u = [0, 1, sqrt(.5)]
    assert combine(np.array([0.0, 2.0, 2.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx([0.0, 1.0, np.sqrt(.5)])
    # constant sparsity or entropy: defined, no NaN (sparsity -> 1, entropy -> no penalty)
    # s~ = 1, e~ = [0, .5, 1] -> u = [1, sqrt(2/3), sqrt(1/2)] -> v = [1, (sqrt(2/3) - sqrt(.5)) / (1 - sqrt(.5)), 0]
    mid = (np.sqrt(2 / 3) - np.sqrt(.5)) / (1 - np.sqrt(.5))
    assert combine(np.ones(3), np.array([0.0, 1.0, 2.0])) == pytest.approx([1.0, mid, 0.0])
    assert combine(np.ones(3), np.ones(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("n, G, T, counts", [(16, 4, 0, [0, 4, 8, 16]), (64, 4, 1, [0, 8, 16, 64]),
                                             (12, 5, 0, [0, 2, 3, 6, 12])])
def test_centroid_counts_of_the_documented_examples(n, G, T, counts):
    v = (np.arange(G) + 0.5) / G  # one channel in the middle of each level
    levels, q = centroid_counts(v, n, G, T)
    assert levels.tolist() == list(range(G)) and q.tolist() == counts


def test_levels_floor_with_the_top_level_closed():
    levels, q = centroid_counts(np.array([0.0, 0.2499, 0.25, 0.5, 0.9999, 1.0]), 16, 4, 0)
    assert levels.tolist() == [0, 0, 1, 2, 3, 3] and q.tolist() == [0, 0, 4, 8, 16, 16]


def test_indicator_end_to_end_and_its_guards():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 5, 3, 3))
    w[:, 3] *= 0.01  # the weakest channel: pruned
    w[:, 1] *= 10    # the strongest: kept
    r = kse_indicator(w, G=4)
    assert r.num_centroids[3] == 0 and r.num_centroids[1] == 8
    assert r.indicator.min() == 0.0 and r.indicator.max() == 1.0
    # constant sparsity: every channel kept in full, no NaN
    flat = np.ones((6, 3, 1, 1)) * np.array([1.0, -1.0, 1.0])[None, :, None, None]
    assert kse_indicator(flat).num_centroids.tolist() == [6, 6, 6]
    with pytest.raises(UserError, match="at least 6"):
        kse_indicator(w[:5])
    with pytest.raises(UserError, match="NaN"):
        kse_indicator(np.where(w > 2, np.nan, w))
    with pytest.raises(UserError, match="G"):
        kse_indicator(w, G=1)
    with pytest.raises(UserError, match="T"):
        kse_indicator(w, T=-1)
    with pytest.raises(UserError, match="entropy_sets"):
        kse_indicator(w, entropy_sets="transposed")


@pytest.mark.parametrize("d", [1, 4])
def test_kmeans_finds_separated_clusters_deterministically(d):
    rng = np.random.default_rng(2)
    centres = np.array([-10.0, 0.0, 10.0])
    truth = np.repeat(np.arange(3), 8)
    pts = np.zeros((2, 24, d))
    pts[..., 0] = centres[truth] + rng.normal(0, 0.1, (2, 24))
    c1, l1 = kse.kmeans(pts, 3, seed=5)
    c2, l2 = kse.kmeans(pts, 3, seed=5)
    assert np.array_equal(c1, c2) and np.array_equal(l1, l2)
    for b in range(2):  # the partition is the truth (up to numbering), centres are the means
        assert len({(t, lab) for t, lab in zip(truth, l1[b])}) == 3
        for j in range(3):
            assert np.allclose(c1[b, j], pts[b, l1[b] == j].mean(0))


def test_cluster_layer_keeps_prunes_and_clusters():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[:, 2] = w[0, 2]  # eight identical kernels: one centroid however many are asked for
    code = kse.cluster_layer(w, [8, 0, 4, 2])
    assert code.channels.tolist() == [0, 2, 3] and code.full.tolist() == [True, False, False]
    assert code.num_centroids.tolist() == [8, 1, 2]
    dense = code.dense()
    assert np.array_equal(dense[:, 0], w[:, 0]) and np.array_equal(dense[:, 1], w[:, 2])
    assert len(np.unique(dense[:, 2].reshape(8, -1), axis=0)) == 2


# -- slow oracles of the vectorised kNN sums and k-means (one set at a time, exact differences) -----
def _knn_sums_oracle(points, k=5):
    """Per set and point: the k smallest exact distances to the other points, summed in ascending order."""
    out = np.empty(points.shape[:2])
    for c, x in enumerate(np.asarray(points, np.float64)):
        dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
        np.fill_diagonal(dist, np.inf)
        out[c] = np.sort(dist, axis=1)[:, :k].sum(axis=1)
    return out


def _kmeans_oracle(x, q, seed, max_iter=100, tol=1e-4):
    """Lloyd from k-means++ (1-D: the q quantiles) with the uniforms drawn as kse.kmeans documents,
    nearest centres by exact distances, until every set moves less than tol x its variance."""
    b, n, d = x.shape
    if d == 1:
        s = np.sort(x[..., 0], axis=1)
        c = s[:, np.minimum(((np.arange(q) + 0.5) * n / q).astype(np.int64), n - 1), None]
    else:
        rng = np.random.default_rng([seed, 0])
        first, u = rng.integers(0, n, b), rng.random((q - 1, b))
        c = np.empty((b, q, d))
        for i in range(b):
            c[i, 0] = x[i, first[i]]
            d2 = ((x[i] - c[i, 0]) ** 2).sum(axis=1)
            for j in range(1, q):
                cum = np.cumsum(d2)
                c[i, j] = x[i, min(int((cum < u[j - 1, i] * cum[-1]).sum()), n - 1)]
                d2 = np.minimum(d2, ((x[i] - c[i, j]) ** 2).sum(axis=1))

    def nearest(i, ci):
        return ((x[i][:, None, :] - ci[None]) ** 2).sum(axis=2).argmin(axis=1)

    limit = tol * x.var(axis=1).mean(axis=1)
    for _ in range(max_iter):
        moved = np.empty(b)
        for i in range(b):
            lab = nearest(i, c[i])
            new = np.array([x[i, lab == j].mean(axis=0) if (lab == j).any() else c[i, j] for j in range(q)])
            moved[i] = ((new - c[i]) ** 2).sum()
            c[i] = new
        if np.all(moved <= limit):
            break
    return c, np.array([nearest(i, c[i]) for i in range(b)])


def _objective(x, c, labels):
    return float(((x - np.take_along_axis(c, labels[..., None], axis=1)) ** 2).sum())


@pytest.mark.parametrize("n, d", [(6, 9), (40, 9), (300, 9), (333, 4), (2048, 1), (7, 1)])
def test_knn_sums_equal_the_slow_oracle(n, d):
    # n > 256 takes the lane path (333: not a multiple of the 64 lanes); duplicates, zeros and a lattice
    # (exact ties between the 5th and 6th neighbours) take the exact re-ranking path
    rng = np.random.default_rng(n + d)
    sets = rng.normal(0, 0.05, (4, n, d)).astype(np.float32).astype(np.float64)
    sets[1, : n // 2] = sets[1, 0]
    sets[2, ::3] = 0.0
    sets[3] = rng.integers(-2, 3, (n, d))
    ours, want = kse_criteria.knn_distance_sums(sets), _knn_sums_oracle(sets)
    assert np.max(np.abs(ours - want)) <= 1e-13
    unordered = kse_criteria.knn_distance_sums(sets, in_order=False)  # what the entropy uses
    assert np.max(np.abs(np.sort(unordered, axis=1) - np.sort(want, axis=1))) <= 1e-13


@pytest.mark.parametrize("d, q", [(9, 5), (4, 16), (1, 6)])
def test_kmeans_equals_the_slow_oracle(d, q):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(6, 48, d))
    x[5, :12] = x[5, 0]  # repeated kernels
    c, labels = kse.kmeans(x, q, seed=3)
    c_ref, labels_ref = _kmeans_oracle(x, q, seed=3)
    if d == 1:  # the 1-D centres come sorted: renumber the oracle's in that order
        order = np.argsort(c_ref[..., 0], axis=1)
        labels_ref = np.take_along_axis(np.argsort(order, axis=1), labels_ref, axis=1)
        c_ref = np.take_along_axis(c_ref, order[..., None], axis=1)
    assert np.array_equal(labels, labels_ref)
    assert np.max(np.abs(c - c_ref)) < 1e-12
    assert _objective(x, c, labels) == pytest.approx(_objective(x, c_ref, labels_ref), rel=1e-12)


def test_codes_do_not_depend_on_the_number_of_cores(monkeypatch):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(300, 12, 3, 3)).astype(np.float32)
    w1 = rng.normal(size=(2048, 400, 1, 1)).astype(np.float32)  # several chunks of 1-D sets
    runs = []
    for cores in ({0}, {0, 1, 2}):
        monkeypatch.setattr(kse_criteria.os, "sched_getaffinity", lambda _pid, cores=cores: cores)
        out = []
        for weight in (w, w1):
            r = kse_indicator(weight, G=5, T=1)
            out.append((r.entropy, kse.cluster_layer(weight, r.num_centroids, seed=2)))
        runs.append(out)
    for (e1, c1), (e2, c2) in zip(*runs):
        assert np.array_equal(e1, e2) and np.array_equal(c1.labels, c2.labels)
        assert all(np.array_equal(a, b) for a, b in zip(c1.codebooks, c2.codebooks))


def test_constant_entropy_and_identical_kernels_give_defined_levels():
    # every channel's kernels identical (entropy 0 everywhere: constant), magnitudes 1..4
    w = np.ones((8, 4, 3, 3)) * np.arange(1.0, 5.0)[None, :, None, None]
    r = kse_indicator(w, G=4)
    assert r.entropy.tolist() == [0.0] * 4 and np.all(np.isfinite(r.indicator))
    assert r.num_centroids[0] == 0 and r.num_centroids[3] == 8
    code = kse.cluster_layer(w, r.num_centroids)
    assert all(len(b) in (1, 8) for b in code.codebooks)  # identical kernels: one centroid when clustered


def _resnet20_codes(G, seed=0):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    p = trained_like(g, seed)
    names = [n.name for n in g.of_op("conv") if re.fullmatch(r"layer\d+\.\d+\.conv\d", n.name)]
    codes = {n: kse.cluster_layer(p[f"{n}.weight"], kse_indicator(p[f"{n}.weight"], G).num_centroids) for n in names}
    return g, p, codes


def _with_codes(p, codes):
    """The original network's weights with each coded kernel rebuilt (pruned channels zero)."""
    out = dict(p)
    for name, code in codes.items():
        w = np.zeros_like(p[f"{name}.weight"])
        w[:, code.channels] = code.dense()
        out[f"{name}.weight"] = w
    return out


X = np.random.default_rng(0).normal(size=(3, 1, 8, 8))


def test_dense_form_removes_pruned_channels_and_equals_the_rebuilt_original():
    g, p, codes = _resnet20_codes(G=4)
    small, sp, small_codes = kse.compress(g, p, codes)
    want = oracle.forward(g, _with_codes(p, codes), X)[g.output]
    assert np.max(np.abs(oracle.forward(small, sp, X)[small.output] - want)) < 1e-10
    # block-inner channels are gone from conv1 and its BN; the stream is read through a select
    c2 = codes["layer1.0.conv2"]
    assert small.shapes()["layer1.0.conv1"][0] == len(c2.channels) < 16
    assert small["layer1.0.conv1"].inputs == ("layer1.0.conv1.in_select",)
    assert small_codes["layer1.0.conv1"].labels.shape[1] == len(c2.channels)


def test_nothing_clustered_gives_the_original_network():
    g, p, _ = _resnet20_codes(G=4)
    names = [n for n in g.param_shapes() if re.fullmatch(r"layer\d+\.\d+\.conv\d\.weight", n)]
    codes = {n[:-7]: kse.cluster_layer(p[n], np.full(p[n].shape[1], p[n].shape[0])) for n in names}
    small, sp, _ = kse.compress(g, p, codes)
    assert np.array_equal(oracle.forward(small, sp, X)[small.output], oracle.forward(g, p, X)[g.output])
    # G = 2: levels 0 and 1 only, nothing clustered: the original with the pruned channels zeroed
    g, p, codes = _resnet20_codes(G=2)
    assert all(c.full.all() for c in codes.values())
    small, sp, _ = kse.compress(g, p, codes)
    zeroed = dict(p)
    for name, c in codes.items():
        zeroed[f"{name}.weight"] = p[f"{name}.weight"] * np.isin(np.arange(c.in_channels), c.channels)[:, None, None]
    assert np.max(np.abs(oracle.forward(small, sp, X)[small.output] - oracle.forward(g, zeroed, X)[g.output])) < 1e-10


def test_shared_form_equals_dense_form():
    g, p, codes = _resnet20_codes(G=5, seed=4)
    small, sp, small_codes = kse.compress(g, p, codes)
    shared, shp = kse.shared_form(small, sp, small_codes)
    assert shared["layer2.0.conv1.kse_dw"].attrs["stride"] == (2, 2)
    dense_out = oracle.forward(small, sp, X)[small.output]
    assert np.max(np.abs(oracle.forward(shared, shp, X)[shared.output] - dense_out)) < 1e-4


def test_projection_moves_a_centroid_by_the_sum_of_its_members_updates():
    w = np.arange(6 * 2 * 1.0).reshape(6, 2, 1, 1)
    code = kse.LayerCode(np.array([0, 1]), [np.array([[[1.0]], [[2.0]]]), w[:, 1]],
                         np.array([[0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 4, 5]]), np.array([False, True]), 2)
    after = code.dense().astype(np.float64)
    after[:3, 0] += np.array([0.1, 0.2, 0.3])[:, None, None]  # members of centroid 0 moved
    after[:, 1] += 1.0
    params, codes = kse.project({"c.weight": after}, {"c": code})
    assert codes["c"].codebooks[0].ravel() == pytest.approx([1.6, 2.0])  # 1 + 0.1 + 0.2 + 0.3
    assert np.allclose(params["c.weight"][:, 1], w[:, 1] + 1.0)          # full channel: as trained
    assert np.allclose(kse.codes_from_weights(params, codes)["c"].codebooks[0], codes["c"].codebooks[0])


def test_paper_costs_by_hand():
    # one 3x3 conv 3 -> 6 on a 4x4 map: channel 0 full (6 kernels), 1 pruned, 2 in 2 centroids
    g = Graph("t", (3, 4, 4), [Node("input", "input"), conv_node("c", "input", 6)], "c")
    code = kse.LayerCode(np.array([0, 2]), [np.zeros((6, 3, 3)), np.zeros((2, 3, 3))],
                         np.array([np.arange(6), [0, 1, 0, 1, 0, 1]]), np.array([True, False]), 3)
    # MACs (6 + 2) * 9 * 16 = 1152; adds 6 * 2 * 16 = 192; params 72; indices 6 * ceil(log2 2) = 6 bits
    assert kse.paper_costs(g, {"c": code}) == {"macs": 1152, "adds": 192, "params": 72, "index_bits": 6}
