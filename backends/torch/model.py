"""PyTorch backend: a module that interprets a :class:`~compress_core.ir.graph.Graph`.

Canonical layout is PyTorch's own, so weights pass through unchanged; the work
here is interpreting the graph and the training step of the contract.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends.base import (
    LOSS_SCALE,
    Backend,
    LossSpec,
    Model,
    OptimSpec,
    Trainer,
    check_lr_groups,
    pick,
)
from compress_core.errors import UserError
from compress_core.ir.checkpoint import check_params
from compress_core.ir.graph import Graph
from compress_core.ir.init import init_params


def _key(name: str) -> str:
    # module names may not contain '.'; canonical names keep them
    return name.replace(".", "__")


class FusedConv2d(nn.Conv2d):
    """A DCFF fused conv: ``n`` raw filters, a ``fusion [out, n]`` buffer, a conv with ``fusion @ weight``."""

    def __init__(self, cin: int, a):
        super().__init__(cin, a["fused_from"], a["k"], a["stride"], a["pad"], a["dilation"], 1, a["bias"])
        self.register_buffer("fusion", torch.zeros(a["out"], a["fused_from"]))

    def forward(self, x):
        w = (self.fusion @ self.weight.flatten(1)).view(-1, *self.weight.shape[1:])
        b = self.fusion @ self.bias if self.bias is not None else None
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)


class Diagonal(nn.Module):
    """Graph op ``diagonal``: ``y_j = weight_j x_j (+ bias_j)`` for ``j < min(in, out)``, ``0 (+ bias_j)`` beyond."""

    def __init__(self, cin: int, out: int, bias: bool):
        super().__init__()
        self.out = out
        self.weight = nn.Parameter(torch.ones(min(cin, out)))
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    def forward(self, x):
        y = x[:, :self.weight.shape[0]] * self.weight
        if self.out > y.shape[1]:
            y = F.pad(y, (0, self.out - y.shape[1]))
        return y if self.bias is None else y + self.bias


_ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
                "silu": F.silu, "sigmoid": torch.sigmoid}


def _dropout(x: torch.Tensor, p: float, mode: str) -> torch.Tensor:
    """Training-mode dropout: elementwise, or ``row`` (stochastic depth: one draw per sample)."""
    if p <= 0.0:
        return x
    if mode == "element":
        return F.dropout(x, p, True)
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class GraphModule(nn.Module):
    """An ``nn.Module`` that runs the nodes of a graph in order."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        shapes = graph.shapes()
        layers = {}
        for n in graph.nodes:
            a = n.attrs
            cin = shapes[n.inputs[0]][0] if n.inputs else None
            if n.op == "conv" and "fused_from" in a:
                layers[_key(n.name)] = FusedConv2d(cin, a)
            elif n.op == "conv":
                layers[_key(n.name)] = nn.Conv2d(cin, a["out"], a["k"], a["stride"], a["pad"],
                                                 a["dilation"], a["groups"], a["bias"])
            elif n.op == "dense":
                layers[_key(n.name)] = nn.Linear(cin, a["out"], a["bias"])
            elif n.op == "diagonal":
                layers[_key(n.name)] = Diagonal(cin, a["out"], a["bias"])
            elif n.op == "bn":
                cls = nn.BatchNorm2d if len(shapes[n.inputs[0]]) == 3 else nn.BatchNorm1d
                layers[_key(n.name)] = cls(cin, eps=a["eps"], momentum=a["momentum"])
            elif n.op == "select":
                src = torch.tensor([j if j >= 0 else cin for j in a["src"]], dtype=torch.long)
                self.register_buffer(f"_src_{_key(n.name)}", src, persistent=False)
        self.layers = nn.ModuleDict(layers)

    def forward(self, x: torch.Tensor, taps: Sequence[str] = (), bn_batch_stats: bool = False):
        values = {"input": x}
        for n in self.graph.nodes[1:]:
            ins = [values[i] for i in n.inputs]
            a = n.attrs
            if n.op in ("conv", "dense", "diagonal"):
                y = self.layers[_key(n.name)](ins[0])
            elif n.op == "bn":
                m = self.layers[_key(n.name)]
                if bn_batch_stats and not self.training:
                    y = F.batch_norm(ins[0], None, None, m.weight, m.bias, True, 0.0, m.eps)
                else:
                    y = m(ins[0])
            elif n.op in _ACTIVATIONS:
                y = _ACTIVATIONS[n.op](ins[0])
            elif n.op == "mul":
                a_, b_ = ins
                if a_.dim() == 4 and b_.dim() == 2:
                    b_ = b_[:, :, None, None]
                elif b_.dim() == 4 and a_.dim() == 2:
                    a_ = a_[:, :, None, None]
                y = a_ * b_
            elif n.op == "dropout":
                y = _dropout(ins[0], a["p"], a.get("mode", "element")) if self.training else ins[0]
            elif n.op == "adaptive_avgpool":
                y = F.adaptive_avg_pool2d(ins[0], tuple(a["out"]))
            elif n.op == "add":
                y = ins[0]
                for other in ins[1:]:
                    y = y + other
            elif n.op == "concat":
                y = torch.cat(ins, dim=1)
            elif n.op == "gap":
                y = ins[0].mean(dim=(2, 3), keepdim=bool(a.get("keep", False)))
            elif n.op == "flatten":
                y = torch.flatten(ins[0], 1)
            elif n.op == "maxpool":
                y = F.max_pool2d(ins[0], a["k"], a["stride"], a.get("pad", 0), ceil_mode=bool(a.get("ceil", False)))
            elif n.op == "avgpool":
                y = F.avg_pool2d(ins[0], a["k"], a["stride"], a.get("pad", 0))
            elif n.op == "select":
                s = int(a["stride"])
                z = ins[0][:, :, ::s, ::s]
                z = torch.cat([z, z.new_zeros((z.shape[0], 1) + z.shape[2:])], dim=1)
                y = z.index_select(1, getattr(self, f"_src_{_key(n.name)}"))
            values[n.name] = y
        return values[self.graph.output], {t: values[t] for t in taps}


