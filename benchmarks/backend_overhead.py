"""Backend overhead: each backend against the same CIFAR ResNet written by hand in the same framework.

    python benchmarks/backend_overhead.py [--frameworks tf,torch] [--onednn both] [--quick]

ResNet-20 and ResNet-56 (the zoo's graphs, 3x32x32 inputs), batch 1 and 128, one
inference pass (``backend.forward``) and one training step (``Trainer.step`` with
cross-entropy + weight decay and Nesterov SGD, as the methods use it), ours against
a hand-written network with the same weights:

* TensorFlow: a ``tf.compat.v1`` graph and session in NHWC (the data fed as NHWC
  numpy, so converting the canonical NCHW input counts against our backend),
  ``tf.nn.conv2d`` with ``SAME`` padding (``tf.pad`` + ``VALID`` at stride 2, where
  ``SAME`` would pad asymmetrically and compute other numbers), ``fused_batch_norm``,
  the option-A shortcut as a strided slice and a channel ``tf.pad``, ``tf.nn.l2_loss``
  weight decay and ``MomentumOptimizer``, the running-statistic updates grouped with
  the training op;
* PyTorch: an ``nn.Module`` ResNet with the option-A shortcut (strided slice and
  ``F.pad``), ``eval()`` and ``torch.inference_mode()`` for inference, ``train()`` and
  ``torch.optim.SGD`` with ``weight_decay`` on the conv and dense parameters (the
  same update as our loss term) for training, inputs through ``torch.as_tensor``.

Both sides are fed numpy arrays and return numpy logits / a float loss. The hand-written
networks are checked first: the same logits as ours and, after one training step from the
same weights, the same loss and weights (assertions). Then, per cell, the two contestants run
in turns after warm-up calls (``methods.report.time_in_turns``) and the table shows median
times and ours / hand-written. Each framework runs in a process of its own (TensorFlow once per
oneDNN state: ``TF_ENABLE_ONEDNN_OPTS`` is read once, at import), so no thread pool of one
contestant idles beside another's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from any directory: this checkout's packages first
    sys.path.insert(0, ROOT)

from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.ir.init import init_params
from methods.report import time_in_turns

WEIGHT_DECAY, LR, MOMENTUM = 5e-4, 0.01, 0.9
STAGES = (16, 32, 64)


def benchmark_params(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded He-initialised weights with BatchNorm affine terms and running statistics as after training
    (so a wrong statistic or epsilon would show in the logits)."""
    rng = np.random.default_rng(seed + 1)
    params = init_params(graph, seed)
    for k, v in params.items():
        kind = k.rsplit(".", 1)[1]
        if graph[k.rsplit(".", 1)[0]].op != "bn":
            continue
        if kind in ("weight", "running_var"):
            params[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        else:
            params[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
    return params


def _blocks(depth: int):
    """``(prefix, cin, planes, stride)`` of every basic block of a CIFAR ResNet-``depth``."""
    n, cin = (depth - 2) // 6, 16
    for s, planes in enumerate(STAGES, start=1):
        for i in range(n):
            yield f"layer{s}.{i}", cin, planes, 2 if (s > 1 and i == 0) else 1
            cin = planes


# -- TensorFlow, by hand --------------------------------------------------------------------------------------
class HandTF:
    """A CIFAR ResNet as a TensorFlow user writes it in ``tf.compat.v1``: NHWC, one session, fused BatchNorm."""

    reports = "loss"  # step() returns cross-entropy + weight decay

    def __init__(self, depth: int, params: dict[str, np.ndarray]):
        import tensorflow as tf

        v1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            def var(name, value, trainable=True):
                return v1.get_variable(name.replace(".", "/"), initializer=value, trainable=trainable)

            W = {}
            for k, v in params.items():
                if v.ndim == 4:
                    v = np.transpose(v, (2, 3, 1, 0))  # OIHW -> HWIO
                elif v.ndim == 2:
                    v = v.T
                W[k] = var(k, np.ascontiguousarray(v), trainable="running" not in k)
            self.x = v1.placeholder(tf.float32, [None, 32, 32, 3])
            self.y = v1.placeholder(tf.int64, [None])
            self.lr = v1.placeholder(tf.float32, [])

            def conv(x, name, stride):
                if stride == 1:
                    return tf.nn.conv2d(x, W[f"{name}.weight"], 1, "SAME")
                # SAME at stride 2 pads only bottom/right: PyTorch's symmetric padding by hand
                return tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), W[f"{name}.weight"], stride, "VALID")

            def net(training: bool, updates: list):
                def bn(x, name):
                    g, b = W[f"{name}.weight"], W[f"{name}.bias"]
                    rm, rv = W[f"{name}.running_mean"], W[f"{name}.running_var"]
                    if not training:
                        return v1.nn.fused_batch_norm(x, g, b, rm, rv, epsilon=1e-5, is_training=False)[0]
                    y, mean, var_ = v1.nn.fused_batch_norm(x, g, b, epsilon=1e-5, is_training=True)
                    updates.append(rm.assign_sub(0.1 * (rm - mean)))
                    updates.append(rv.assign_sub(0.1 * (rv - var_)))
                    return y

                h = tf.nn.relu(bn(conv(self.x, "conv1", 1), "bn1"))
                for p, cin, planes, stride in _blocks(depth):
                    o = tf.nn.relu(bn(conv(h, f"{p}.conv1", stride), f"{p}.bn1"))
                    o = bn(conv(o, f"{p}.conv2", 1), f"{p}.bn2")
                    if stride != 1 or cin != planes:
                        pad = (planes - cin) // 2
                        h = tf.pad(h[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [pad, planes - cin - pad]])
                    h = tf.nn.relu(o + h)
                h = tf.reduce_mean(h, [1, 2])
                return tf.nn.bias_add(tf.matmul(h, W["fc.weight"]), W["fc.bias"])

            self.logits = net(False, [])
            updates: list = []
            train_logits = net(True, updates)
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.y, logits=train_logits))
            decayed = [w for k, w in W.items() if "bn" not in k]  # conv and dense weights, dense bias
            self.loss = ce + WEIGHT_DECAY * tf.add_n([tf.nn.l2_loss(w) for w in decayed])
            opt = v1.train.MomentumOptimizer(self.lr, MOMENTUM, use_nesterov=True)
            self.train_op = tf.group(opt.minimize(self.loss), *updates)
            self.variables = W
            init = v1.global_variables_initializer()
        self.session = v1.Session(graph=self.graph)
        self.session.run(init)

    def infer(self, x_nhwc: np.ndarray) -> np.ndarray:
        return self.session.run(self.logits, {self.x: x_nhwc})

    def step(self, x_nhwc: np.ndarray, y: np.ndarray) -> float:
        return float(self.session.run([self.train_op, self.loss], {self.x: x_nhwc, self.y: y, self.lr: LR})[1])

    def weights(self) -> dict[str, np.ndarray]:
        values = self.session.run(self.variables)
        return {k: np.transpose(v, (3, 2, 0, 1)) if v.ndim == 4 else v.T if v.ndim == 2 else v
                for k, v in values.items()}


