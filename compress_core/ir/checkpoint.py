"""Checkpoints: safetensors files holding canonical weights and the model graph.

A checkpoint is self-describing: its metadata carries the :class:`Graph` as JSON,
so a pruned or decomposed network loads without knowing how it was made, and a
checkpoint written by one backend loads in the other (names and layouts are
canonical). Files are written atomically: a crash never leaves half a file
under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from compress_core.errors import UserError
from compress_core.fileio import atomic_write_bytes
from compress_core.ir.graph import Graph

FORMAT = "compress-ckpt/1"


def check_params(graph: Graph, params: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise :class:`UserError` unless ``params`` has exactly the graph's names and shapes."""
    expected = graph.param_shapes()
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise UserError(f"{source} do not match model '{graph.arch}': "
                        f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise UserError(f"{source}: '{k}' has shape {tuple(params[k].shape)}, "
                            f"model '{graph.arch}' expects {shape}")


def save_checkpoint(path: str, graph: Graph, params: Mapping[str, np.ndarray],
                    meta: Mapping | None = None) -> None:
    """Write ``params`` (canonical names and layouts) and ``graph`` to ``path``."""
    from safetensors.numpy import save

    check_params(graph, params)
    tensors = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in graph.param_shapes()}
    header = {"format": FORMAT, "graph": graph.to_json(), "meta": json.dumps(dict(meta or {}))}
    atomic_write_bytes(path, save(tensors, metadata=header))


def load_checkpoint(path: str) -> tuple[Graph, dict[str, np.ndarray], dict]:
    """Read a checkpoint: ``(graph, params, meta)``; bad files raise :class:`UserError`."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="np") as f:
            header = f.metadata() or {}
            params = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"corrupt or unreadable checkpoint {path}: {str(e).splitlines()[0]}") from None
    if header.get("format") != FORMAT or "graph" not in header:
        raise UserError(f"{path} is not a checkpoint of this library (format {header.get('format')!r})")
    try:
        graph = Graph.from_json(header["graph"])
        graph.param_shapes()  # infers every shape: a graph with missing or bad attributes fails here
        meta = json.loads(header.get("meta", "{}"))
        if not isinstance(meta, dict):
            raise TypeError("metadata is not a JSON object")
    except UserError as e:
        raise UserError(f"checkpoint {path} holds an invalid graph: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"checkpoint {path} has a corrupt graph or metadata "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    check_params(graph, params, source=f"checkpoint {path}")
    return graph, params, meta


def check_finite(params: Mapping[str, np.ndarray], source: str) -> None:
    """Raise :class:`UserError` naming the first parameter with a NaN or infinite value."""
    for k, v in params.items():
        if not np.all(np.isfinite(v)):
            raise UserError(f"{source}: '{k}' has NaN or infinite values")


def save_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write plain named arrays (optimiser state) atomically as safetensors."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def load_arrays(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    return load_file(path)
