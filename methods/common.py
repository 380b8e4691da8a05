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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from compress_core import data, fileio
from compress_core.data import config
from compress_core.errors import UserError
from compress_core.ir import checkpoint, flops, zoo
from compress_core.ir.graph import Graph
from compress_core.schedule import (
    classification_metrics,
    classification_sums,
    learning_rate,
    metrics_from_sums,
)
from methods import distributed
from methods.dashboard import Dashboard

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
    cache: dict = field(default_factory=dict)  # the start network, read once (see source_graph)
    dashboard: Dashboard = field(default_factory=Dashboard)  # TensorBoard event files (off unless prepared)

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
    p.add_argument("--sync-bn", action="store_true",
                   help="data-parallel runs on GPUs: BatchNorm statistics of the global batch (SyncBatchNorm)")
    if extra:
        extra(p)
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        raise UserError(f"unrecognised argument '{bad[0]}' (overrides look like --config.train.epochs=5)")
    return args, rest


def main(run: Callable[[Context], dict], description: str, default_config: str,
         argv: Sequence[str] | None = None, extra=None, subdir: str = "",
         check: Callable[[Context], None] | None = None, match_data: bool = True) -> int:
    """Parse the command line, prepare the work directory, call ``run``; user errors exit 2.

    ``extra(parser)`` may add method-specific flags; their values are in ``ctx.args``. With
    ``match_data`` False the checkpoints named by flags need not fit the config's data (export).
    ``check(ctx)`` runs the method's checks that need the data (class counts, layer names)
    before the work directory is touched. The default work directory is the config's
    ``workdir`` joined with the backend's name and ``subdir``.
    """
    ctx = None
    try:
        ctx = prepare(argv, description, default_config, extra, subdir, check, _command(run), match_data)
        run(ctx)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        for h in log.handlers:  # a run that started keeps the reason in its log.txt
            if isinstance(h, logging.FileHandler):
                h.handle(log.makeRecord(log.name, logging.ERROR, "", 0, f"error: {e}", None, None))
        return 2
    finally:
        if ctx is not None:  # on success, a user error or any other exception
            ctx.dashboard.close()


def _command(run) -> str:
    """``methods.<name>`` of the module defining ``run`` (also when it runs as ``python -m``)."""
    spec = getattr(run, "__globals__", {}).get("__spec__")
    return spec.name if spec is not None else getattr(run, "__module__", "")


def check_workdir(workdir: str) -> None:
    """A one-line error unless ``workdir`` is, or can be made as, a writable directory.

    The nearest existing folder gets a probe file (created and removed at once), so a
    read-only folder or file system fails here, not after hours of training.
    """
    if not workdir or not workdir.strip():
        raise UserError("--workdir is empty; give a directory")
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"work directory '{workdir}' is a file, not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"work directory '{workdir}' cannot be created: '{existing}' is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"work directory '{workdir}' is not writable ({existing}: {e.strerror})") from None