# -- PyTorch, by hand -----------------------------------------------------------------------------------------
def hand_torch_module(depth: int, params: dict[str, np.ndarray]):
    """A CIFAR ResNet as a PyTorch user writes it (option-A shortcut), loaded with ``params``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.stride, self.pad = stride, (planes - cin) // 2
            self.reshape = stride != 1 or cin != planes

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.reshape:
                x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + x)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            blocks = list(_blocks(depth))
            n = len(blocks) // 3
            for s in range(3):
                setattr(self, f"layer{s + 1}", nn.Sequential(*(Block(cin, planes, stride)
                                                               for _, cin, planes, stride in blocks[s * n:(s + 1) * n])))
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    net = ResNet()
    state = {k: torch.as_tensor(v) for k, v in params.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return net


class HandTorch:
    """Inference and a training step of :func:`hand_torch_module` as a PyTorch user runs them."""

    reports = "ce"  # step() returns the cross-entropy (the optimiser applies the weight decay)

    def __init__(self, depth: int, params: dict[str, np.ndarray]):
        import torch

        self.torch = torch
        self.net = hand_torch_module(depth, params)
        decay = [p for k, p in self.net.named_parameters() if "bn" not in k]
        rest = [p for k, p in self.net.named_parameters() if "bn" in k]
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                    {"params": rest, "weight_decay": 0.0}],
                                   lr=LR, momentum=MOMENTUM, nesterov=True)

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(self.torch.as_tensor(x)).numpy()

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        import torch.nn.functional as F

        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(self.torch.as_tensor(x)), self.torch.as_tensor(y))
        loss.backward()
        self.opt.step()
        return loss.item()

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()
                if not k.endswith("num_batches_tracked")}


# -- the comparison -------------------------------------------------------------------------------------------
def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def _ours(framework: str, graph, params):
    from backends.base import LossSpec, OptimSpec, get_backend

    backend = get_backend(framework)
    model = backend.build(graph, params)
    return backend, model, backend.trainer(model, LossSpec(weight_decay=WEIGHT_DECAY), OptimSpec(MOMENTUM, True))


def _hand(framework: str, depth: int, params):
    return (HandTF if framework == "tf" else HandTorch)(depth, params)


def _feed(framework: str, x: np.ndarray) -> np.ndarray:
    """The hand-written side's input: NHWC for TensorFlow (a TF user's data), NCHW for PyTorch."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if framework == "tf" else x


