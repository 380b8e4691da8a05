"""TensorFlow and PyTorch on the same checkpoint and batches give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import LossSpec, OptimSpec
from compress_core.ir import checkpoint, flops, zoo
from tests.conftest import close, trained_like

pytestmark = pytest.mark.parity

# the ImageNet and very wide models have parity tests of their own at sizes a 2-core CI can afford
# (tests/core/test_resnet50_imagenet.py, tests/core/test_zoo_hinge.py)
HEAVY = {"resnet50", "resnext164", "wrn16_10"}
MODELS = sorted(set(zoo.MODELS) - HEAVY)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)


@pytest.mark.parametrize("name", MODELS)
def test_same_checkpoint_same_logits_and_costs(name, backends, batch, tmp_path):
    g = zoo.build(name, 10, (3, 32, 32))
    params = trained_like(g)
    path = str(tmp_path / "ckpt.safetensors")
    # written from the torch model, loaded by TF: the cross-backend checkpoint path
    torch_model = backends["torch"].build(g, params)
    checkpoint.save_checkpoint(path, g, backends["torch"].get_weights(torch_model))
    g2, loaded, _ = checkpoint.load_checkpoint(path)
    tf_model = backends["tf"].build(g2, loaded)
    lt = backends["torch"].forward(torch_model, batch[0])[0]
    lf = backends["tf"].forward(tf_model, batch[0])[0]
    assert close(lt, lf) < 1e-4
    assert np.array_equal(lt.argmax(1), lf.argmax(1))
    assert flops.summary(torch_model.graph) == flops.summary(tf_model.graph)


# One step, as the contract states it. Later steps are not compared: a batch-statistics value within
# float32 round-off of zero can fall on either side of a ReLU in the two frameworks and flip one
# element's gradient (seen on VGG-16 at the second step). The bottleneck family is checked at depth 20:
# at depth 164 with random weights the float32 gradient of the stem differs from float64 by ~3% within
# PyTorch alone (exploding pre-activation gradients), so no two float32 implementations can agree to
# 1e-4 there; logits (above) are checked at full depth.
SGD_MODELS = {"resnet20": lambda: zoo.build("resnet20", 10, (3, 16, 16)),
              "resnet56": lambda: zoo.build("resnet56", 10, (3, 16, 16)),
              "resnet20-bottleneck": lambda: zoo.resnet164(10, (3, 16, 16), depth=20),
              "vgg16": lambda: zoo.build("vgg16", 10, (3, 16, 16)),
              "densenet40": lambda: zoo.build("densenet40", 10, (3, 16, 16))}


@pytest.mark.parametrize("name", sorted(SGD_MODELS))
def test_one_sgd_step_same_loss_and_weights(name, backends, tmp_path):
    g = SGD_MODELS[name]()
    params = trained_like(g, seed=2)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 8)
    out, weights, moms = {}, {}, {}
    for bname, b in backends.items():
        m = b.build(g, params)
        tr = b.trainer(m, LossSpec(weight_decay=5e-4), OptimSpec(0.9, True))
        out[bname] = tr.step(x, y, lr=0.01)
        weights[bname], moms[bname] = b.get_weights(m), tr.state()
    assert out["tf"]["loss"] == pytest.approx(out["torch"]["loss"], rel=1e-4)
    assert out["tf"]["wd"] == pytest.approx(out["torch"]["wd"], rel=1e-5)
    assert max(close(weights["torch"][k], weights["tf"][k]) for k in params) < 1e-4
    # the momentum buffers (gradients plus weight decay, what the next step builds on), relative to
    # the largest gradient: float32 gradients of a deep net agree to ~1e-5 of their scale
    assert moms["torch"].keys() == moms["tf"].keys()
    scale = max(float(np.max(np.abs(v))) for v in moms["torch"].values())
    assert max(float(np.max(np.abs(moms["torch"][k] - moms["tf"][k]))) for k in moms["torch"]) < 1e-3 * scale


def test_checkpoint_written_by_tf_loads_in_torch(backends, batch, tmp_path):
    g = zoo.build("resnet20", 10, (3, 32, 32))
    tf_model = backends["tf"].build(g, trained_like(g, seed=5))
    path = str(tmp_path / "tf.safetensors")
    checkpoint.save_checkpoint(path, g, backends["tf"].get_weights(tf_model))
    torch_model = backends["torch"].build(*checkpoint.load_checkpoint(path)[:2])
    assert close(backends["tf"].forward(tf_model, batch[0])[0],
                 backends["torch"].forward(torch_model, batch[0])[0]) < 1e-4
