"""The adapter contract (backends/base.py), checked against a numpy oracle, for every backend."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import LossSpec, OptimSpec
from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.ir.graph import Graph
from tests import oracle
from tests.conftest import close, tiny_graph, trained_like


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 3, 9, 10)).astype(np.float32), rng.integers(0, 5, 6)


def _built_and_oracle(backend, g, x, taps):
    """``g`` at trained-like weights on ``backend``, run on ``x`` with ``taps``, and the oracle's tensors:
    ``(params, model, logits, taps' values, oracle's values)``."""
    params = trained_like(g)
    model = backend.build(g, params)
    logits, acts = backend.forward(model, x, taps)
    return params, model, logits, acts, oracle.forward(g, params, x)


def test_forward_and_taps_match_numpy_oracle(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    taps = ["r1", "sc", "cat", "s2", "flat", "bn3"]
    logits, acts = backend.forward(model, batch[0], taps)
    ref = oracle.forward(g, params, batch[0])
    assert logits.shape == (6, 5)
    assert close(ref["out"], logits) < 1e-5
    for t in taps:
        assert acts[t].shape == ref[t].shape, t  # taps come back NCHW
        assert close(ref[t], acts[t]) < 1e-5, t


def test_bn_batch_statistics_mode_matches_oracle_and_changes_nothing(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    logits, _ = backend.forward(model, batch[0], bn_batch_stats=True)
    assert close(oracle.forward(g, params, batch[0], bn_batch_stats=True)["out"], logits) < 1e-5
    after = backend.get_weights(model)
    assert all(np.array_equal(after[k], params[k]) for k in params)  # running stats untouched


def test_weights_round_trip_exactly_and_reject_wrong_shapes(backend):
    g = zoo.build("resnet20", 10, (3, 8, 8))
    params = trained_like(g, seed=3)
    model = backend.build(g, params)
    out = backend.get_weights(model)
    assert set(out) == set(g.param_shapes())
    assert all(np.array_equal(out[k], params[k]) and out[k].dtype == np.float32 for k in params)
    backend.set_weights(model, {"fc.bias": np.ones(10, np.float32)}, strict=False)
    assert np.array_equal(backend.get_weights(model)["fc.bias"], np.ones(10))
    with pytest.raises(UserError, match="fc.bias"):
        backend.set_weights(model, {"fc.bias": np.ones(3, np.float32)}, strict=False)
    with pytest.raises(UserError, match="missing"):
        backend.set_weights(model, {"fc.bias": np.ones(10, np.float32)})



def test_training_step_reports_terms_and_decreases_the_loss(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    trainer = backend.trainer(model, LossSpec(weight_decay=1e-3), OptimSpec(0.9, True))
    first = trainer.step(*batch, lr=0.05)
    assert set(first) == {"ce", "wd", "loss"}
    assert first["loss"] == pytest.approx(first["ce"] + first["wd"], rel=1e-6)
    # decay covers conv and dense weights and biases, not BatchNorm; values before the update
    decayed = [v for k, v in params.items() if g[k.rsplit(".", 1)[0]].op in ("conv", "dense")]
    assert first["wd"] == pytest.approx(0.5e-3 * sum(float((v.astype(np.float64) ** 2).sum())
                                                    for v in decayed), rel=1e-5)
    for _ in range(20):
        last = trainer.step(*batch, lr=0.05)
    assert last["ce"] < 0.5 * first["ce"]


def test_training_updates_running_statistics_like_pytorch(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    backend.trainer(model, LossSpec()).step(*batch, lr=0.0)
    ref = oracle.forward(g, params, batch[0], bn_batch_stats=True)
    z = ref["c1"]
    m = 0.1
    n = z.shape[0] * z.shape[2] * z.shape[3]
    want_mean = (1 - m) * params["bn1.running_mean"] + m * z.mean((0, 2, 3))
    want_var = (1 - m) * params["bn1.running_var"] + m * z.var((0, 2, 3)) * n / (n - 1)
    got = backend.get_weights(model)
    np.testing.assert_allclose(got["bn1.running_mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bn1.running_var"], want_var, rtol=1e-5, atol=1e-6)


def test_inference_follows_every_change_of_weights_and_statistics(backend, batch):
    """The inference pass (torch: a BN-folded copy of the weights, rebuilt on change) never runs on
    stale weights: after set_weights, a training step and a step that only moves BN statistics."""
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    x, y = batch
    backend.forward(model, x)
    changes = [lambda: backend.set_weights(model, trained_like(g, seed=1)),
               lambda: backend.trainer(model, LossSpec()).step(x, y, lr=0.1),
               lambda: backend.trainer(model, LossSpec()).step(x, y, lr=0.0)]
    for change in changes:
        before = backend.forward(model, x)[0]
        change()
        now = backend.get_weights(model)
        logits = backend.forward(model, x)[0]
        assert close(oracle.forward(g, now, x)["out"], logits) < 1e-5
        assert close(before, logits) > 1e-4  # each change moved the logits


def test_optimizer_state_round_trip_resumes_identically(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    a = backend.build(g, params)
    ta = backend.trainer(a, LossSpec(weight_decay=1e-3))
    ta.step(*batch, lr=0.05)
    b = backend.build(g, backend.get_weights(a))
    tb = backend.trainer(b, LossSpec(weight_decay=1e-3))
    tb.load_state(ta.state())
    ra, rb = ta.step(*batch, lr=0.05), tb.step(*batch, lr=0.05)
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
    wa, wb = backend.get_weights(a), backend.get_weights(b)
    assert max(close(wa[k], wb[k]) for k in wa) < 1e-6


def test_kd_term_is_zero_against_own_logits(backend, batch):
    g = tiny_graph()
    model = backend.build(g, trained_like(g))
    own = backend.forward(model, batch[0])[0]
    trainer = backend.trainer(model, LossSpec(kd_weight=1.0, kd_temperature=4.0, ce_weight=0.0))
    out = trainer.step(batch[0], batch[1], lr=0.0, teacher_logits=own)
    # training-mode BN differs from inference mode, so the student is not exactly its own teacher
    assert 0.0 <= out["kd"] < 1.0
    shifted = trainer.step(batch[0], batch[1], lr=0.0, teacher_logits=own * -5.0)
    assert shifted["kd"] > out["kd"]


def test_stream_yields_named_activations_batch_by_batch(backend, batch):
    g = tiny_graph()
    model = backend.build(g, trained_like(g))
    got = list(backend.stream(model, [(batch[0][:4], batch[1][:4]), (batch[0][4:], batch[1][4:])], ["r1"]))
    assert [a["r1"].shape[0] for a, _ in got] == [4, 2]
    with pytest.raises(UserError, match="nope"):
        list(backend.stream(model, [batch], ["nope"]))


def test_feature_term_matches_numpy(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    trainer = backend.trainer(model, LossSpec(ce_weight=0.0, feature_weight=0.5, feature_tap="r2"))
    rng = np.random.default_rng(4)
    proj = rng.normal(size=(8 * 5 * 6, 3)).astype(np.float32)
    target = rng.normal(size=(6, 3)).astype(np.float32)
    trainer.set_projection(proj)
    out = trainer.step(batch[0], batch[1], lr=0.0, feature_target=target)
    feats = oracle.forward(g, params, batch[0], bn_batch_stats=True)["r2"].reshape(6, -1)  # NCHW flatten
    assert out["feature"] == pytest.approx(0.5 * np.mean((feats @ proj - target) ** 2), rel=1e-4)
    with pytest.raises(UserError, match="nope"):
        backend.trainer(model, LossSpec(feature_weight=1.0, feature_tap="nope"))


@pytest.mark.parametrize("bn_batch_stats", [False, True])
def test_spatial_sums_are_the_sums_and_norms_of_the_taps(backend, batch, bn_batch_stats):
    from compress_core.criteria.discriminant import spatial_sums

    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    ref = oracle.forward(g, params, batch[0], bn_batch_stats=bn_batch_stats)
    got = backend.spatial_sums(model, batch[0], ["r1", "cat", "bn3"], bn_batch_stats)
    for tap in ("r1", "cat", "bn3"):
        want = spatial_sums(ref[tap])
        assert got[tap][2] == want[2]
        assert close(want[0], got[tap][0]) < 1e-5 and close(want[1], got[tap][1]) < 1e-5
    # the base class's numpy default (for a backend without its own reductions) agrees
    from backends.base import Backend

    default = Backend.spatial_sums(backend, model, batch[0], ["r1"], bn_batch_stats)
    assert close(default["r1"][1], got["r1"][1]) < 1e-5


# every conv form a model can hold, including those TensorFlow's CPU kernels lack without oneDNN
# (dilated and grouped gradients, depthwise with unequal strides): (k, stride, dilation, groups, out)
CONV_FORMS = {
    "dilated": ((3, 3), (1, 1), (2, 2), 1, 8),
    "dilated-strided": ((3, 3), (2, 2), (2, 1), 1, 8),
    "grouped-dilated": ((3, 3), (1, 1), (2, 2), 2, 8),
    "depthwise-dilated": ((3, 3), (1, 1), (2, 2), 4, 8),
    "depthwise-dilated-strided": ((3, 3), (2, 2), (2, 2), 4, 4),
    "depthwise-stride-2x1-kx1": ((3, 1), (2, 1), (1, 1), 4, 4),
    "depthwise-stride-1x2-1xk": ((1, 3), (1, 2), (1, 1), 4, 8),
    "depthwise-stride-1x3-kxk": ((3, 3), (1, 3), (1, 1), 4, 4),
    "depthwise-stride-2x1-dilated": ((3, 1), (2, 1), (2, 1), 4, 4),
}


@pytest.mark.parametrize("form", list(CONV_FORMS))
def test_every_conv_form_matches_the_oracle_and_trains(backend, form):
    from compress_core.ir.graph import Graph, Node, conv_node

    k, stride, dilation, groups, out = CONV_FORMS[form]
    pad = tuple(d * (kk - 1) // 2 for d, kk in zip(dilation, k))
    nodes = [Node("input", "input"),
             conv_node("c", "input", out, k=k, stride=stride, pad=pad, dilation=dilation, groups=groups, bias=True),
             Node("r", "relu", ("c",)), Node("g", "gap", ("r",)), Node("fc", "dense", ("g",), {"out": 3, "bias": True})]
    g = Graph("one", (4, 9, 11), nodes, "fc")
    x = np.random.default_rng(1).normal(size=(5, 4, 9, 11)).astype(np.float32)
    _, model, _, acts, ref = _built_and_oracle(backend, g, x, ["c"])
    assert acts["c"].shape == ref["c"].shape
    assert close(ref["c"], acts["c"]) < 1e-5
    trainer = backend.trainer(model, LossSpec(), OptimSpec(0.9, True))
    first = trainer.step(x, np.arange(5) % 3, lr=0.1)
    for _ in range(10):
        last = trainer.step(x, np.arange(5) % 3, lr=0.1)
    assert np.isfinite(first["loss"]) and last["loss"] < first["loss"]


def _imported_ops_graph():
    """The operators imported CNNs add: activations, a ceil-mode max-pool, squeeze-and-excitation
    (a 1x1 map, and a vector scale), dropout, a non-uniform adaptive average pool."""
    from compress_core.ir.graph import Graph, Node, bn_node, conv_node

    nodes = [Node("input", "input"),
             conv_node("c1", "input", 8, k=3, stride=1, bias=True), bn_node("bn1", "c1"),
             Node("hs", "hardswish", ("bn1",)),
             Node("mp", "maxpool", ("hs",), {"k": 3, "stride": 2, "pad": 1, "ceil": True}),
             Node("sq", "gap", ("mp",), {"keep": True}),
             conv_node("se1", "sq", 4, k=1, pad=0, bias=True), Node("r6", "relu6", ("se1",)),
             conv_node("se2", "r6", 8, k=1, pad=0, bias=True), Node("hsig", "hardsigmoid", ("se2",)),
             Node("scaled", "mul", ("mp", "hsig")), Node("si", "silu", ("scaled",)),
             Node("drop", "dropout", ("si",), {"p": 0.3, "mode": "row"}),
             Node("ap", "adaptive_avgpool", ("drop",), {"out": (3, 2)}),
             Node("sg", "sigmoid", ("ap",)),
             Node("v", "gap", ("drop",)), Node("vd", "dense", ("v",), {"out": 8, "bias": True}),
             Node("vs", "sigmoid", ("vd",)), Node("vm", "mul", ("vs", "sg")),
             Node("fl", "flatten", ("vm",)), Node("fc", "dense", ("fl",), {"out": 5, "bias": True})]
    return Graph("imported_ops", (3, 9, 10), nodes, "fc")


def test_imported_model_operators_match_the_oracle_and_train(backend, batch):
    g = _imported_ops_graph()
    assert g.shapes()["mp"] == (8, 5, 6) and g.shapes()["ap"] == (8, 3, 2)  # ceil mode: 10 -> 6, floor: 5
    params = trained_like(g)
    model = backend.build(g, params)
    taps = ["mp", "scaled", "ap", "vm"]
    logits, acts = backend.forward(model, batch[0], taps)
    ref = oracle.forward(g, params, batch[0])
    assert close(ref["fc"], logits) < 1e-5
    for t in taps:
        assert close(ref[t], acts[t]) < 1e-5, t
    trainer = backend.trainer(model, LossSpec(), OptimSpec(0.9, True))
    losses = [trainer.step(*batch, lr=0.05)["loss"] for _ in range(15)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # dropout is the identity at inference: the same logits twice
    assert np.array_equal(backend.forward(model, batch[0])[0], backend.forward(model, batch[0])[0])


def test_asymmetric_padding_matches_the_oracle_onnx_and_torch_export_and_trains(backend, batch):
    """TensorFlow's 'SAME' at stride 2 and ``ZeroPadding2D`` pad bottom/right more: convs (plain,
    depthwise, DCFF-fused) and pools with ``pad=(top, left, bottom, right)``."""
    import onnxruntime as ort

    from backends.torch.export import to_module
    from compress_core.ir.graph import Graph, Node, conv_node
    from compress_core.ir.onnx_export import to_onnx

    nodes = [Node("input", "input"),
             conv_node("c1", "input", 8, k=3, stride=2, pad=(0, 1, 1, 2), bias=True), Node("r1", "relu", ("c1",)),
             conv_node("dw", "r1", 8, k=3, stride=2, pad=(1, 0, 2, 1), groups=8),
             Node("mp", "maxpool", ("dw",), {"k": 2, "stride": 1, "pad": (0, 0, 1, 1)}),
             Node("ap", "avgpool", ("mp",), {"k": 3, "stride": 2, "pad": (1, 1, 0, 1)}),
             Node("fl", "flatten", ("ap",)), Node("fc", "dense", ("fl",), {"out": 5, "bias": True})]
    g = Graph("asym", (3, 9, 10), nodes, "fc")
    assert g.shapes()["c1"] == (8, 4, 6) and g.shapes()["dw"] == (8, 3, 3) and g.shapes()["ap"] == (8, 1, 2)
    params = trained_like(g)
    ref = oracle.forward(g, params, batch[0])
    model = backend.build(g, params)
    logits, acts = backend.forward(model, batch[0], ["c1", "dw", "mp", "ap"])
    assert close(ref["fc"], logits) < 1e-5
    assert all(close(ref[t], acts[t]) < 1e-5 for t in acts)
    if backend.name == "torch":  # the writers are backend-independent: checked once
        onnx_out = ort.InferenceSession(to_onnx(g, params).SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, {"input": batch[0]})[0]
        torch = pytest.importorskip("torch")
        with torch.no_grad():
            exported = to_module(g, params)(torch.as_tensor(batch[0])).numpy()
        assert close(ref["fc"], onnx_out) < 1e-5 and close(ref["fc"], exported) < 1e-5
    fused = g.replace([Node(n.name, n.op, n.inputs, {**n.attrs, "fused_from": 8}) if n.name == "c1" else n
                       for n in g.nodes])
    fp = dict(params, **{"c1.fusion": np.eye(8, dtype=np.float32)})
    assert close(ref["fc"], backend.forward(backend.build(fused, fp), batch[0])[0]) < 1e-5
    trainer = backend.trainer(model, LossSpec(), OptimSpec(0.9, True))
    losses = [trainer.step(*batch, lr=0.05)["loss"] for _ in range(10)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def _mixed_graphs():
    """Every operator and conv form, and a DCFF fused conv, for the mixed-precision contract."""
    from compress_core.ir.graph import Graph, Node, bn_node, conv_node

    convs = [Node("input", "input")]
    for i, (k, stride, dilation, groups, out) in enumerate(CONV_FORMS.values()):
        pad = tuple(d * (kk - 1) // 2 for d, kk in zip(dilation, k))
        convs += [conv_node(f"c{i}", "input", out, k=k, stride=stride, pad=pad, dilation=dilation, groups=groups,
                            bias=True), Node(f"g{i}", "gap", (f"c{i}",))]
    convs += [Node("cat", "concat", tuple(f"g{i}" for i in range(len(CONV_FORMS)))), bn_node("bn", "cat"),
              Node("fc", "dense", ("bn",), {"out": 5, "bias": True})]
    fused = [Node("input", "input"), conv_node("c", "input", 4, k=3, bias=True), bn_node("bn", "c"),
             Node("r", "relu", ("bn",)), Node("g", "gap", ("r",)), Node("fc", "diagonal", ("g",), {"out": 5, "bias": True})]
    fused[1].attrs["fused_from"] = 6
    imported = _imported_ops_graph()
    imported["drop"].attrs["p"] = 0.0  # random: two runs of one step would differ at any precision
    return {"tiny": tiny_graph(), "imported_ops": imported, "conv_forms": Graph("forms", (4, 9, 11), convs, "fc"),
            "fused": Graph("fused", (3, 9, 10), fused, "fc")}


def _float32_step(g, params, x, y, weight_decay):
    """The loss of a training step and the running statistics after it, in float64 by the oracle (a DCFF
    fused conv as the plain conv of its fused weights)."""
    from compress_core.recipes import dcff

    plain, plain_params = dcff.export(g, params)
    ref = oracle.forward(plain, plain_params, x, bn_batch_stats=True)
    z = ref[g.output] - ref[g.output].max(1, keepdims=True)
    ce = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    decay = 0.5 * weight_decay * sum(float((v.astype(np.float64) ** 2).sum()) for k, v in params.items()
                                     if not Graph.is_buffer(k) and g[k.rsplit(".", 1)[0]].op != "bn")
    stats = {}
    for n in plain.nodes:
        if n.op == "bn":
            a, m = ref[n.inputs[0]], n.attrs["momentum"]
            axes = (0, 2, 3) if a.ndim == 4 else (0,)
            count = a.size // a.shape[1]
            stats[f"{n.name}.running_mean"] = (1 - m) * params[f"{n.name}.running_mean"] + m * a.mean(axes)
            stats[f"{n.name}.running_var"] = ((1 - m) * params[f"{n.name}.running_var"]
                                              + m * a.var(axes) * count / (count - 1))
    return ce + decay, decay, stats


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_steps_keep_float32_weights_statistics_and_loss(backend, precision):
    # a bfloat16 product keeps 8 bits of mantissa, a float16 one 11: the step's loss and the BatchNorm
    # statistics (computed in float32 from low-precision activations) are that close to float64's
    tol = {"bfloat16": 3e-2, "float16": 4e-3}[precision]
    for name, g in _mixed_graphs().items():
        x = np.random.default_rng(1).normal(size=(6, *g.input_shape)).astype(np.float32)
        y = np.arange(6) % 5
        params = trained_like(g)
        if "c.fusion" in params:
            params["c.fusion"] = np.random.default_rng(2).uniform(0, 0.5, params["c.fusion"].shape).astype(np.float32)
        loss, decay, stats = _float32_step(g, params, x, y, 1e-3)
        model = backend.build(g, params)
        trainer = backend.trainer(model, LossSpec(weight_decay=1e-3), OptimSpec(precision=precision))
        got = trainer.step(x, y, lr=0.0)
        assert got["wd"] == pytest.approx(decay, rel=1e-5), name  # from the float32 master weights
        assert got["loss"] == pytest.approx(loss, rel=tol), name
        w = backend.get_weights(model)
        assert all(v.dtype == np.float32 for v in w.values())
        assert all(close(stats[k], w[k]) <= tol for k in stats), name
        losses = [trainer.step(x, y, lr=0.05)["loss"] for _ in range(6)]
        assert np.isfinite(losses).all() and losses[-1] < losses[0], (name, losses)


def test_float16_loss_scaling_skips_non_finite_steps_and_resumes(backend, batch):
    g = tiny_graph()
    params = trained_like(g)
    model = backend.build(g, params)
    trainer = backend.trainer(model, LossSpec(), OptimSpec(precision="float16"))
    trainer.step(*batch, lr=0.05)
    state = trainer.state()
    assert state["loss_scale/scale"][0] == 2.0 ** 16 and state["loss_scale/good_steps"][0] == 1
    # a scale that overflows float32's gradients: the step is skipped and the scale halved
    before = backend.get_weights(model)
    trainer.load_state({**state, "loss_scale/scale": np.array([3e38], np.float32)})
    out = trainer.step(*batch, lr=0.05)
    after = backend.get_weights(model)
    assert np.isfinite(out["loss"])
    assert all(np.array_equal(before[k], after[k]) for k in before if "running" not in k)
    state = trainer.state()
    assert state["loss_scale/scale"][0] == pytest.approx(1.5e38) and state["loss_scale/good_steps"][0] == 0
    # a float32 trainer resuming a float16 one ignores the scale
    backend.trainer(model, LossSpec()).load_state(state)


def test_a_missing_low_precision_kernel_is_a_one_line_error(backends, batch):
    """TensorFlow builds without oneDNN may lack bfloat16 kernels: the step says so instead of a traceback."""
    import tensorflow as tf

    b = backends["tf"]
    model = b.build(tiny_graph(), trained_like(tiny_graph()))
    trainer = b.trainer(model, LossSpec(), OptimSpec(precision="bfloat16"))
    session = model.session

    class NoKernel:
        def run(self, *args, **kwargs):
            raise tf.errors.NotFoundError(None, None, "No registered 'Conv2D' OpKernel for 'CPU' devices compatible "
                                                      "with node {{node c1}}\n(T=DT_BFLOAT16)")

        def close(self):
            session.close()

    model.session = NoKernel()
    with pytest.raises(UserError, match=r"no bfloat16 kernel .*Conv2D.*precision float32") as err:
        trainer.step(*batch, lr=0.1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cin", [16, 80])  # a 1x1 pick conv up to SELECT_CONV_MAX_IN input channels, a gather beyond
def test_wide_and_narrow_selects_match_the_oracle_and_train(backend, cin):
    from compress_core.ir.graph import SELECT_CONV_MAX_IN, Node, conv_node

    assert (cin > SELECT_CONV_MAX_IN) == (cin == 80)
    src = (cin - 1, -1, 0, 5, 5, 2)  # permuted, repeated and zero-filled, strided
    nodes = [Node("input", "input"), conv_node("c1", "input", cin, k=1),
             Node("s", "select", ("c1",), {"stride": 2, "src": src}), conv_node("c2", "s", 4, k=3),
             Node("g", "gap", ("c2",)), Node("out", "dense", ("g",), {"out": 3, "bias": True})]
    x = np.random.default_rng(2).normal(size=(4, 2, 6, 6)).astype(np.float32)
    params, model, logits, acts, ref = _built_and_oracle(backend, Graph("sel", (2, 6, 6), nodes, "out"), x, ["s"])
    assert close(ref["s"], acts["s"]) < 1e-6 and close(ref["out"], logits) < 1e-5
    loss = backend.trainer(model, LossSpec(), OptimSpec()).step(x, np.array([0, 1, 2, 0]), 0.1)["loss"]
    assert np.isfinite(loss)
    after = backend.get_weights(model)
    assert not np.array_equal(after["c1.weight"], params["c1.weight"])  # the gradient reached through the select
