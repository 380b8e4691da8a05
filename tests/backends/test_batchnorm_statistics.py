"""Training-mode BatchNorm on hard statistics, against float64.

Channels with a large mean, and a nearly constant channel (mean 0.5, deviation 1e-3),
are where one-pass float32 statistics fail: ``E[x^2] - E[x]^2`` loses the variance to
cancellation, a running float32 sum over N*H*W values drifts. The backends normalise
with batch statistics (``bn_batch_stats``) and update the running statistics within
float32 round-off of the exact values; the TF backend's BatchNorm gradient (its own,
around a fused inference kernel) matches the float64 one, with TensorFlow's fused
gradient kernel (CPU) and with the gradient written out (GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import LossSpec
from compress_core.ir.graph import Graph, Node, bn_node

EPS = 1e-5
MEANS, STDS = (0.0, 10.0, 0.5, -3.0), (1.0, 1.0, 1e-3, 0.2)


def _maps(n=64, h=32, w=32) -> np.ndarray:
    """NCHW float32, one channel per (mean, deviation)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(n, len(MEANS), h, w))
    return (z * np.array(STDS)[:, None, None] + np.array(MEANS)[:, None, None]).astype(np.float32)


def _reference(x: np.ndarray, gamma, beta):
    """float64 normalised maps (NCHW), batch mean and biased variance."""
    xd = x.astype(np.float64)
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3))
    y = (xd - mean[:, None, None]) / np.sqrt(var[:, None, None] + EPS) * gamma[:, None, None] + beta[:, None, None]
    return y, mean, var


def test_batch_statistics_and_running_statistics_match_float64(backend):
    g = Graph("bn_first", (len(MEANS), 32, 32), [Node("input", "input"), bn_node("bn", "input"), Node("gap", "gap", ("bn",)),
                                                  Node("fc", "dense", ("gap",), {"out": 2, "bias": True})], "fc")
    rng = np.random.default_rng(4)
    params = {"bn.weight": rng.uniform(0.5, 1.5, 4).astype(np.float32),
              "bn.bias": rng.normal(0, 0.1, 4).astype(np.float32),
              "bn.running_mean": np.zeros(4, np.float32), "bn.running_var": np.ones(4, np.float32),
              "fc.weight": rng.normal(size=(2, 4)).astype(np.float32), "fc.bias": np.zeros(2, np.float32)}
    x = _maps()
    y_ref, mean, var = _reference(x, params["bn.weight"], params["bn.bias"])
    model = backend.build(g, params)
    y = backend.forward(model, x, ["bn"], bn_batch_stats=True)[1]["bn"]
    # float32 holds the mean to half an ulp, an error of |mean| / std ulps once normalised
    assert (np.abs(y - y_ref).max((0, 2, 3)) < 4 * _ulps()).all()
    backend.trainer(model, LossSpec()).step(x, np.zeros(len(x), np.int64), lr=0.0)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    got = backend.get_weights(model)
    assert (np.abs(got["bn.running_mean"] - 0.1 * mean) < 1e-7 * (np.abs(MEANS) + STDS)).all()
    np.testing.assert_allclose(got["bn.running_var"], 0.9 + 0.1 * var * n / (n - 1), rtol=2e-7)


def _ulps() -> np.ndarray:
    """Per channel: float32 round-off of normalised values up to 4 deviations, plus that of the mean."""
    return np.finfo(np.float32).eps * (4.0 + np.abs(MEANS) / np.array(STDS))


@pytest.mark.parametrize("fused_grad", [True, False], ids=["fused-kernel", "written-out"])
def test_tf_batchnorm_gradient_matches_float64(fused_grad):
    from backends.tf.model import _batch_normalise, _mean_nhw, _sum_square_nhw, tf

    x = _maps().transpose(0, 2, 3, 1)  # NHWC
    rng = np.random.default_rng(5)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)  # the loss sum(y * dy) has gradient dy at y
    with tf.Graph().as_default():
        X, G, B = tf.constant(x), tf.constant(gamma), tf.constant(beta)
        mean = tf.stop_gradient(_mean_nhw(X))
        centred = X - mean
        var = tf.stop_gradient(_sum_square_nhw(centred)) / float(x.size // x.shape[-1])
        y = _batch_normalise(centred, G, B, var, EPS, fused_grad)
        grads = tf.gradients(tf.reduce_sum(y * dy), [X, G, B])
        with tf.compat.v1.Session() as s:
            got_y, (dx, dgamma, dbeta) = s.run([y, grads])
    y_ref, _, var = _reference(x.transpose(0, 3, 1, 2), gamma, beta)
    xhat = (y_ref - beta[:, None, None]) / gamma[:, None, None]
    dyd = dy.transpose(0, 3, 1, 2).astype(np.float64)
    dbeta_ref, dgamma_ref = dyd.sum((0, 2, 3)), (dyd * xhat).sum((0, 2, 3))
    m = x.size // x.shape[-1]
    dx_ref = (gamma / np.sqrt(var + EPS))[:, None, None] * (
        dyd - dbeta_ref[:, None, None] / m - xhat * dgamma_ref[:, None, None] / m)
    assert (np.abs(got_y.transpose(0, 3, 1, 2) - y_ref).max((0, 2, 3)) < 4 * _ulps()).all()
    # relative to each channel's largest value: the near-constant channel's dx is ~1000x the others'
    dx_err = np.abs(dx.transpose(0, 3, 1, 2) - dx_ref).max((0, 2, 3)) / np.abs(dx_ref).max((0, 2, 3))
    assert dx_err.max() < 1e-6, dx_err
    assert np.max(np.abs(dgamma - dgamma_ref)) < 2e-7 * np.abs(dyd).sum((0, 2, 3)).max()
    assert np.max(np.abs(dbeta - dbeta_ref)) < 2e-7 * np.abs(dyd).sum((0, 2, 3)).max()
