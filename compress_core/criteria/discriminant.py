"""Class-discriminative channel scores of CDC (Liu, Wentzlaff, Kung, ICPR 2022).

As the reference computes them: for every channel and every class ``c``,
``P`` = the observations from images of class ``c`` and ``Q`` = the
observations from all other images (one-versus-rest). ``features`` is
``[N, C]`` or ``[N, C, H, W]``; for 4-D input every spatial position of a
channel is one observation of that channel's scalar variable (no pooling).
``mp, mq`` are element means and ``vp, vq`` biased element variances
``E[x^2] - E[x]^2`` (``sp = sqrt(vp)``); ``Np, Nq`` are IMAGE counts. With
``e`` the ridge, the per-class statistics are::

    gsd      0.5*(vp/(vq+e) + vq/(vp+e)) + 0.5*(mp-mq)**2/(vp+vq+e) - 1
    abs_snr  |mp-mq| / (sp+sq+e)
    fdr      (mp-mq)**2 / (vp+vq+e)
    t_test   |mp-mq| / sqrt(vp/Np + vq/Nq + e)

and a channel's score is the unweighted mean over the classes present in the
data (a class with no image is skipped: its one-vs-rest split does not exist;
fewer than 2 present classes is an error). Higher = more discriminative.
``ridge`` must be >= 0; ``ridge=0`` gives the unridged statistic, which is
inf/nan on a channel that is constant within a class split.

:class:`ClassStats` accumulates the per-class moments over batches (memory
``O(num_classes * C)``, independent of N); the batch functions are "build
ClassStats, update once, score", so every formula lives in one place.
``di_scores`` needs each channel's full ``HW x HW`` scatter and is batch only.
"""

from __future__ import annotations

import numpy as np

from compress_core.errors import check

# Biggest float64 chunk (elements) converted at once in ClassStats.update, so a
# float32 batch of 2000 x 64 x 16 x 16 is not copied to float64 in one piece.
_CHUNK_ELEMENTS = 1 << 22


def _finite_number(value, name: str, positive: bool = False) -> float:
    ok = np.isscalar(value) and np.isreal(value) and np.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    check(bool(ok), f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _as_features(features, allowed_ranks=(2, 4), name: str = "features") -> np.ndarray:
    """Validated array (dtype kept; callers convert chunk-wise to float64)."""
    x = np.asarray(features)
    check(x.ndim in allowed_ranks,
          f"{name} must have rank in {tuple(allowed_ranks)}, got shape {x.shape}")
    check(x.size > 0, f"{name} must not be empty, got shape {x.shape}")
    check(np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x),
          f"{name} must be real numbers, got dtype {x.dtype}")
    check(bool(np.isfinite(x).all()), f"{name} contains NaN or inf")
    return x


