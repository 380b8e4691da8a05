"""PyTorch backend: a module that interprets a :class:`~compress_core.ir.graph.Graph`.

Canonical layout is PyTorch's own, so weights pass through unchanged; the work
here is interpreting the graph and the training step of the contract.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

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
from backends.torch.export import _layer, to_module, torch_padding, trace
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
        super().__init__(cin, a["fused_from"], a["k"], a["stride"], torch_padding(a)[0], a["dilation"], 1, a["bias"])
        self.register_buffer("fusion", torch.zeros(a["out"], a["fused_from"]))

    def forward(self, x):
        w = (self.fusion @ self.weight.flatten(1)).view(-1, *self.weight.shape[1:])
        b = self.fusion @ self.bias if self.bias is not None else None
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)


class GraphModule(nn.Module):
    """The backend's module: the graph's layers (``layers[<name with '.' as '__'>]``) and, per kind of pass,
    straight-line ``torch.fx`` code over them (:func:`backends.torch.export.trace`: no per-node Python loop,
    every intermediate tensor released after its last reader). ``forward(x, taps, bn_batch_stats)`` returns
    ``(logits, {tap: tensor})``; train/eval mode is the layers' own (BN statistics, dropout)."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        cin = {n.name: graph.in_channels(n.name) for n in graph.nodes if n.inputs}
        layers = {}
        for n in graph.nodes:
            if n.op == "conv" and "fused_from" in n.attrs:
                layers[_key(n.name)] = FusedConv2d(cin[n.name], n.attrs)
            elif (layer := _layer(graph, n)) is not None:
                layers[_key(n.name)] = layer
        self.layers = nn.ModuleDict(layers)
        self._programs: dict[tuple, fx.GraphModule] = {}  # a plain dict: not registered as submodules

    def forward(self, x: torch.Tensor, taps: Sequence[str] = (), bn_batch_stats: bool = False):
        key = (tuple(taps), bool(bn_batch_stats))
        program = self._programs.get(key)
        if program is None:
            g = trace(self.graph, lambda name: f"layers.{_key(name)}", key[0], bn_batch_stats)
            program = self._programs[key] = fx.GraphModule(self, g)
        return program(x) if taps else (program(x), {})


