"""What every method shares: the command line, the work directory, data, training, evaluation.

A method module calls :func:`main` with its default hyperparameter file and a
``run(ctx)`` function. Nothing here imports a framework: the backend is chosen
by name and used through :mod:`backends.base`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compress_core import checkpoint, config, data, flops, zoo
from compress_core.errors import UserError
from compress_core.fileio import atomic_write_json
from compress_core.schedule import classification_metrics, learning_rate

HYPERPARAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hyperparams")
log = logging.getLogger("compress")


@dataclass
class Context:
    """One run: resolved config, backend, work directory, data."""

    cfg: object
    backend: object
    workdir: str
    splits: data.DataSplits
    args: argparse.Namespace | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


def parse_args(argv: Sequence[str] | None, description: str, default_config: str,
               extra: Callable[[argparse.ArgumentParser], None] | None = None):
    p = argparse.ArgumentParser(description=description,
                                epilog="Any config field can be overridden: --config.train.epochs=5")
    p.add_argument("--backend", default="torch", help="tf or torch (default: torch)")
    p.add_argument("--config", default=os.path.join(HYPERPARAMS, default_config),
                   help=f"hyperparameter file (default: hyperparams/{default_config})")
    p.add_argument("--workdir", default=None, help="output directory (default: the config's workdir)")
    if extra:
        extra(p)
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        raise UserError(f"unrecognised argument '{bad[0]}' (overrides look like --config.train.epochs=5)")
    return args, rest


def main(run: Callable[[Context], dict], description: str, default_config: str,
         argv: Sequence[str] | None = None, extra=None, subdir: str = "") -> int:
    """Parse the command line, prepare the work directory, call ``run``; user errors exit 2.

    ``extra(parser)`` may add method-specific flags; their values are in ``ctx.args``.
    The default work directory is the config's ``workdir`` joined with ``subdir``.
    """
    try:
        ctx = prepare(argv, description, default_config, extra, subdir)
        run(ctx)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def prepare(argv, description, default_config, extra=None, subdir="") -> Context:
    """Everything that can fail on bad input happens here, before the work directory is touched."""
    from backends.base import get_backend

    args, overrides = parse_args(argv, description, default_config, extra)
    cfg = config.load_config(args.config, overrides)
    backend = get_backend(args.backend)
    workdir = args.workdir or os.path.join(cfg.workdir, subdir)
    splits = load_data(cfg)
    # a bad checkpoint fails here, before anything is written
    for path in [getattr(args, f, None) for f in ("checkpoint", "student", "teacher")] + [
            cfg.get(section, {}).get(key, "") for section, key in (("cdc", "teacher"), ("kse", "teacher"),
                                                                   ("dcff", "init"))]:
        if path:
            checkpoint_graph(path, splits)
    init = cfg.model.get("init", "")
    if init:
        want = zoo.build(cfg.model.name, splits.num_classes, splits.train.x.shape[1:])
        have = checkpoint_graph(init, splits)
        if have.arch != want.arch or have.param_shapes() != want.param_shapes():
            raise UserError(f"model.init checkpoint {init} holds a '{have.arch}' with other layer shapes "
                            f"than the config's model '{want.arch}'")
    resolved = dict(config.config_to_dict(cfg), backend=args.backend)
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            previous = json.load(f)
        if previous != resolved:
            old, new = _flat(previous), _flat(resolved)
            diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)]
            raise UserError(f"work directory '{workdir}' holds a run with another config "
                            f"({'; '.join(diff[:4])}); choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(saved, resolved)
    _setup_logging(os.path.join(workdir, "log.txt"))
    log.info("backend %s, config %s, work directory %s", args.backend, args.config, workdir)
    for k, v in config.flatten(cfg).items():
        log.debug("config %s = %r", k, v)
    return Context(cfg, backend, workdir, splits, args)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _setup_logging(path: str) -> None:
    log.setLevel(logging.DEBUG)
    log.handlers.clear()
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO)
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(fh)
    log.addHandler(sh)
    log.propagate = False


def load_data(cfg) -> data.DataSplits:
    d = cfg.data
    return data.get_dataset(d.name, d.path or None, val_fraction=d.val_fraction,
                            test_fraction=d.test_fraction, seed=cfg.seed, image_size=d.get("image_size", 224))


# -- models -------------------------------------------------------------------------------------
def build_model(ctx: Context, widths=None):
    """The config's zoo model for this data set: from ``model.init`` if set, else seeded weights."""
    from compress_core.init import init_params

    if ctx.cfg.model.get("init", ""):
        return load_model(ctx.backend, ctx.cfg.model.init, ctx.splits)
    graph = zoo.build(ctx.cfg.model.name, ctx.splits.num_classes, ctx.splits.train.x.shape[1:], widths)
    return ctx.backend.build(graph, init_params(graph, ctx.cfg.seed))