def check_same_network(framework: str, depth: int, batch: int = 8) -> dict[str, float]:
    """Assert that the hand-written network computes our logits and, after one training step from the
    same weights, our loss and weights; returns the largest differences (relative to each array's scale)."""
    graph = zoo.build(f"resnet{depth}")
    params = benchmark_params(graph)
    backend, model, trainer = _ours(framework, graph, params)
    hand = _hand(framework, depth, params)
    x, y = _batch(batch, seed=1)
    ours_logits, hand_logits = backend.forward(model, x)[0], hand.infer(_feed(framework, x))
    diff = {"logits": float(np.max(np.abs(ours_logits - hand_logits)) / np.max(np.abs(ours_logits)))}
    assert diff["logits"] < 1e-4, f"{framework} resnet{depth}: hand-written logits differ ({diff['logits']:.2e})"
    ours_loss, hand_loss = trainer.step(x, y, LR)[hand.reports], hand.step(_feed(framework, x), y)
    diff["loss"] = abs(ours_loss - hand_loss) / abs(ours_loss)
    assert diff["loss"] < 1e-4, f"{framework} resnet{depth}: hand-written loss {hand_loss} vs ours {ours_loss}"
    ours_w, hand_w = backend.get_weights(model), hand.weights()
    assert ours_w.keys() == hand_w.keys()
    diff["weights"] = max(float(np.max(np.abs(ours_w[k] - hand_w[k])) / max(np.max(np.abs(ours_w[k])), 1e-12))
                          for k in ours_w)
    assert diff["weights"] < 1e-4, f"{framework} resnet{depth}: weights after one step differ ({diff['weights']:.2e})"
    return diff


def measure(framework: str, depth: int, batch: int, mode: str, seconds: float, max_repeats: int) -> dict:
    """Median times of ours and the hand-written network for one cell, timed in turns."""
    import time

    graph = zoo.build(f"resnet{depth}")
    params = benchmark_params(graph)
    backend, model, trainer = _ours(framework, graph, params)
    hand = _hand(framework, depth, params)
    x, y = _batch(batch)
    xh = _feed(framework, x)
    if mode == "infer":
        calls = [lambda: backend.forward(model, x), lambda: hand.infer(xh)]
    else:
        calls = [lambda: trainer.step(x, y, LR), lambda: hand.step(xh, y)]
    for call in calls:  # a session's first run builds its kernels: seconds that are not a pass's time
        call()
    start = time.perf_counter()
    for call in calls:
        call()
    # each repeat runs every contestant twice (an untimed call, then the timed one)
    per_repeat = 2 * (time.perf_counter() - start)
    repeats = int(np.clip(seconds / max(per_repeat, 1e-6), 5, max_repeats))
    ours_ms, hand_ms = time_in_turns(calls, repeats)
    return {"framework": framework, "model": f"resnet{depth}", "batch": batch, "mode": mode,
            "ours_ms": ours_ms, "hand_ms": hand_ms, "ratio": ours_ms / hand_ms, "repeats": repeats}