class TorchModel(Model):
    def __init__(self, graph: Graph, module: GraphModule, device: torch.device):
        self.graph, self.module, self.device = graph, module, device
        # running statistics are written by the batch-norm kernel without a version bump; the step
        # counter beside them is bumped on every such write
        self._live = list(_tensors(module).values()) + [m.num_batches_tracked for m in module.modules()
                                                          if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._inference: tuple[tuple[int, ...], nn.Module] | None = None

    @property
    def inference(self) -> nn.Module:
        """The inference pass: :func:`backends.torch.export.to_module` of the current weights with each
        BatchNorm folded into its conv, in channels-last memory format (ResNet-56 on a 2-core CPU, batch 32:
        the interpreted pass 196 ms, straight-line code 132, + BN folding 115, + channels-last 74). Rebuilt
        when any weight or BN statistic changed since (in-place writes bump a tensor's version)."""
        versions = tuple(t._version for t in self._live)
        if self._inference is None or self._inference[0] != versions:
            params = {k: t.detach().cpu().numpy() for k, t in _tensors(self.module).items()}
            module = to_module(self.graph, params, fold_bn=True).to(self.device, memory_format=torch.channels_last)
            self._inference = (versions, module)
        return self._inference[1]


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


def _mode(module: nn.Module, training: bool) -> None:
    """Train or eval mode, set only when it changes: ``Module.train`` walks every submodule (ResNet-56:
    2 ms, twice per step when a training step went back to eval after itself). The module stays in
    training mode between steps; every inference path sets eval first."""
    if module.training != training:
        module.train(training)

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
    def __init__(self, model: TorchModel, loss: LossSpec, optim: OptimSpec, collective=None):
        self.model, self.loss, self.collective = model, loss, collective
        self.amp = _MixedPrecision(optim.check_precision(), model.device)
        if collective is not None and self.amp.scaler is not None:
            # the scaler would have to agree on skipped steps across ranks; bfloat16 needs no scaling
            raise UserError("float16 with loss scaling is not supported in data-parallel runs: use bfloat16")
        self.named = {k: t for k, t in _tensors(model.module).items() if not Graph.is_buffer(k)}
        self.decayed = [t for k, t in self.named.items() if model.graph[k.rsplit(".", 1)[0]].op != "bn"]
        # weight decay is reported as a loss term (as TF's); its gradient is added after the backward pass
        by_group: dict[tuple[str, float], list] = {}  # one param group per (lr group, multiplier)
        for k, key in optim.groups(list(self.named)).items():
            by_group.setdefault(key, []).append(self.named[k])
        self.opt = torch.optim.SGD([{"params": ts, "lr_group": g, "lr_scale": s} for (g, s), ts in by_group.items()],
                                   lr=0.0, momentum=optim.momentum, nesterov=optim.nesterov,
                                   foreach=True)  # on CPU the default is a Python loop over the tensors
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

    def _terms(self, x, y, teacher_logits, feature_target, shared: bool) -> dict[str, torch.Tensor]:
        """The loss terms of a batch in training mode but weight decay (:meth:`_add_decay`); ``shared``: the
        per-image terms as sums over the batch (a rank's share of a global batch)."""
        m, spec = self.model, self.loss
        _mode(m.module, True)
        taps = (spec.feature_tap,) if spec.feature_weight else ()
        with self.amp.autocast():
            logits, acts = m.module(torch.as_tensor(x, device=m.device), taps)
        # every loss term in float32, whatever the forward pass computed in
        logits, acts = logits.float(), {k: v.float() for k, v in acts.items()}
        target = torch.as_tensor(y, dtype=torch.long, device=m.device)
        terms = {}
        if spec.ce_weight:
            terms["ce"] = spec.ce_weight * F.cross_entropy(logits, target, reduction="sum" if shared else "mean")
        if spec.kd_weight:
            if teacher_logits is None:
                raise UserError("the loss has a kd term but no teacher logits were given")
            T = spec.kd_temperature
            t = torch.as_tensor(teacher_logits, device=m.device)
            kl = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(t / T, 1),
                          reduction="sum" if shared else "batchmean", log_target=True)
            terms["kd"] = spec.kd_weight * T * T * kl
        if spec.feature_weight:
            if feature_target is None or self.projection is None:
                raise UserError("the loss has a feature term but no projection or target was given")
            z = torch.flatten(acts[spec.feature_tap], 1) @ self.projection
            t = torch.as_tensor(np.asarray(feature_target, np.float32), device=m.device)
            sq = (z - t) ** 2
            terms["feature"] = spec.feature_weight * (sq.mean(1).sum() if shared else sq.mean())
        return terms

    def _add_decay(self, out: dict[str, float]) -> None:
        """Weight decay after the backward pass: its value ``0.5 * wd * sum(w^2)`` into ``out`` and its
        gradient ``wd * w`` into the gradients in one fused (foreach) call, no autograd. As a term of the
        loss it also cost its backward pass, small kernels per weight tensor and step."""
        wd = self.loss.weight_decay
        if not wd:
            return
        with torch.no_grad():
            # (t * t).sum(), not torch._foreach_norm: its float32 norms of VGG-16's tensors were 4.5e-5 off
            out["wd"] = 0.5 * wd * float(torch.stack([(t * t).sum() for t in self.decayed]).sum())
            for t in self.decayed:
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
            torch._foreach_add_([t.grad for t in self.decayed], self.decayed, alpha=wd)

    def _shared_backward(self, x, y, teacher_logits, feature_target) -> dict[str, float]:
        """Gradients of the global batch from this rank's rows: local sums of the per-image terms and
        their gradients, one all-reduce (with the image count), divided by the global count."""
        spec, device = self.loss, self.model.device
        names = [k for k, w in (("ce", spec.ce_weight), ("kd", spec.kd_weight), ("feature", spec.feature_weight))
                 if w]
        terms = self._terms(x, y, teacher_logits, feature_target, True) if len(y) else {}
        if terms:
            sum(terms.values()).backward()
        params = list(self.named.values())
        head = torch.tensor([float(len(y))] + [0.0] * len(names), device=device)
        for i, k in enumerate(names):
            if k in terms:
                head[i + 1] = terms[k].detach()
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [head])
        self.collective.all_reduce_tensor(flat)
        count, sums = flat[-len(head)], flat[-len(head) + 1:]
        offset = 0
        for p in params:
            p.grad = (flat[offset:offset + p.numel()] / count).view_as(p)
            offset += p.numel()
        return {k: float(sums[i] / count) for i, k in enumerate(names)}

    def step(self, x, y, lr, teacher_logits=None, feature_target=None):
        for group in self.opt.param_groups:
            group["lr"] = float(lr) * group["lr_scale"] * self.factors.get(group["lr_group"], 1.0)
        self.opt.zero_grad(set_to_none=True)
        if self.collective is None:
            terms = self._terms(x, y, teacher_logits, feature_target, False)
            self.amp.backward(sum(terms.values()), self.opt)
            out = {k: float(v.detach()) for k, v in terms.items()}
        else:
            out = self._shared_backward(x, y, teacher_logits, feature_target)
        self._add_decay(out)
        out["loss"] = sum(out[k] for k in ("ce", "wd", "kd", "feature") if k in out)
        self.last_grads = {k: _grad(self.named[k]) for k in self.grad_names}
        self.amp.step(self.opt)
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

    sync_bn = False

    def use_sync_bn(self):
        """``torch.nn.SyncBatchNorm`` in every model built in a data-parallel run: CUDA devices only (its
        kernels exist nowhere else)."""
        if self.device.type != "cuda":
            raise UserError(f"--sync-bn: torch's SyncBatchNorm runs on CUDA devices only, this run is on "
                            f"'{self.device.type}'")
        self.sync_bn = True

    def build(self, graph, params=None):
        module = GraphModule(graph)
        if self.sync_bn and self.collective is not None:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = module.to(self.device).eval()
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
        _mode(model.module, False)
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(x, np.float32), device=model.device)
            if not taps and not bn_batch_stats:
                if x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                return model.inference(x).cpu().numpy(), {}
            logits, acts = model.module(x, taps, bn_batch_stats)
        return logits.cpu().numpy(), {k: v.cpu().numpy() for k, v in acts.items()}

    def spatial_sums(self, model, x, taps, bn_batch_stats=False):
        _mode(model.module, False)
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
        return TorchTrainer(model, loss, optim or OptimSpec(), self.collective)

    def init_distributed(self, rank, world, workers=None, joined=None):
        """torch.distributed from torchrun's environment: NCCL on a GPU (``cuda:LOCAL_RANK``), else gloo."""
        from backends.torch.distributed import TorchCollective

        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        self.collective = joined or TorchCollective(rank, world, self.device)
        return self.collective

    export_formats = ("torch",)

    def export(self, graph, params, path, fmt, quantize=None):
        """``torch``: a ``torch.export`` program (``.pt2``, any batch size) of the plain module of
        :func:`backends.torch.export.to_module`; ``torch.export.load(path).module()`` runs it and its
        ``state_dict`` has the canonical names. (TorchScript, which the module also compiles to, is
        deprecated in torch 2.13.)"""
        if fmt not in self.export_formats:
            return super().export(graph, params, path, fmt)
        if quantize is not None:
            raise UserError(f"quantize='{quantize}': torch.export files are not quantised here")
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
