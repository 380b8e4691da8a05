"""A channel ``select`` in the ONNX export: a 1x1 conv with a 0/1 matrix where it reads few channels (ONNX
Runtime keeps it in its blocked layout), a Gather where it reads many, both picking exactly the values the
graph's semantics and the numpy oracle give."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from compress_core.ir import zoo
from compress_core.ir.init import init_params
from compress_core.ir.onnx_export import to_onnx
from compress_core.recipes import cdc
from tests import oracle


def _ort(graph, params, x):
    model = to_onnx(graph, params)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, session.run(None, {"input": x})[0]


def test_option_a_shortcut_and_cdc_selections_export_as_convs_with_the_oracles_logits():
    g = zoo.build("resnet20", 10, (3, 8, 8))
    params = init_params(g, 0)
    points = cdc.mask_points(g)
    # the reference's form: every block's first conv reads its share of the stream through a select
    small, sp = cdc.network(g, params, points, [max(1, p.width // 2) for p in points], "select")
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    for graph, ps in ((g, params), (small, sp)):
        selects = {n.name: n for n in graph.of_op("select")}
        # strided option-A shortcuts with zero channels (-1 sources); in the cut form, subsets of a stream
        assert any(-1 in n.attrs["src"] and n.attrs["stride"] == 2 for n in selects.values())
        model, got = _ort(graph, ps, x)
        ops = {n.name: n.op_type for n in model.graph.node}
        assert "Gather" not in ops.values() and all(ops[k] in ("Conv", "Identity") for k in selects)
        want = oracle.forward(graph, ps, x.astype(np.float64))[graph.output]
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5
    assert len(small.of_op("select")) > len(g.of_op("select"))


@pytest.mark.parametrize("cin", [4, 80])  # a 1x1 conv up to SELECT_CONV_MAX_IN input channels, a Gather beyond
def test_a_select_picks_values_exactly_and_writes_zeros_for_missing_sources(cin):
    from compress_core.ir.graph import SELECT_CONV_MAX_IN, Graph, Node

    g = Graph("sel", (cin, 4, 4), [Node("input", "input"),
                                   Node("s", "select", ("input",), {"src": (3, -1, 0, 3), "stride": 2})], "s")
    x = np.random.default_rng(1).normal(size=(2, cin, 4, 4)).astype(np.float32)
    model, got = _ort(g, {}, x)
    assert {n.op_type for n in model.graph.node} >= ({"Conv"} if cin <= SELECT_CONV_MAX_IN else {"Gather", "Slice", "Pad"})
    want = np.stack([x[:, 3], np.zeros_like(x[:, 0]), x[:, 0], x[:, 3]], 1)[:, :, ::2, ::2]
    assert np.array_equal(got, want)
