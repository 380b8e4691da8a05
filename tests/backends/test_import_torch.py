"""Bring your own PyTorch model: torchvision's classification families in, the same logits out of
both backends, ONNX Runtime and the exported TorchScript module; bad models are one-line errors.

Random initialisation (nothing is downloaded), with BatchNorm statistics and biases set as after
training so that every layer matters; small inputs keep the tests fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops
from compress_core.ir.onnx_export import to_onnx
from compress_core.surgery import channel_groups, mask, prune
from tests.conftest import close

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

FAMILIES = {  # name: constructor keywords (GoogLeNet: its auxiliary heads only run in training)
    "resnet18": {}, "resnet50": {}, "vgg16_bn": {}, "mobilenet_v2": {}, "mobilenet_v3_small": {},
    "googlenet": {"aux_logits": False, "init_weights": True}, "densenet121": {}, "resnext50_32x4d": {},
    "efficientnet_b0": {}, "regnet_x_400mf": {}}
SHAPE = (3, 32, 32)


def _trained_like(module, seed: int = 0):
    """Random weights with biases and BatchNorm affine parameters as after training, and BatchNorm
    statistics measured on random images (so activations keep their scale through deep networks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.momentum = None  # a cumulative average over the calibration batches
            elif isinstance(m, torch.nn.Linear):  # some families start their classifier at ~0
                bound = 3.0 / m.in_features ** 0.5
                m.weight.uniform_(-bound, bound, generator=g)
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1, generator=g)
        module.train()
        for _ in range(3):
            module(torch.randn(8, *SHAPE, generator=g))
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    return module.eval()


def _conv_dense_macs(module, x) -> int:
    """MACs counted independently, from the module's own layers and output sizes (forward hooks)."""
    total = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            total.append(out.shape[1] * out.shape[2] * out.shape[3] * m.weight[0].numel())
        else:
            total.append(m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return int(sum(total))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_torchvision_family_imports_with_equal_logits_everywhere(name, torchvision_models, backends, tmp_path):
    from backends.torch import from_module

    torch.manual_seed(0)
    module = _trained_like(getattr(torchvision_models, name)(weights=None, num_classes=10, **FAMILIES[name]))
    graph, params = from_module(module, SHAPE)
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.as_tensor(x)).numpy()
    assert np.ptp(want, axis=0).max() > 0.05  # the images' logits differ: the comparisons below mean something
    for be_name, be in backends.items():
        assert close(want, be.forward(be.build(graph, params), x)[0]) < 1e-4, be_name
    assert flops.count_params(graph) == sum(p.numel() for p in module.parameters())
    assert flops.count_macs(graph) == _conv_dense_macs(module, torch.as_tensor(x[:1]))
    assert set(params) == {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
    session = ort.InferenceSession(to_onnx(graph, params).SerializeToString(), providers=["CPUExecutionProvider"])
    assert close(want, session.run(None, {"input": x})[0]) < 1e-4
    # channel groups are found on the imported graph: a random cut equals the masked original
    groups = channel_groups(graph)
    rng = np.random.default_rng(1)
    keep = {g.id: np.sort(rng.choice(g.width, max(1, g.width // 2), replace=False)) for g in groups if g.cuttable}
    small, sp = prune(graph, params, keep, groups)
    be = backends["torch"]
    assert close(be.forward(be.build(*mask(graph, params, keep, groups)), x)[0],
                 be.forward(be.build(small, sp), x)[0]) < 1e-5
    assert flops.count_macs(small) < flops.count_macs(graph)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit.*")  # TorchScript is deprecated, still used
@pytest.mark.filterwarnings("ignore:The TorchScript type system")
def test_exported_torch_module_is_plain_scriptable_and_equal(torchvision_models, backends, tmp_path):
    from backends.torch import from_module
    from backends.torch.export import to_module

    module = _trained_like(torchvision_models.mobilenet_v3_small(weights=None, num_classes=10))
    graph, params = from_module(module, SHAPE)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32))
    plain = to_module(graph, params)
    assert type(plain).__module__ != "backends.torch.model"
    with torch.no_grad():
        want = module(x)
        assert isinstance(plain(x), torch.Tensor) and close(want, plain(x)) < 1e-5
        assert close(want, torch.jit.script(plain)(x)) < 1e-5
        assert close(want, torch.export.export(plain, (x,)).module()(x)) < 1e-5
    # the canonical names are the module's own: its state_dict loads into the export as it is
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")})
    path = str(tmp_path / "m.pt2")
    backends["torch"].export(graph, params, path, "torch")
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        assert close(want, loaded(x)) < 1e-5 and close(module(x[:1]), loaded(x[:1])) < 1e-5  # any batch size


def test_exported_module_with_selects_and_diagonals_imports_back(backends):
    """Our own exported layers (option-A shortcut selection, diagonal head) are importable again, as
    they are when another tool has re-pruned an exported module: the same graph, the same logits."""
    from backends.torch import from_module
    from backends.torch.export import to_module
    from compress_core.ir import zoo
    from compress_core.ir.init import init_params
    from compress_core.recipes.decompose import apply, diagonal_dense

    graph = zoo.build("resnet20", 10, (1, 8, 8))
    params = init_params(graph, 0)
    graph, params = apply(graph, params, [diagonal_dense(graph, params, "fc")])
    assert graph.of_op("select") and graph.of_op("diagonal")
    back, back_params = from_module(to_module(graph, params), (1, 8, 8))

    def wiring(g):  # function nodes are named by fx on the way back: compare positions
        at = {n.name: i for i, n in enumerate(g.nodes)}
        return [(n.op, [at[i] for i in n.inputs]) for n in g.nodes]

    assert wiring(back) == wiring(graph)
    assert [n.attrs for n in back.of_op("select")] == [n.attrs for n in graph.of_op("select")]
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    want = backends["torch"].forward(backends["torch"].build(graph, params), x)[0]
    assert close(want, backends["torch"].forward(backends["torch"].build(back, back_params), x)[0]) < 1e-5


class _Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU())

    def forward(self, x):
        return self.body(x).flatten(1)


class _Tuple(torch.nn.Module):
    def forward(self, x):
        return x, x


@pytest.mark.parametrize(("make", "shape", "needle"), [
    (_Unsupported, (3, 8, 8), "module GELU 'body.1'"),
    (_Tuple, (3, 8, 8), "returns tuple"),
    (lambda: torch.nn.Linear(3, 4), (3, 8, 8), "rejects inputs of shape (3, 8, 8)"),
    (lambda: "not a module", (3, 8, 8), "expected a torch.nn.Module, got str"),
])
def test_bad_models_are_one_line_errors(make, shape, needle):
    from backends.torch import from_module

    with pytest.raises(UserError) as e:
        from_module(make(), shape)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_zoo_mobilenetv2_is_torchvisions_and_loads_its_state_dict(torchvision_models, backends):
    """The zoo's MobileNetV2 has torchvision's layout and names: its state_dict loads as it is."""
    from compress_core.ir import zoo

    module = _trained_like(torchvision_models.mobilenet_v2(weights=None, num_classes=10))
    shape = (3, 96, 96)  # more than 64 pixels: ImageNet strides, as torchvision's
    graph = zoo.build("mobilenetv2", 10, shape)
    params = {k: v.detach().numpy() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.as_tensor(x)).numpy()
    for name, be in backends.items():
        assert close(want, be.forward(be.build(graph, params), x)[0]) < 1e-4, name
