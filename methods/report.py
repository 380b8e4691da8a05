"""One report for every method and benchmark: the same rows, the same table, the same latency timer.

A row describes one network: ``model`` (its label), ``params``, ``macs``,
``mac_fraction`` (of the first row's MACs), ``val_accuracy`` and ``test_accuracy``
(%, None when not evaluated), ``latency_b1_ms`` and ``latency_b<B>_ms`` (median CPU
forward time at batch 1 and at the throughput batch ``B``, every model timed in turns
in one run) and ``speedup_per_mac_reduction`` (speedup over the first row at batch
``B`` divided by its MAC reduction: 1 means the saved MACs are all saved time).
Every method's ``metrics.json`` holds ``rows`` in this form.
"""

from __future__ import annotations

import time

import numpy as np

from methods import distributed

THROUGHPUT_BATCH = 32
COLUMNS = ("model", "params", "macs", "mac_fraction", "val_accuracy", "test_accuracy", "latency_b1_ms",
           f"latency_b{THROUGHPUT_BATCH}_ms", "speedup_per_mac_reduction")


def samples_in_turns(calls, repeats: int) -> list[list[float]]:
    """Wall times (ms) of each zero-argument call, ``repeats`` each, timed in turns (A, B, A, B, ...) so
    that the load of a shared machine weighs on every contestant alike: ``out[i][k]`` is call ``i`` in
    turn ``k``. Each timed call follows an untimed one of the same contestant: a call after idleness pays
    for waking the thread pool."""
    for call in calls:
        for _ in range(3):
            call()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for t, call in zip(times, calls):
            call()
            start = time.perf_counter()
            call()
            t.append(1000.0 * (time.perf_counter() - start))
    return times


def time_in_turns(calls, repeats: int) -> list[float]:
    """Median wall time (ms) of each call over :func:`samples_in_turns`."""
    return [float(np.median(t)) for t in samples_in_turns(calls, repeats)]


def interleaved_ms(backend, models, batch: int, repeats: int) -> list[float]:
    """:func:`time_in_turns` of one forward pass of each model of ``backend`` on a batch of ``batch``."""
    xs = [np.random.default_rng(0).normal(size=(batch, *m.graph.input_shape)).astype(np.float32) for m in models]
    return time_in_turns([lambda m=m, x=x: backend.forward(m, x) for m, x in zip(models, xs)], repeats)


#: where a network can be timed: the two backends, and ONNX Runtime on the exported file
RUNTIMES = ("torch", "tf", "ort")