def _as_labels(labels, n: int, num_classes: int | None = None) -> np.ndarray:
    """Integer labels of shape [N] or [N, 1] -> int64 [N] in [0, num_classes)."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # the reference accepts [N, 1]
        y = y[:, 0]
    check(y.ndim == 1, f"labels must have shape [N] or [N, 1], got {np.shape(labels)}")
    check(y.shape[0] == n, f"labels has {y.shape[0]} entries but features has {n} rows")
    check(np.issubdtype(y.dtype, np.integer), f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    hi = np.iinfo(np.int64).max if num_classes is None else num_classes
    bad = (y < 0) | (y >= hi)
    check(not bad.any(), f"labels must lie in [0, {'inf' if num_classes is None else num_classes}), "
                         f"got {int(y[bad][0]) if bad.any() else None}")
    return y


def _as_observations(features) -> np.ndarray:
    """[N, C] or [N, C, H, W] -> [N, C, P] view with P observations per image."""
    x = _as_features(features)
    return x.reshape(x.shape[0], x.shape[1], -1)


# ---------------------------------------------------------------------------
# The scorers: each formula exists once, on one-vs-rest moment arrays [K, C].

def _gsd(mp, vp, mq, vq, npi, nqi, e):
    return 0.5 * (vp / (vq + e) + vq / (vp + e)) + 0.5 * (mp - mq) ** 2 / (vp + vq + e) - 1.0


def _abs_snr(mp, vp, mq, vq, npi, nqi, e):
    return np.abs(mp - mq) / (np.sqrt(vp) + np.sqrt(vq) + e)


def _fdr(mp, vp, mq, vq, npi, nqi, e):
    return (mp - mq) ** 2 / (vp + vq + e)


def _t_test(mp, vp, mq, vq, npi, nqi, e):
    return np.abs(mp - mq) / np.sqrt(vp / npi + vq / nqi + e)


# name -> (formula, default ridge of the reference)
_SCORERS = {"gsd": (_gsd, 0.05), "abs_snr": (_abs_snr, 1e-4),
            "fdr": (_fdr, 1e-4), "t_test": (_t_test, 1e-4)}


def _one_vs_rest(n_img, n_obs, mean, m2):
    """Per present class: (mp, vp, mq, vq, Np, Nq), arrays [K', C] / [K', 1].

    Q's moments come from the class moments without a second pass: with
    ``d_j = mean_j - m`` (m the global mean) and ``e = mean_Q - m = -n_c d_c / n_Q``,
    ``M2_Q = (sum_j M2_j - M2_c) + (sum_j n_j d_j^2 - n_c d_c^2 - n_Q e^2)``.
    Everything is centred, so no E[x^2]-E[x]^2 cancellation on offset data.
    """
    present = n_img > 0
    check(int(present.sum()) >= 2,
          f"labels must contain at least 2 classes, got {int(present.sum())}")
    n_img, n_obs = n_img[present].astype(np.float64), n_obs[present].astype(np.float64)
    mean, m2 = mean[present], m2[present]
    w = n_obs[:, None]
    m = (w * mean).sum(0) / n_obs.sum()
    d = mean - m
    between = w * d**2
    n_q = (n_obs.sum() - n_obs)[:, None]
    e = -w * d / n_q
    m2_q = (m2.sum(0) - m2) + (between.sum(0) - between - n_q * e**2)
    vq = np.maximum(m2_q, 0.0) / n_q  # clip rounding below zero; sqrt follows
    return mean, m2 / w, m + e, vq, n_img[:, None], (n_img.sum() - n_img)[:, None]


def spatial_sums(features) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-image spatial sum and Euclidean norm of each channel, ``(sums [n, C], norms [n, C], count)``,
    of ``[n, C, H, W]`` (or ``[n, C]``: count 1) features, in float64: the input of
    :meth:`ClassStats.update_sums`, and what the backends compute next to the convolutions.
    """
    a = np.asarray(features, np.float64)
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    return flat.sum(2), np.sqrt((flat * flat).sum(2)), flat.shape[2]


