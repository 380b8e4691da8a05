"""Parameter initialisation in numpy, so both backends start from the same network."""

from __future__ import annotations

import numpy as np

from compress_core.ir.graph import Graph


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded initial values for every parameter and buffer of ``graph`` (float32, canonical).

    Convolutions: He normal, ``std = sqrt(2 / fan_in)`` (ReLU networks); dense:
    uniform in ``+-1/sqrt(fan_in)`` (the PyTorch default); diagonal: 1; biases 0; BatchNorm
    gamma 1, beta 0, running mean 0, running variance 1.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in graph.param_shapes().items():
        kind = name.rsplit(".", 1)[1]
        node = graph[name.rsplit(".", 1)[0]]
        if node.op == "bn":
            value = np.ones(shape) if kind in ("weight", "running_var") else np.zeros(shape)
        elif kind == "bias":
            value = np.zeros(shape)
        elif node.op == "diagonal":  # one weight per output: the identity on the first min(in, out) values
            value = np.ones(shape)
        elif node.op == "conv":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), size=shape)
        else:
            bound = 1.0 / np.sqrt(shape[1])
            value = rng.uniform(-bound, bound, size=shape)
        out[name] = value.astype(np.float32)
    return out