def prepare(argv, description, default_config, extra=None, subdir="", check=None, command="",
            match_data: bool = True) -> Context:
    """Everything that can fail on bad input happens here, before the work directory is touched."""
    from backends.base import get_backend

    args, overrides = parse_args(argv, description, default_config, extra)
    cfg = config.load_config(args.config, overrides)
    backend = get_backend(args.backend)
    if args.sync_bn:
        backend.use_sync_bn()
    workdir = os.path.join(cfg.workdir, args.backend, subdir) if args.workdir is None else args.workdir
    check_workdir(workdir)
    splits = load_data(cfg)
    # a bad checkpoint fails here, before anything is written
    for path in [getattr(args, f, None) for f in ("checkpoint", "student", "teacher")]:
        if path:
            checkpoint_graph(path, splits if match_data else None)
    ctx = Context(cfg, backend, workdir, splits, args)
    start_graph(ctx)  # the network to start from (model.source, model.weights), checked with the data
    if check is not None:
        check(ctx)
    resolved = dict(config.config_to_dict(cfg), backend=args.backend, command=command)
    if args.sync_bn:  # changes the training: a resumed run must use it too
        resolved["sync_bn"] = True
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved):
        try:
            with open(saved) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"work directory '{workdir}' has an unreadable config.json ({e}); "
                            f"choose another --workdir") from None
        if previous.get("command", command) != command:
            raise UserError(f"work directory '{workdir}' holds a {previous['command']} run, not {command}; "
                            f"choose another --workdir")
        if previous != resolved:
            old, new = _flat(previous), _flat(resolved)
            diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)]
            raise UserError(f"work directory '{workdir}' holds a run with another config "
                            f"({'; '.join(diff[:4])}); choose another --workdir")
    distributed.start(backend)  # the input is good: join the other processes of a data-parallel run
    if distributed.is_main():
        os.makedirs(workdir, exist_ok=True)
        fileio.atomic_write_json(saved, resolved)
        _setup_logging(os.path.join(workdir, "log.txt"))
        log_cfg = cfg.get("log")
        ctx.dashboard = Dashboard.open(os.path.join(workdir, "tb"), bool(log_cfg and log_cfg.get("tensorboard")))
    else:  # the other ranks write nothing, print nothing and log only warnings (no dashboard)
        _setup_logging(None)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    log.info("backend %s, config %s, work directory %s%s", args.backend, args.config, workdir,
             f", {distributed.world_size()} processes" if distributed.active() else "")
    for k, v in config.flatten(cfg).items():
        log.debug("config %s = %r", k, v)
    return ctx


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _setup_logging(path: str | None) -> None:
    """``log.txt`` at ``path`` (everything) and stderr (info); without a path only warnings on stderr."""
    log.setLevel(logging.DEBUG)
    log.handlers.clear()
    if path is not None:
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if path is not None else logging.WARNING)
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(sh)
    log.propagate = False


def load_data(cfg) -> data.DataSplits:
    d = cfg.data
    return data.get_dataset(d.name, d.path or None, val_fraction=d.val_fraction,
                            test_fraction=d.test_fraction, seed=cfg.seed, image_size=d.get("image_size", 224),
                            workers=d.get("workers", 0))


# -- models -------------------------------------------------------------------------------------
def is_checkpoint(path: str) -> bool:
    """``model.weights`` is a checkpoint of this library (``.safetensors``), not a state_dict file."""
    return path.endswith(".safetensors")


def source_arch(source: str) -> str:
    """The architecture name of a ``model.source``: the zoo name, ``package.path:callable``, or the
    file name of a ``keras:`` or ``tf1:`` source (``keras:model.keras``: the same model from any folder)."""
    if source.startswith(("keras:", "tf1:")):
        kind, path = source.split(":", 1)
        return f"{kind}:{os.path.basename(path)}"
    return source.removeprefix("module:")


def source_graph(ctx: Context):
    """``(graph, params)`` of ``model.source`` for the run's data, read once: a zoo model (params None:
    seeded when built, or the ``.pth`` state_dict of ``model.weights``), or an imported model (its own
    parameters: a module with the ``.pth`` of ``model.weights`` loaded into it, a Keras model with its
    ``.weights.h5``, a TF1 graph with the variables of the checkpoint prefix). A model that takes other
    inputs or gives other classes than the data is a one-line error."""
    if "source" in ctx.cache:
        return ctx.cache["source"]
    from backends.base import import_source, read_state_dict

    m, splits = ctx.cfg.model, ctx.splits
    shape, classes = tuple(splits.train.x.shape[1:]), splits.num_classes
    if m.input_shape and tuple(m.input_shape) != shape:
        raise UserError(f"the data has inputs of shape {shape}, model.input_shape is {tuple(m.input_shape)}")
    pth = m.weights if m.weights and not is_checkpoint(m.weights) else ""  # the source's own weights file
    if m.source in zoo.MODELS:
        graph = zoo.build(m.source, classes, shape)
        params = None
        if pth:
            params = read_state_dict(pth)
            checkpoint.check_params(graph, params, source=f"model.weights {pth}")
    else:
        from hyperparams.common import source_kwargs

        graph, params = import_source(m.source, shape, pth, source_arch(m.source), source_kwargs(m.kwargs))
        if graph.num_classes != classes:
            raise UserError(f"model.source {m.source} gives {graph.num_classes} outputs, the data has {classes} "
                            f"classes")
    if params is not None:
        checkpoint.check_finite(params, f"model.weights {pth or m.source}")
    ctx.cache["source"] = (graph, params)
    return graph, params