class ClassStats:
    """Streaming per-class, per-channel moments for the CDC scorers.

    ``update(features, labels)`` adds a batch (``[n, C]`` or ``[n, C, H, W]``,
    labels in ``[0, num_classes)``); ``scores(name, ridge=None)`` returns ``[C]``.
    Stored in float64: per class the image count ``n_img``, observation count
    ``n_obs``, and per class and channel the mean and ``m2`` (sum of squared
    deviations from the class mean). Batches (and chunks of a batch) are merged
    with Chan et al.'s parallel update, which stays exact where raw sums of
    squares would cancel on large-offset activations.
    """

    def __init__(self, num_classes: int, num_channels: int):
        for value, name in ((num_classes, "num_classes"), (num_channels, "num_channels")):
            check(isinstance(value, (int, np.integer)) and value >= 1,
                  f"{name} must be a positive integer, got {value!r}")
        self.num_classes, self.num_channels = int(num_classes), int(num_channels)
        self.n_img = np.zeros(self.num_classes, np.int64)
        self.n_obs = np.zeros(self.num_classes, np.int64)
        self.mean = np.zeros((self.num_classes, self.num_channels))
        self.m2 = np.zeros((self.num_classes, self.num_channels))

    def update(self, features, labels) -> ClassStats:
        x = _as_observations(features)
        check(x.shape[1] == self.num_channels,
              f"features has {x.shape[1]} channels, expected num_channels={self.num_channels}")
        return self._add(x, _as_labels(labels, x.shape[0], self.num_classes))

    def _add(self, x: np.ndarray, y: np.ndarray) -> ClassStats:
        """Merge validated ``x [n, C, P]``, ``y [n]`` chunk by chunk."""
        step = max(1, _CHUNK_ELEMENTS // (x.shape[1] * x.shape[2]))
        for i in range(0, x.shape[0], step):
            self._merge(np.asarray(x[i:i + step], np.float64), y[i:i + step])
        return self

    def _merge(self, x: np.ndarray, y: np.ndarray) -> None:
        mean_i = x.mean(2)
        self._merge_moments(mean_i, ((x - mean_i[:, :, None]) ** 2).sum(2), x.shape[2], y)

    def update_sums(self, sums, norms, count: int, labels) -> ClassStats:
        """Add a batch summarised per image by each channel's spatial sum and Euclidean norm
        (``[n, C]`` each) over ``count`` positions; see :func:`spatial_sums`.

        Backends compute the two reductions next to the convolutions, one read of each map
        apiece (an exact per-image ``m2`` takes three and made a scoring pass ~1.4x an
        inference pass), so a scoring pass never copies whole maps. Per class and batch,
        ``m2 = sum(norm^2) - sum(sum)^2 / N`` in float64: exact for exact inputs; a backend's
        float32 rounding of the reductions, relative ``eps``, becomes about
        ``eps * (1 + mean^2 / var)`` of the class's ``m2``. Batches merge exactly (Chan).
        """
        sums = _as_features(sums, (2,), "sums")
        norms = _as_features(norms, (2,), "norms")
        check(sums.shape == norms.shape and sums.shape[1] == self.num_channels,
              f"sums {sums.shape} and norms {norms.shape} must both be [n, {self.num_channels}]")
        check(isinstance(count, (int, np.integer)) and count >= 1, f"count must be a positive integer, got {count!r}")
        y = _as_labels(labels, sums.shape[0], self.num_classes)
        onehot = self._onehot(y)
        total = onehot.T @ np.asarray(sums, np.float64)
        squares = onehot.T @ np.square(np.asarray(norms, np.float64))
        nb_img = np.bincount(y, minlength=self.num_classes)
        nb = nb_img * int(count)
        mean_b = total / np.maximum(nb, 1)[:, None]
        self._fold(mean_b, np.maximum(squares - total * mean_b, 0.0), nb_img, nb)
        return self

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(n_img, n_obs, mean, m2)``: what :meth:`merge` takes."""
        return self.n_img, self.n_obs, self.mean, self.m2

    def merge(self, n_img, n_obs, mean, m2) -> ClassStats:
        """Fold in another accumulator's :meth:`moments` (Chan et al.): accumulators of parts of the
        data merged in order equal one over all of it up to float64 round-off."""
        check(np.shape(mean) == self.mean.shape and np.shape(m2) == self.mean.shape
              and np.shape(n_img) == np.shape(n_obs) == self.n_img.shape,
              f"merge: moments of shape {np.shape(mean)}, this accumulator's are {self.mean.shape}")
        self._fold(np.asarray(mean, np.float64), np.asarray(m2, np.float64), np.asarray(n_img, np.int64),
                   np.asarray(n_obs, np.int64))
        return self

    def _onehot(self, y: np.ndarray) -> np.ndarray:
        onehot = np.zeros((y.shape[0], self.num_classes))
        onehot[np.arange(y.shape[0]), y] = 1.0
        return onehot

    def _merge_moments(self, mean_i: np.ndarray, m2_i: np.ndarray, p: int, y: np.ndarray) -> None:
        """Per-image moments (``p`` observations each) to per-class moments of the batch, then folded in."""
        onehot = self._onehot(y)
        nb_img = np.bincount(y, minlength=self.num_classes)
        mean_b = onehot.T @ mean_i / np.maximum(nb_img, 1)[:, None]
        # deviations of each image's mean from its class mean, squared in place: fresh [n, C]
        # temporaries cost page faults that made this merge 4x slower
        dev = mean_b[y]
        np.subtract(mean_i, dev, out=dev)
        np.square(dev, out=dev)
        self._fold(mean_b, onehot.T @ m2_i + p * (onehot.T @ dev), nb_img, nb_img * p)

    def _fold(self, mean_b: np.ndarray, m2_b: np.ndarray, nb_img: np.ndarray, nb: np.ndarray) -> None:
        """Chan et al.'s merge of a batch's per-class moments (``nb`` observations) into the totals."""
        na = self.n_obs[:, None].astype(np.float64)
        n = na + nb[:, None]
        delta = mean_b - self.mean
        frac = np.where(n > 0, nb[:, None] / np.maximum(n, 1), 0.0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2_b + delta**2 * na * frac
        self.n_img += nb_img
        self.n_obs += nb

    def scores(self, name: str = "gsd", ridge: float | None = None) -> np.ndarray:
        """Channel scores ``[C]`` of scorer ``name`` (gsd, abs_snr, fdr, t_test).

        ``ridge=None`` uses the reference default (0.05 for gsd, else 1e-4).
        """
        check(name in _SCORERS, f"unknown scorer name {name!r}; valid: {', '.join(_SCORERS)}")
        formula, default = _SCORERS[name]
        e = _finite_number(default if ridge is None else ridge, "ridge")
        per_class = formula(*_one_vs_rest(self.n_img, self.n_obs, self.mean, self.m2), e)
        return per_class.mean(0)


def _batch(name: str, features, labels, ridge) -> np.ndarray:
    x = _as_observations(features)
    # dense class ids: absent classes are skipped anyway, and a stray large label
    # must not size the accumulator
    classes, y = np.unique(_as_labels(labels, x.shape[0]), return_inverse=True)
    stats = ClassStats(classes.size, x.shape[1])._add(x, y.reshape(-1))
    return stats.scores(name, ridge)


def gsd_scores(features, labels, ridge: float = 0.05) -> np.ndarray:
    """Generalized symmetric divergence (Pfunc='SymDiv', the CDC default), ``[C]``."""
    return _batch("gsd", features, labels, ridge)


def abs_snr_scores(features, labels, ridge: float = 1e-4) -> np.ndarray:
    """Absolute SNR ``|mp-mq| / (sp+sq+e)``, mean over classes, ``[C]``."""
    return _batch("abs_snr", features, labels, ridge)


def fdr_scores(features, labels, ridge: float = 1e-4) -> np.ndarray:
    """Fisher discriminant ratio ``(mp-mq)^2 / (vp+vq+e)``, mean over classes, ``[C]``."""
    return _batch("fdr", features, labels, ridge)


def t_test_scores(features, labels, ridge: float = 1e-4) -> np.ndarray:
    """Welch t statistic ``|mp-mq| / sqrt(vp/Np + vq/Nq + e)``; Np, Nq count IMAGES."""
    return _batch("t_test", features, labels, ridge)


def di_scores(features, labels, rho: float = 1e-4) -> np.ndarray:
    """Discriminant information per channel, ``[C]``.

    For channel k, each image is one vector ``x_i`` = the channel's flattened
    ``H*W`` map (``[N, C]`` input: a scalar). With ``m`` the mean, ``m_c`` the
    class means and ``n_c`` image counts::

        S_B  = sum_c n_c (m_c - m)(m_c - m)^T
        Sbar = sum_i (x_i - m)(x_i - m)^T          (total scatter)
        DI_k = tr[(Sbar + rho I)^-1 S_B]

    ``rho`` must be > 0. Batch only: it needs each channel's full ``HW x HW`` scatter. Classes with
    no image contribute nothing to ``S_B``; at least 2 classes must be present.
    """
    x = _as_observations(features)
    y = _as_labels(labels, x.shape[0])
    rho = _finite_number(rho, "rho", positive=True)  # > 0 keeps Sbar + rho I invertible
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    check(present.size >= 2, f"labels must contain at least 2 classes, got {present.size}")
    onehot = (y[:, None] == present[None, :]).astype(np.float64)  # [N, K']
    n_c = counts[present].astype(np.float64)
    out = np.empty(x.shape[1])
    for k in range(x.shape[1]):  # one channel at a time bounds memory to HW x HW
        xk = np.asarray(x[:, k, :], np.float64)
        xk = xk - xk.mean(0)  # centre first: scatter is shift invariant, this avoids cancellation
        sbar = xk.T @ xk + rho * np.eye(xk.shape[1])
        root = np.sqrt(n_c)[:, None] * (onehot.T @ xk) / n_c[:, None]  # rows sqrt(n_c)(m_c-m)
        # S_B = root^T root, so tr[Sbar^-1 S_B] = sum(root^T * Sbar^-1 root^T)
        out[k] = float(np.sum(root.T * np.linalg.solve(sbar, root.T)))
    return out


__all__ = ["ClassStats", "abs_snr_scores", "di_scores", "fdr_scores", "gsd_scores", "t_test_scores"]