def ort_sessions(nets, threads: int | None = None, spinning: bool = False, configure=None) -> list:
    """An ONNX Runtime session (CPU) of the exported file of every ``(graph, params)``, set up to be timed in
    turns: ``threads`` intra-op threads (None: its default); ``spinning`` False turns off the spin-wait of the
    worker threads after a run. ORT's default keeps them spinning, and the spinning threads of the session
    that ran last then compete with the one running now: a 64-wide 3x3 conv timed in turns with six others
    took 17-38 ms instead of the 9 ms it takes alone or in turns without spinning (2-core Intel Xeon); alone,
    a session is as fast with spinning off (within 5%). ``configure(options, index)``: more options."""
    import onnxruntime as ort

    from compress_core.ir.onnx_export import to_onnx
    out = []
    for k, (g, p) in enumerate(nets):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if configure is not None:
            configure(opts, k)
        out.append(ort.InferenceSession(to_onnx(g, p).SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    return out


def forward_calls(runtime: str, nets, threads: int | None = None, backend=None, spinning: bool = False) -> list:
    """One forward-pass callable per ``(graph, params)`` of ``nets`` (input bound later) on ``runtime``:
    the backend's ``forward`` (``torch``, ``tf``; ``backend``: that backend's instance, None: a new one)
    or an ONNX Runtime session of the exported file (``ort``: :func:`ort_sessions`, ``threads`` and
    ``spinning`` as there)."""
    if runtime == "ort":
        sessions = ort_sessions(nets, threads, spinning)
        return [lambda x, s=s: s.run(None, {"input": x}) for s in sessions]
    if backend is None:
        from backends.base import get_backend
        backend = get_backend(runtime)
    models = [backend.build(g, p) for g, p in nets]
    return [lambda x, m=m: backend.forward(m, x) for m in models]


def networks_ms(runtime: str, nets, batch: int, repeats: int, backend=None, reduce=np.median) -> list[float]:
    """Time (ms) of one forward pass of each ``(graph, params)`` on ``runtime`` at ``batch``: ``reduce`` (the
    median, or e.g. ``min``) of its :func:`samples_in_turns` (``backend``: as :func:`forward_calls`)."""
    calls = forward_calls(runtime, nets, backend=backend)
    xs = [np.random.default_rng(0).normal(size=(batch, *g.input_shape)).astype(np.float32) for g, _ in nets]
    return [float(reduce(t)) for t in samples_in_turns([lambda c=c, x=x: c(x) for c, x in zip(calls, xs)], repeats)]


def add_latencies(backend, rows: list[dict], models: list, repeats: int = 20,
                  batches: tuple[int, ...] = (1, THROUGHPUT_BATCH)) -> None:
    """Latency columns of every row (its model timed with :func:`interleaved_ms`; a model shared by
    several rows, the same object, is timed once), then the MAC fraction and the speedup per MAC
    reduction against the first row. In a data-parallel run rank 0 times and sends the times to the
    others, which wait idle meanwhile so as not to disturb the timing."""
    distinct = list({id(m): m for m in models}.values())
    for b in batches:
        times = interleaved_ms(backend, distinct, b, repeats) if distributed.is_main() else [0.0] * len(distinct)
        times = distributed.broadcast([np.asarray(times, np.float64)])[0].tolist()
        ms = dict(zip(map(id, distinct), times))
        for row, m in zip(rows, models):
            row[f"latency_b{b}_ms"] = ms[id(m)]
    finish(rows, batches[-1])


def finish(rows: list[dict], batch: int = THROUGHPUT_BATCH) -> None:
    """``mac_fraction`` and ``speedup_per_mac_reduction`` of every row against the first."""
    base = rows[0]
    for row in rows:
        row["mac_fraction"] = row["macs"] / base["macs"]
        key = f"latency_b{batch}_ms"
        if key in row and key in base and row["macs"] < base["macs"]:
            row["speedup_per_mac_reduction"] = (base[key] / row[key]) / (base["macs"] / row["macs"])
        else:
            row["speedup_per_mac_reduction"] = None


def format_table(rows: list[dict], batch: int = THROUGHPUT_BATCH) -> str:
    """The rows as the table every method prints."""
    width = max(12, *(len(r["model"]) + 2 for r in rows))
    head = (f"{'model':<{width}}{'params':>10}{'MACs':>11}{'MAC %':>7}{'val %':>8}{'test %':>8}{'ms@1':>9}"
            f"{f'ms@{batch}':>9}{'speedup/MAC red.':>18}")
    lines = [head, "-" * len(head)]
    def num(r, key, fmt):
        v = r.get(key)
        return format(v, fmt) if v is not None else "-"

    for r in rows:
        lines.append(f"{r['model']:<{width}}{r['params'] / 1e3:>9.1f}k{r['macs'] / 1e6:>10.2f}M"
                     f"{100 * r.get('mac_fraction', 1.0):>7.1f}{num(r, 'val_accuracy', '.2f'):>8}"
                     f"{num(r, 'test_accuracy', '.2f'):>8}{num(r, 'latency_b1_ms', '.2f'):>9}"
                     f"{num(r, f'latency_b{batch}_ms', '.2f'):>9}{num(r, 'speedup_per_mac_reduction', '.2f'):>18}")
    lines.append(f"MACs: one multiply-add = one MAC; ms: median CPU forward time, the models timed in turns; "
                 f"speedup/MAC red.: speedup at batch {batch} over the first row / its MAC reduction")
    return "\n".join(lines)