def onednn_enabled() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def worker(args) -> None:
    """One framework in this process: the checks, then every cell; JSON rows on the last line of stdout."""
    from tqdm import tqdm

    fw = args.worker
    if fw == "tf":
        import backends.tf  # noqa: F401 - TensorFlow's quiet import before anything else imports it
    header = {"framework": fw, "threads": os.cpu_count()}
    if fw == "tf":
        header["onednn"] = onednn_enabled()
    header["checks"] = {f"resnet{d}": check_same_network(fw, d) for d in args.depths}
    cells = [(d, b, m) for d in args.depths for b in args.batches for m in ("infer", "train")]
    rows = [dict(measure(fw, d, b, m, args.seconds, args.max_repeats), **header)
            for d, b, m in tqdm(cells, desc=f"{fw}{' oneDNN ' + str(header.get('onednn')) if fw == 'tf' else ''}",
                                file=sys.stderr)]
    print(json.dumps({"header": header, "rows": rows}))


def run_worker(framework: str, args, onednn: str | None) -> dict:
    env = dict(os.environ)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework,
           "--depths", *map(str, args.depths), "--batches", *map(str, args.batches),
           "--seconds", str(args.seconds), "--max-repeats", str(args.max_repeats)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{framework} worker failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_rows(results: list[dict]) -> str:
    head = (f"{'framework':<10}{'oneDNN':<8}{'model':<10}{'batch':>6}  {'pass':<7}{'ours ms':>10}{'hand ms':>10}"
            f"{'ours/hand':>11}{'repeats':>9}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["rows"]:
            onednn = ("on" if r["onednn"] else "off") if "onednn" in r else "-"
            lines.append(f"{r['framework']:<10}{onednn:<8}{r['model']:<10}{r['batch']:>6}  {r['mode']:<7}"
                         f"{r['ours_ms']:>10.2f}{r['hand_ms']:>10.2f}{r['ratio']:>11.3f}{r['repeats']:>9}")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frameworks", default="tf,torch", help="comma-separated: tf, torch")
    p.add_argument("--onednn", default="both", choices=("both", "on", "off", "default"),
                   help="TensorFlow's oneDNN state(s) (TF_ENABLE_ONEDNN_OPTS per TF process)")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56], help="CIFAR ResNet depths")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per cell (sets the repeats)")
    p.add_argument("--max-repeats", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="smoke run: ResNet-20, batches 1 and 8, 5 repeats")
    p.add_argument("--worker", choices=("tf", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in frameworks if f not in ("tf", "torch")]
    if bad or not frameworks:
        raise UserError(f"--frameworks: unknown framework {bad[0] if bad else args.frameworks!r} (tf, torch)")
    for d in args.depths:
        if d not in zoo.CIFAR_RESNET_DEPTHS:
            raise UserError(f"--depths: {d} is not a CIFAR ResNet depth {zoo.CIFAR_RESNET_DEPTHS}")
    if any(b < 1 for b in args.batches):
        raise UserError(f"--batches: batch sizes must be positive, got {args.batches}")
    if args.quick:
        args.depths, args.batches, args.seconds, args.max_repeats = [20], [1, 8], 0.0, 5
    args.frameworks = frameworks
    return args


def main(argv=None) -> None:
    try:
        args = parse(argv)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if args.worker:
        return worker(args)
    states = {"both": ["1", "0"], "on": ["1"], "off": ["0"], "default": [None]}[args.onednn]
    results = []
    for fw in args.frameworks:
        for state in (states if fw == "tf" else [None]):
            results.append(run_worker(fw, args, state))
    print(f"CIFAR ResNets 3x32x32, {os.cpu_count()} CPU threads; median ms of each pass, ours and hand-written "
          f"timed in turns in one process per framework (and oneDNN state)")
    print(format_rows(results))
    for res in results:
        h = res["header"]
        checks = ", ".join(f"{m}: logits {c['logits']:.1e}, loss {c['loss']:.1e}, weights {c['weights']:.1e}"
                           for m, c in h["checks"].items())
        print(f"checked {h['framework']}{' oneDNN ' + ('on' if h['onednn'] else 'off') if 'onednn' in h else ''}: "
              f"hand-written = ours ({checks}; largest relative differences)")


if __name__ == "__main__":
    main()
