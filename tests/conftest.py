"""Shared fixtures: one contract suite runs against every backend."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.ir.graph import Graph, Node, bn_node, conv_node
from compress_core.ir.init import init_params

BACKEND_NAMES = ("torch", "tf")


@pytest.fixture(scope="session", params=BACKEND_NAMES)
def backend(request):
    """Each backend in turn; a backend that fails to import fails the suite (CI installs both)."""
    from backends.base import get_backend

    return get_backend(request.param)


@pytest.fixture(scope="session")
def backends():
    from backends.base import get_backend

    return {name: get_backend(name) for name in BACKEND_NAMES}


def trained_like(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights with non-trivial BatchNorm statistics and biases, as after training."""
    rng = np.random.default_rng(seed + 1)
    params = init_params(graph, seed)
    for k, v in params.items():
        kind = k.rsplit(".", 1)[1]
        if kind in ("running_var", "weight") and graph[k.rsplit(".", 1)[0]].op == "bn":
            params[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        elif kind in ("running_mean", "bias"):
            params[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
    return params


def digits_teacher(directory, seed: int) -> str:
    """A digits ResNet-20 checkpoint in ``directory`` (seeded weights stand in for a trained network)."""
    from compress_core.ir import checkpoint, zoo

    g = zoo.build("resnet20", 10, (1, 8, 8))
    path = str(directory / "teacher.safetensors")
    checkpoint.save_checkpoint(path, g, trained_like(g, seed=seed))
    return path


def tiny_graph() -> Graph:
    """Every operator once, with the awkward cases: stride 2 with asymmetric padding,
    dilation, groups, a permuting/zero-filling select, concat, both pools, flatten
    order before a dense layer, BatchNorm on vectors."""
    perm = (3, 1, -1, 0, 7, 6, 5, 4)
    nodes = [
        Node("input", "input"),
        conv_node("c1", "input", 8, k=3, stride=2, pad=(1, 2), bias=True),
        bn_node("bn1", "c1"), Node("r1", "relu", ("bn1",)),
        conv_node("c2", "r1", 8, k=3, dilation=2),
        bn_node("bn2", "c2"),
        Node("sc", "select", ("r1",), {"stride": 1, "src": perm}),
        Node("add", "add", ("bn2", "sc")), Node("r2", "relu", ("add",)),
        conv_node("c3", "r2", 8, k=(1, 3), groups=2),
        Node("cat", "concat", ("r2", "c3")),
        Node("mp", "maxpool", ("cat",), {"k": 2, "stride": 2}),
        Node("flat", "flatten", ("mp",)),
        Node("d1", "dense", ("flat",), {"out": 10, "bias": True}),
        Node("s2", "select", ("cat",), {"stride": 2, "src": tuple(range(15, -1, -1))}),
        Node("ap", "avgpool", ("s2",), {"k": 2, "stride": 1}),
        Node("g", "gap", ("ap",)),
        Node("d2", "dense", ("g",), {"out": 10, "bias": False}),
        Node("sum", "add", ("d1", "d2")),
        bn_node("bn3", "sum"), Node("r3", "relu", ("bn3",)),
        Node("out", "dense", ("r3",), {"out": 5, "bias": True}),
    ]
    return Graph("tiny", (3, 9, 10), nodes, "out")


def close(a, b, tol=1e-4) -> float:
    """Largest difference relative to the scale of ``a`` (at least 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))


@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models``, a test-only dependency (random initialisation: nothing is downloaded),
    importable beside this torch even from a torchvision built for another (backends.torch.compat)."""
    from backends.torch.compat import torchvision_models

    return torchvision_models()


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` of a run folder read by TensorBoard's own loader (restart purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