def checkpoint_graph(path: str, splits: data.DataSplits | None = None):
    """The graph of a checkpoint, checked against the data it will see."""
    graph, _, _ = checkpoint.load_checkpoint(path)
    if splits is not None:
        want = (tuple(splits.train.x.shape[1:]), splits.num_classes)
        have = (graph.input_shape, graph.num_classes)
        if want != have:
            raise UserError(f"checkpoint {path} takes inputs {have[0]} with {have[1]} classes, "
                            f"the data has {want[0]} with {want[1]} classes")
    return graph


def load_model(backend, path: str, splits: data.DataSplits | None = None):
    """A model from a checkpoint, checked against the data it will see."""
    checkpoint_graph(path, splits)
    graph, params, _ = checkpoint.load_checkpoint(path)
    return backend.build(graph, params)


def save_model(backend, model, path: str, **meta) -> None:
    checkpoint.save_checkpoint(path, model.graph, backend.get_weights(model), meta)


def evaluate(backend, model, dataset: data.Dataset, batch_size: int = 256) -> dict[str, float]:
    """Accuracy (%) and loss of ``model`` on ``dataset`` (inference-mode BatchNorm)."""
    if len(dataset) == 0:
        return classification_metrics(np.zeros((0, 1)), dataset.y)
    logits = backend.predict(model, (x for x, _ in data.iterate_batches(dataset, batch_size, False)))
    return classification_metrics(logits, dataset.y)


def cost(model) -> dict[str, int]:
    return flops.summary(model.graph)


def summary_row(ctx: Context, name: str, model) -> dict:
    """One line of a method's before/after table: MACs, params, validation and test accuracy."""
    row = {"model": name, **cost(model)}
    for split in ("val", "test"):
        row[f"{split}_accuracy"] = evaluate(ctx.backend, model, getattr(ctx.splits, split))["accuracy"]
    return row