def start_graph(ctx: Context):
    """The graph of the network every method starts from (``model.weights`` when it is a checkpoint,
    else ``model.source``), checked with the data in one place before any work."""
    path = ctx.cfg.model.weights
    if path and is_checkpoint(path):
        graph = checkpoint_graph(path, ctx.splits)
        if graph.arch != source_arch(ctx.cfg.model.source):
            raise UserError(f"model.weights {path} holds a '{graph.arch}', the config's model.source is "
                            f"'{ctx.cfg.model.source}' (set --config.model.source)")
        return graph
    if path:
        check_source_weights(ctx.cfg.model.source, path)
    return source_graph(ctx)[0]


def check_source_weights(source: str, path: str) -> None:
    """``model.weights`` that are not a checkpoint of this library fit the kind of ``model.source``: a
    state_dict (``.pth``, ``.pt``) of a zoo or module source, a ``.weights.h5`` of a keras source, the
    checkpoint prefix of a tf1 source; the file exists."""
    if source.startswith("tf1:"):
        if not os.path.isfile(path + ".index"):
            raise UserError(f"model.weights {path} is not a TF checkpoint prefix ({path}.index not found)")
        return
    kind, endings = ("a Keras weights file", (".weights.h5",)) if source.startswith("keras:") else \
        ("a state_dict", (".pth", ".pt"))
    if not path.endswith(endings):
        raise UserError(f"model.weights {path} is neither a checkpoint (.safetensors) nor {kind} "
                        f"({', '.join(endings)}) for model.source {source}")
    if not os.path.isfile(path):
        raise UserError(f"model.weights not found: {path}")


def start_model(ctx: Context, stage: str | None = "baseline"):
    """The network a method starts from: ``model.weights`` when given (a checkpoint, or a state_dict of
    the source); else the source's initial weights (seeded for a zoo model), trained first with the
    ``train`` section in ``stage`` (None: untrained)."""
    from compress_core.ir.init import init_params

    weights = ctx.cfg.model.weights
    if weights and is_checkpoint(weights):
        log.info("starting from %s", weights)
        return load_model(ctx.backend, weights, ctx.splits)
    graph, params = source_graph(ctx)
    model = ctx.backend.build(graph, init_params(graph, ctx.cfg.seed) if params is None else params)
    if weights:
        log.info("starting from %s (%s)", weights, ctx.cfg.model.source)
    elif stage is not None:
        log.info("no model.weights given: training the baseline first")
        fit(ctx, model, ctx.cfg.train, stage)
    return model


def checkpoint_graph(path: str, splits: data.DataSplits | None = None):
    """The graph of a checkpoint, checked against the data it will see (and for NaN weights)."""
    graph, params, _ = checkpoint.load_checkpoint(path)
    checkpoint.check_finite(params, f"checkpoint {path}")
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
    """Write ``model`` to ``path`` (rank 0 of a data-parallel run only: the others write nothing)."""
    if distributed.is_main():
        checkpoint.save_checkpoint(path, model.graph, backend.get_weights(model), meta)


def evaluate(backend, model, dataset: data.Dataset, batch_size: int = 256) -> dict[str, float]:
    """Accuracy (%) and loss of ``model`` on ``dataset`` (inference-mode BatchNorm); in a data-parallel
    run each process evaluates every N-th batch and the sums are added up."""
    if len(dataset) == 0:
        return classification_metrics(np.zeros((0, 1)), dataset.y)
    sums = np.zeros(3)
    for x, y in data.iterate_batches(dataset, batch_size, False, stride=distributed.share()):
        sums += classification_sums(backend.forward(model, x)[0], y)
    return metrics_from_sums(distributed.all_reduce([sums])[0])


def cost(model) -> dict[str, int]:
    return flops.summary(model.graph)


def summary_row(ctx: Context, name: str, model) -> dict:
    """One line of a method's before/after table: MACs, params, validation and test accuracy."""
    row = {"model": name, **cost(model)}
    for split in ("val", "test"):
        row[f"{split}_accuracy"] = evaluate(ctx.backend, model, getattr(ctx.splits, split))["accuracy"]
    return row


