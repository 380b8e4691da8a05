"""A slow, obviously-correct numpy interpreter of graphs: the reference the backends are tested against."""

from __future__ import annotations

import numpy as np

from compress_core.ir.graph import Graph, pads


def _conv(x, w, b, stride, pad, dilation, groups):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    top, left, bottom, right = pads({"pad": pad})
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (ho - 1) + 1: stride[0],
                           j * dilation[1]: j * dilation[1] + stride[1] * (wo - 1) + 1: stride[1]]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def _pool(x, k, s, fn, pad=0, ceil=False, fill=0.0):
    """Pooling with PyTorch's rules: ``pad`` (a graph's: symmetric or top/left/bottom/right) filled with
    ``fill`` (-inf for max, zeros that count in a mean), ``ceil`` mode windows that may run past the input
    (never starting in the right padding), ``k``/``s`` ints or pairs."""
    k, s = (np.broadcast_to(v, 2).astype(int) for v in (k, s))
    t, left, b, r = pads({"pad": pad})
    h, w = x.shape[2:]
    out = []
    for size, kk, ss, pp, pe in ((h, k[0], s[0], t, b), (w, k[1], s[1], left, r)):
        n = (size + pp + pe - kk) // ss + 1
        if ceil:
            n = -(-(size + pp + pe - kk) // ss) + 1
            n -= (n - 1) * ss >= size + pp
        out.append(n)
    extra = [max(0, (o - 1) * ss + kk - size - p0 - p1)
             for o, ss, kk, size, p0, p1 in zip(out, s, k, (h, w), (t, left), (b, r))]
    x = np.pad(x, ((0, 0), (0, 0), (t, b + extra[0]), (left, r + extra[1])), constant_values=fill)
    ho, wo = out
    win = np.stack([x[:, :, i:i + s[0] * (ho - 1) + 1:s[0], j:j + s[1] * (wo - 1) + 1:s[1]]
                    for i in range(k[0]) for j in range(k[1])])
    return fn(win, axis=0)


def _adaptive_avg(x, oh, ow):
    h, w = x.shape[2:]
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = x[:, :, (i * h) // oh:-(-((i + 1) * h) // oh), (j * w) // ow:-(-((j + 1) * w) // ow)].mean((2, 3))
    return y


def _relu6(z):
    return np.clip(z, 0, 6)


ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0), "relu6": _relu6, "hardswish": lambda z: z * _relu6(z + 3) / 6,
               "hardsigmoid": lambda z: _relu6(z + 3) / 6, "silu": lambda z: z / (1 + np.exp(-z)),
               "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "dropout": lambda z: z}


def forward(graph: Graph, params: dict, x: np.ndarray, bn_batch_stats: bool = False) -> dict:
    """Outputs of every node for input ``x`` (NCHW), in float64."""
    v = {"input": np.asarray(x, np.float64)}
    p = {k: np.asarray(a, np.float64) for k, a in params.items()}
    for n in graph.nodes[1:]:
        ins, a = [v[i] for i in n.inputs], n.attrs
        if n.op == "conv":
            y = _conv(ins[0], p[f"{n.name}.weight"], p.get(f"{n.name}.bias"), a["stride"], a["pad"],
                      a["dilation"], a["groups"])
        elif n.op == "dense":
            y = ins[0] @ p[f"{n.name}.weight"].T + p.get(f"{n.name}.bias", 0.0)
        elif n.op == "diagonal":
            d = p[f"{n.name}.weight"]
            y = np.zeros((len(ins[0]), a["out"])) + p.get(f"{n.name}.bias", 0.0)
            y[:, :len(d)] += d * ins[0][:, :len(d)]
        elif n.op == "bn":
            z = ins[0]
            axes = (0, 2, 3) if z.ndim == 4 else (0,)
            shape = (1, -1, 1, 1) if z.ndim == 4 else (1, -1)
            if bn_batch_stats:
                mean, var = z.mean(axes), z.var(axes)
            else:
                mean, var = p[f"{n.name}.running_mean"], p[f"{n.name}.running_var"]
            y = ((z - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + a["eps"])
                 * p[f"{n.name}.weight"].reshape(shape) + p[f"{n.name}.bias"].reshape(shape))
        elif n.op in ACTIVATIONS:
            y = ACTIVATIONS[n.op](ins[0])
        elif n.op == "mul":
            a_, b_ = ins
            if a_.ndim == 4 and b_.ndim == 2:
                b_ = b_[:, :, None, None]
            elif b_.ndim == 4 and a_.ndim == 2:
                a_ = a_[:, :, None, None]
            y = a_ * b_
        elif n.op == "adaptive_avgpool":
            y = _adaptive_avg(ins[0], *a["out"])
        elif n.op == "add":
            y = sum(ins)
        elif n.op == "concat":
            y = np.concatenate(ins, axis=1)
        elif n.op == "gap":
            y = ins[0].mean(axis=(2, 3), keepdims=bool(a.get("keep", False)))
        elif n.op == "flatten":
            y = ins[0].reshape(len(ins[0]), -1)
        elif n.op == "maxpool":
            y = _pool(ins[0], a["k"], a["stride"], np.max, a.get("pad", 0), a.get("ceil", False), -np.inf)
        elif n.op == "avgpool":
            y = _pool(ins[0], a["k"], a["stride"], np.mean, a.get("pad", 0))
        elif n.op == "select":
            s = a["stride"]
            z = ins[0][:, :, ::s, ::s]
            y = np.zeros((z.shape[0], len(a["src"])) + z.shape[2:])
            for j, src in enumerate(a["src"]):
                if src >= 0:
                    y[:, j] = z[:, src]
        else:
            raise AssertionError(n.op)
        v[n.name] = y
    return v
