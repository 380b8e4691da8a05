"""An imported Keras model on the TF backend against Keras running the same model.

For each ``keras.applications`` family (random weights, nothing is downloaded): the Keras model's
inference (``model(x, training=False)`` inside one ``tf.function``, the fast way to call a Keras
model; ``model.predict`` adds per-call overhead and is shown too) and the TF backend's ``forward`` on
``backends.tf.from_keras(model)``, timed in turns (median of ``--repeats``) at batch 1 and a
throughput batch; ratio = backend ms / Keras ms (below 1: the backend is faster). The logits are
checked equal first. Keras takes NHWC input, the backend NCHW: each side is fed its own layout
as a user would, from numpy.

    python benchmarks/keras_vs_backend.py [--size 96] [--batch 1 32] [--families MobileNetV2 ResNet50]
"""

from __future__ import annotations

import argparse

import numpy as np

FAMILIES = ("MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121", "VGG16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    a = ap.parse_args()
    import keras
    import tensorflow as tf

    from backends.base import get_backend
    from backends.tf import from_keras
    from methods.report import time_in_turns

    backend = get_backend("tf")
    print(f"{a.size}x{a.size}, 10 classes, median of {a.repeats}, timed in turns; ratio = backend / Keras tf.function")
    print(f"{'family':<16}" + "".join(f"{f'keras fn@{b}':>14}{f'predict@{b}':>12}{f'backend@{b}':>12}{'ratio':>7}"
                                      for b in a.batch))
    for name in a.families:
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, input_shape=(a.size, a.size, 3), classes=10,
                                                   classifier_activation=None)
        graph, params = from_keras(model)
        ours = backend.build(graph, params)
        call = tf.function(lambda x, model=model: model(x, training=False))
        cells = ""
        for b in a.batch:
            nhwc = np.random.default_rng(0).normal(size=(b, a.size, a.size, 3)).astype(np.float32)
            nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
            want = call(nhwc).numpy()
            got = backend.forward(ours, nchw)[0]
            assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name
            fn_ms, predict_ms, ours_ms = time_in_turns(
                [lambda x=nhwc, f=call: f(x).numpy(), lambda x=nhwc, m=model: m.predict(x, verbose=0),
                 lambda x=nchw, m=ours: backend.forward(m, x)], a.repeats)
            cells += f"{fn_ms:>14.2f}{predict_ms:>12.2f}{ours_ms:>12.2f}{ours_ms / fn_ms:>7.2f}"
        print(f"{name:<16}{cells}", flush=True)


if __name__ == "__main__":
    main()