class TorchModel(Model):
    def __init__(self, graph: Graph, module: GraphModule, device: torch.device):
        self.graph, self.module, self.device = graph, module, device


def _tensors(module: GraphModule) -> dict[str, torch.Tensor]:
    """Canonical name -> the live parameter or buffer tensor."""
    out = {}
    for n in module.graph.nodes:
        if _key(n.name) not in module.layers:
            continue
        layer = module.layers[_key(n.name)]
        for attr in ("weight", "bias", "running_mean", "running_var", "fusion"):
            t = getattr(layer, attr, None)
            if isinstance(t, torch.Tensor):
                out[f"{n.name}.{attr}"] = t
    return out


def _grad(t: torch.Tensor) -> np.ndarray:
    return np.zeros(tuple(t.shape), np.float32) if t.grad is None else t.grad.detach().cpu().numpy().copy()


class _MixedPrecision:
    """``torch.autocast`` around a step's forward pass, and a ``GradScaler`` for float16.

    float16 autocast and loss scaling also run on the CPU (PyTorch emulates float16 arithmetic
    there, so they are slower than float32: they exist for parity with a GPU run, not speed).
    """

    def __init__(self, precision: str, device: torch.device):
        self.dtype = None if precision == "float32" else getattr(torch, precision)
        self.device_type = device.type
        self.scaler = None
        if precision == "float16":
            c = LOSS_SCALE
            self.scaler = torch.amp.GradScaler(device.type, init_scale=c["init"], growth_factor=c["growth"],
                                               backoff_factor=c["backoff"], growth_interval=c["growth_interval"])

    def autocast(self):
        return (torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None
                else contextlib.nullcontext())

    def backward(self, total: torch.Tensor, opt) -> None:
        """Gradients of ``total`` (scaled, then unscaled in place: what the step and ``gradients()`` see)."""
        if self.scaler is None:
            total.backward()
            return
        self.scaler.scale(total).backward()
        self.scaler.unscale_(opt)

    def step(self, opt) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)  # skipped when a gradient is not finite
        self.scaler.update()

    def state(self) -> dict[str, np.ndarray]:
        if self.scaler is None:
            return {}
        sd = self.scaler.state_dict()
        return {"loss_scale/scale": np.array([sd.get("scale", LOSS_SCALE["init"])], np.float32),
                "loss_scale/good_steps": np.array([sd.get("_growth_tracker", 0)], np.float32)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if self.scaler is not None and "loss_scale/scale" in state:
            self.scaler.load_state_dict({**self.scaler.state_dict(),
                                         "scale": float(state["loss_scale/scale"][0]),
                                         "_growth_tracker": int(state["loss_scale/good_steps"][0])})


class TorchTrainer(Trainer):
    def __init__(self, model: TorchModel, loss: LossSpec, optim: OptimSpec):
        self.model, self.loss = model, loss
        self.amp = _MixedPrecision(optim.check_precision(), model.device)
        self.named = {k: t for k, t in _tensors(model.module).items() if not Graph.is_buffer(k)}
        self.decayed = [t for k, t in self.named.items() if model.graph[k.rsplit(".", 1)[0]].op != "bn"]
        # weight decay is a loss term (so it is reported and identical to TF's), not an optimiser option
        by_group: dict[tuple[str, float], list] = {}  # one param group per (lr group, multiplier)
        for k, key in optim.groups(list(self.named)).items():
            by_group.setdefault(key, []).append(self.named[k])
        self.opt = torch.optim.SGD([{"params": ts, "lr_group": g, "lr_scale": s} for (g, s), ts in by_group.items()],
                                   lr=0.0, momentum=optim.momentum, nesterov=optim.nesterov)
        self.factors: dict[str, float] = {}
        self.grad_names, self.last_grads = tuple(optim.gradients_of), {}
        self.projection = None
        if loss.feature_weight:
            model.graph[loss.feature_tap]  # a clear error for an unknown tap

    def set_lr_factors(self, factors):
        self.factors.update(check_lr_groups(factors, (group["lr_group"] for group in self.opt.param_groups)))

    def gradients(self):
        return dict(self.last_grads)

    def set_projection(self, projection):
        self.projection = torch.as_tensor(np.asarray(projection, np.float32), device=self.model.device)

    def step(self, x, y, lr, teacher_logits=None, feature_target=None):
        m, spec = self.model, self.loss
        m.module.train()
        taps = (spec.feature_tap,) if spec.feature_weight else ()
        with self.amp.autocast():
            logits, acts = m.module(torch.as_tensor(x, device=m.device), taps)
        # every loss term in float32, whatever the forward pass computed in
        logits, acts = logits.float(), {k: v.float() for k, v in acts.items()}
        target = torch.as_tensor(y, dtype=torch.long, device=m.device)
        terms = {}
        if spec.ce_weight:
            terms["ce"] = spec.ce_weight * F.cross_entropy(logits, target)
        if spec.weight_decay:
            terms["wd"] = 0.5 * spec.weight_decay * sum((t * t).sum() for t in self.decayed)
        if spec.kd_weight:
            if teacher_logits is None:
                raise UserError("the loss has a kd term but no teacher logits were given")
            T = spec.kd_temperature
            t = torch.as_tensor(teacher_logits, device=m.device)
            kl = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                          log_target=True)
            terms["kd"] = spec.kd_weight * T * T * kl
        if spec.feature_weight:
            if feature_target is None or self.projection is None:
                raise UserError("the loss has a feature term but no projection or target was given")
            z = torch.flatten(acts[spec.feature_tap], 1) @ self.projection
            t = torch.as_tensor(np.asarray(feature_target, np.float32), device=m.device)
            terms["feature"] = spec.feature_weight * ((z - t) ** 2).mean()
        total = sum(terms.values())
        for group in self.opt.param_groups:
            group["lr"] = float(lr) * group["lr_scale"] * self.factors.get(group["lr_group"], 1.0)
        self.opt.zero_grad(set_to_none=True)
        self.amp.backward(total, self.opt)
        self.last_grads = {k: _grad(self.named[k]) for k in self.grad_names}
        self.amp.step(self.opt)
        m.module.eval()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(total.detach())
        return out

    def state(self):
        out = {}
        for k, t in self.named.items():
            buf = self.opt.state.get(t, {}).get("momentum_buffer")
            out[f"momentum/{k}"] = (buf.detach().cpu().numpy().copy() if buf is not None
                                    else np.zeros(tuple(t.shape), np.float32))
        return {**out, **self.amp.state()}

    def load_state(self, state):
        for k, t in self.named.items():
            v = state.get(f"momentum/{k}")
            if v is None or tuple(v.shape) != tuple(t.shape):
                raise UserError(f"optimiser state has no matching entry for '{k}'")
            self.opt.state[t]["momentum_buffer"] = torch.as_tensor(v, device=t.device).clone()
        self.amp.load_state(state)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str | None = None, threads: int | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if threads:
            torch.set_num_threads(threads)

    def build(self, graph, params=None):
        module = GraphModule(graph).to(self.device).eval()
        model = TorchModel(graph, module, self.device)
        self.set_weights(model, init_params(graph) if params is None else params)
        return model

    def get_weights(self, model, names=None):
        """All parameters and buffers, or only those in ``names`` (a proximal step reads a few per step)."""
        live = pick(_tensors(model.module), names, model.graph.arch)
        return {k: t.detach().cpu().numpy().astype(np.float32, copy=True) for k, t in live.items()}

    def set_weights(self, model, params: Mapping[str, np.ndarray], strict=True):
        live = _tensors(model.module)
        if strict:
            check_params(model.graph, params)
        with torch.no_grad():
            for k, v in params.items():
                if k not in live or tuple(live[k].shape) != tuple(np.shape(v)):
                    raise UserError(f"cannot set '{k}': model '{model.graph.arch}' has "
                                    f"{tuple(live[k].shape) if k in live else 'no such parameter'}")
                live[k].copy_(torch.as_tensor(np.asarray(v, np.float32)))

    def forward(self, model, x, taps=(), bn_batch_stats=False):
        model.module.eval()
        with torch.no_grad():
            logits, acts = model.module(torch.as_tensor(np.asarray(x, np.float32), device=model.device),
                                        taps, bn_batch_stats)
        return logits.cpu().numpy(), {k: v.cpu().numpy() for k, v in acts.items()}

    def spatial_sums(self, model, x, taps, bn_batch_stats=False):
        model.module.eval()
        out = {}
        with torch.no_grad():
            _, acts = model.module(torch.as_tensor(np.asarray(x, np.float32), device=model.device), taps,
                                   bn_batch_stats)
            for t, a in acts.items():
                # one read of the map per reduction; the exact two-pass m2 cost 1.4-1.5x an inference
                # pass, and torch.var_mean over the last axis of small maps is 10-30x slower on CPU
                flat = a.reshape(a.shape[0], a.shape[1], -1)
                out[t] = (flat.sum(2).cpu().numpy(), torch.linalg.vector_norm(flat, dim=2).cpu().numpy(),
                          flat.shape[2])
        return out

    def trainer(self, model, loss, optim=None):
        return TorchTrainer(model, loss, optim or OptimSpec())

    export_formats = ("torch",)

    def export(self, graph, params, path, fmt):
        """``torch``: a ``torch.export`` program (``.pt2``, any batch size) of the plain module of
        :func:`backends.torch.export.to_module`; ``torch.export.load(path).module()`` runs it and its
        ``state_dict`` has the canonical names. (TorchScript, which the module also compiles to, is
        deprecated in torch 2.13.)"""
        if fmt not in self.export_formats:
            return super().export(graph, params, path, fmt)
        import io

        from backends.torch.export import to_module
        from compress_core.fileio import atomic_write_bytes

        example = torch.zeros(2, *graph.input_shape)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(to_module(graph, params), (example,), dynamic_shapes={"x": {0: batch}})
        buf = io.BytesIO()
        torch.export.save(program, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_exported(self, path, fmt):
        if fmt not in self.export_formats:
            return super().load_exported(path, fmt)
        module = torch.export.load(path).module()

        def run(x):
            with torch.no_grad():
                return module(torch.as_tensor(np.asarray(x, np.float32))).cpu().numpy()
        return run