# -- training -----------------------------------------------------------------------------------
def fit(ctx: Context, model, tcfg, stage: str, loss=None, batch_extras=None, on_epoch=None,
        on_step=None, optim=None) -> dict:
    """Train ``model`` with SGD as ``tcfg`` says; resumable from ``<workdir>/<stage>/``.

    After every epoch the model (``last.safetensors``), the best model on the
    validation split (``best.safetensors``) and the optimiser state are written
    atomically; a rerun continues after the last finished epoch. The data order
    of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the
    same batches as an uninterrupted one. ``loss`` is a ``LossSpec`` (default:
    cross-entropy + the config's weight decay); ``batch_extras(x)`` returns the
    extra inputs of a step (teacher logits, feature targets); ``on_epoch(epoch,
    trainer)`` runs before each epoch (e.g. refitting a projection) and ends the
    training there when it returns True (a stopping rule); ``on_step(lr, trainer)``
    runs after each step (e.g. a proximal step); ``optim`` overrides the
    :class:`OptimSpec` built from ``tcfg`` (e.g. per-parameter learning rates). Returns the
    history and best epoch; on return ``model`` holds the best-validation weights.
    """
    from tqdm import tqdm

    from backends.base import LossSpec, OptimSpec

    backend, splits = ctx.backend, ctx.splits
    d = os.path.join(ctx.workdir, stage)
    last, best, state_path = (os.path.join(d, f) for f in ("last.safetensors", "best.safetensors", "state.json"))
    loss = loss or LossSpec(weight_decay=tcfg.weight_decay)
    trainer = backend.trainer(model, loss, optim or OptimSpec(tcfg.momentum, tcfg.nesterov))
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "history": []}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
        _, params, _ = checkpoint.load_checkpoint(last)
        backend.set_weights(model, params)
        trainer.load_state(checkpoint.load_arrays(os.path.join(d, "optimizer.safetensors")))
        log.info("[%s] resuming after epoch %d", stage, state["epoch"])
    augment = data.flip_and_crop if tcfg.augment else None
    for epoch in range(state["epoch"], tcfg.epochs):
        if on_epoch and on_epoch(epoch, trainer):
            log.info("[%s] stopping rule met before epoch %d", stage, epoch + 1)
            state["stopped"] = epoch
            break
        lr = learning_rate(epoch, tcfg.lr, tcfg.schedule, tcfg.epochs, tcfg.milestones, tcfg.gamma)
        rng = np.random.default_rng([ctx.cfg.seed, epoch])
        batches = data.iterate_batches(splits.train, tcfg.batch_size, True, rng, augment)
        t0, sums, n = time.time(), {}, 0
        bar = tqdm(batches, total=data.num_batches(len(splits.train), tcfg.batch_size),
                   desc=f"{stage} {epoch + 1}/{tcfg.epochs}", leave=False, disable=None)
        for x, y in bar:
            out = trainer.step(x, y, lr, **(batch_extras(x) if batch_extras else {}))
            if on_step:
                on_step(lr, trainer)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        val = evaluate(backend, model, splits.val)
        row = {"epoch": epoch + 1, "lr": lr, "time_s": round(time.time() - t0, 2),
               **{f"train_{k}": v / n for k, v in sums.items()},
               "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        state["history"].append(row)
        log.info("[%s] epoch %d/%d lr %.4g loss %.4f val acc %.2f%% (%.1fs)", stage, epoch + 1,
                 tcfg.epochs, lr, row["train_loss"], val["accuracy"], row["time_s"])
        save_model(backend, model, last, epoch=epoch + 1)
        if val["accuracy"] > state["best_val"]:
            state["best_val"], state["best_epoch"] = val["accuracy"], epoch + 1
            save_model(backend, model, best, epoch=epoch + 1)
        checkpoint.save_arrays(os.path.join(d, "optimizer.safetensors"), trainer.state())
        state["epoch"] = epoch + 1
        atomic_write_json(state_path, state)  # written last: it marks the epoch as complete
    if os.path.exists(best):
        backend.set_weights(model, checkpoint.load_checkpoint(best)[1])
    return state


def interleaved_ms(backend, models, batch: int, repeats: int) -> list[float]:
    """Median wall time (ms) of one forward pass of each model, timed in turns (A, B, A, B, ...)
    so that the load of a shared machine weighs on every model alike."""
    xs = [np.random.default_rng(0).normal(size=(batch, *m.graph.input_shape)).astype(np.float32) for m in models]
    for m, x in zip(models, xs):
        for _ in range(3):
            backend.forward(m, x)
    times = [[] for _ in models]
    for _ in range(repeats):
        for t, m, x in zip(times, models, xs):
            start = time.perf_counter()
            backend.forward(m, x)
            t.append(time.perf_counter() - start)
    return [1000.0 * float(np.median(t)) for t in times]


def add_latencies(backend, rows: list[dict], models: list, repeats: int, batches=(1, 32)) -> None:
    """Columns ``latency_b{b}_ms``: each row's model timed with :func:`interleaved_ms`; a model
    shared by several rows (the same object) is timed once and they share its time."""
    distinct = list({id(m): m for m in models}.values())
    for b in batches:
        ms = dict(zip(map(id, distinct), interleaved_ms(backend, distinct, b, repeats)))
        for row, m in zip(rows, models):
            row[f"latency_b{b}_ms"] = ms[id(m)]


def latency(backend, model, batch: int, repeats: int = 20) -> float:
    """Median wall time (ms) of one inference forward pass on a batch of ``batch`` images."""
    return interleaved_ms(backend, [model], batch, repeats)[0]


def write_metrics(ctx: Context, metrics: dict) -> None:
    atomic_write_json(ctx.path("metrics.json"), metrics)
    log.info("metrics written to %s", ctx.path("metrics.json"))