# -- training -----------------------------------------------------------------------------------
#: a stage's files, one consistent set per finished epoch (see :func:`fit`)
EPOCH_FILES = ("last.safetensors", "best.safetensors", "optimizer.safetensors", "state.json")


def fit(ctx: Context, model, tcfg, stage: str, loss=None, batch_extras=None, on_epoch=None,
        on_step=None, optim=None) -> dict:
    """Train ``model`` with SGD as ``tcfg`` says; resumable from ``<workdir>/<stage>/``.

    After every epoch the model (``last.safetensors``), the best model on the
    validation split so far (``best.safetensors``), the optimiser state and the
    history (``state.json``) are written as one set: into a hidden folder that is
    renamed to ``<stage>/epoch-NNNNNN/`` once all of them are on disk, then mirrored
    into ``<stage>/`` as hard links. A rerun resumes from the newest complete set
    only, so a kill at any instant loses at most the running epoch and the resumed
    run ends with the same weights and history as an uninterrupted one. The data
    order of epoch ``e`` depends only on ``(seed, e)``. A loss that becomes NaN or
    infinite stops the run with a :class:`UserError` naming the stage and epoch; the
    last complete set stays as it was.

    ``loss`` is a ``LossSpec`` (default: cross-entropy + the config's weight decay);
    ``batch_extras(x)`` returns the extra inputs of a step (teacher logits, feature
    targets); ``on_epoch(epoch, trainer)`` runs before each epoch (e.g. refitting a
    projection) and ends the training there when it returns True (a stopping rule);
    ``on_step(lr, trainer)`` runs after each step (e.g. a proximal step); ``optim``
    overrides the :class:`OptimSpec` built from ``tcfg`` (e.g. per-parameter learning
    rates). Returns the history and best epoch; on return ``model`` holds the
    best-validation weights.
    """
    from tqdm import tqdm

    from backends.base import LossSpec, OptimSpec

    backend, splits = ctx.backend, ctx.splits
    d = os.path.join(ctx.workdir, stage)
    store = fileio.Snapshots(d)
    loss = loss or LossSpec(weight_decay=tcfg.weight_decay)
    # the section's mixed precision applies to a method's own OptimSpec too
    optim = replace(optim or OptimSpec(tcfg.momentum, tcfg.nesterov), precision=tcfg.get("precision", "float32"))
    trainer = backend.trainer(model, loss, optim)
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "history": []}
    latest = store.latest()
    if latest is not None:
        snap = latest[1]
        with open(os.path.join(snap, "state.json")) as f:
            state = json.load(f)
        backend.set_weights(model, checkpoint.load_checkpoint(os.path.join(snap, "last.safetensors"))[1])
        trainer.load_state(checkpoint.load_arrays(os.path.join(snap, "optimizer.safetensors")))
        if distributed.is_main():
            store.publish(snap, EPOCH_FILES)  # a kill may have stopped the mirroring half-way
        log.info("[%s] resuming after epoch %d", stage, state["epoch"])
    elif os.path.exists(os.path.join(d, "state.json")):
        raise UserError(f"{d} holds a stage written by an older version of this library (no epoch-NNNNNN "
                        f"folder to resume from); choose another --workdir")
    if distributed.active():  # every rank starts from rank 0's weights and optimiser state
        _share_from_main(backend, model, trainer)
    augment = data.flip_and_crop if tcfg.augment else None
    ctx.dashboard.begin(stage, state["epoch"] + 1)
    for epoch in range(state["epoch"], tcfg.epochs):
        if on_epoch and distributed.agree(on_epoch(epoch, trainer)):
            log.info("[%s] stopping rule met before epoch %d", stage, epoch + 1)
            state["stopped"] = epoch
            break
        lr = learning_rate(epoch, tcfg.lr, tcfg.schedule, tcfg.epochs, tcfg.milestones, tcfg.gamma)
        rng = np.random.default_rng([ctx.cfg.seed, epoch])
        # each rank steps on its rows of the global batches; the trainer sums the gradients
        batches = data.iterate_batches(splits.train, tcfg.batch_size, True, rng, augment, part=distributed.share())
        t0, sums, n = time.time(), {}, 0
        bar = tqdm(batches, total=data.num_batches(len(splits.train), tcfg.batch_size),
                   desc=f"{stage} {epoch + 1}/{tcfg.epochs}", leave=False, disable=distributed.quiet())
        for b, (x, y) in enumerate(bar):
            out = trainer.step(x, y, lr, **(batch_extras(x) if batch_extras else {}))
            if not np.isfinite(out["loss"]):
                good = (f"; the last good checkpoint is {os.path.join(d, 'last.safetensors')} (epoch "
                        f"{state['epoch']})" if state["epoch"] else "")
                raise UserError(f"[{stage}] the loss became {out['loss']} in epoch {epoch + 1} (learning rate "
                                f"{lr:g}): training stopped{good}")
            if on_step:
                on_step(lr, trainer)
            size = min(tcfg.batch_size, len(splits.train) - b * tcfg.batch_size)  # the global batch's
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v * size
            n += size
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        if distributed.active():  # BatchNorm running statistics as DDP keeps them: rank 0's
            _share_from_main(backend, model, names=[k for k in model.graph.param_shapes() if Graph.is_buffer(k)])
        val = evaluate(backend, model, splits.val)
        row = {"epoch": epoch + 1, "lr": lr, "time_s": round(time.time() - t0, 2),
               **{f"train_{k}": v / n for k, v in sums.items()},
               "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        state["history"].append(row)
        log.info("[%s] epoch %d/%d lr %.4g loss %.4f val acc %.2f%% (%.1fs)", stage, epoch + 1,
                 tcfg.epochs, lr, row["train_loss"], val["accuracy"], row["time_s"])
        ctx.dashboard.epoch(stage, row)  # before the commit: a killed epoch's values are hidden on resume
        best_is_last = val["accuracy"] > state["best_val"] or state["best_epoch"] < 0
        if best_is_last:
            state["best_val"], state["best_epoch"] = val["accuracy"], epoch + 1
        state["epoch"] = epoch + 1
        if distributed.is_main():
            _commit(store, backend, model, trainer, state, best_is_last)
    distributed.barrier()  # rank 0's last set is on disk
    latest = store.latest()
    if latest is not None:
        backend.set_weights(model, checkpoint.load_checkpoint(os.path.join(latest[1], "best.safetensors"))[1])
    return state


def _commit(store: fileio.Snapshots, backend, model, trainer, state: dict, best_is_last: bool) -> None:
    """Write the set of epoch ``state["epoch"]`` (model, best model, optimiser, history) and mirror it."""
    epoch, previous = state["epoch"], store.latest()
    tmp = store.begin(epoch)
    save_model(backend, model, os.path.join(tmp, "last.safetensors"), epoch=epoch)
    best = os.path.join(tmp, "last.safetensors") if best_is_last else os.path.join(previous[1], "best.safetensors")
    fileio.link_or_copy(best, os.path.join(tmp, "best.safetensors"))
    checkpoint.save_arrays(os.path.join(tmp, "optimizer.safetensors"), trainer.state())
    fileio.atomic_write_json(os.path.join(tmp, "state.json"), state)
    store.publish(store.commit(epoch, tmp), EPOCH_FILES)


def _share_from_main(backend, model, trainer=None, names=None) -> None:
    """Rank 0's weights (or only ``names``) and optimiser state on every rank."""
    weights = backend.get_weights(model, names)
    keys = sorted(weights)
    backend.set_weights(model, dict(zip(keys, distributed.broadcast([weights[k] for k in keys]))),
                        strict=names is None)
    if trainer is not None:
        opt = trainer.state()
        keys = sorted(opt)
        trainer.load_state(dict(zip(keys, distributed.broadcast([opt[k] for k in keys]))))


def write_metrics(ctx: Context, metrics: dict) -> None:
    """``metrics.json``, and the MACs and parameters of its table's rows on the dashboard (rank 0 only)."""
    if distributed.is_main():
        ctx.dashboard.table(metrics.get("rows", []))
        fileio.atomic_write_json(ctx.path("metrics.json"), metrics)
        log.info("metrics written to %s", ctx.path("metrics.json"))
