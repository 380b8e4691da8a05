"""The adapter contract: what a backend must offer the methods.

A backend turns a :class:`compress_core.ir.graph.Graph` into a live model of its
framework and exchanges everything else with the methods as numpy arrays in the
canonical layout (OIHW kernels, ``[out, in]`` dense weights, NCHW activations).
The methods never import a framework; they call :func:`get_backend` and this
interface. Semantics every backend must match (the parity suite checks them):

* parameters start from :func:`compress_core.ir.init.init_params` (numpy, seeded),
  so the same seed gives the same network in every backend;
* BatchNorm uses ``eps`` and ``momentum`` from the graph; training normalises
  with the biased batch variance and updates the running variance with the
  unbiased one (PyTorch's rule);
* the loss is a sum of named terms (:class:`LossSpec`): ``ce`` (mean softmax
  cross-entropy), ``wd`` (``0.5 * weight_decay * sum ||w||^2`` over conv and
  dense weights and biases, BatchNorm excluded), ``kd`` (Hinton distillation
  against given teacher logits: ``kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))``
  averaged over the batch); ``feature`` (an intermediate-feature loss:
  ``feature_weight * mean((flatten(tap) @ P - target)^2)`` over batch and
  components, where ``tap`` is a node of the student, ``flatten`` is in NCHW
  order, ``P [D, k]`` is set with :meth:`Trainer.set_projection` and ``target
  [N, k]`` is given with every step; CDC's DCA distillation);
* the optimiser is SGD with (optionally Nesterov) momentum in the PyTorch /
  ``tf.compat.v1.train.MomentumOptimizer`` form ``v = mu v + g; w -= lr (g + mu v)``
  (Nesterov) or ``w -= lr v``; the learning rate is passed with every step;
* mixed precision (``OptimSpec.precision`` ``bfloat16`` or ``float16``): the training
  forward pass computes convolutions and dense layers in that type from float32 weights;
  the weights, the optimiser state, BatchNorm's normalisation and statistics and every
  loss term stay float32. ``float16`` scales the loss dynamically (:data:`LOSS_SCALE`):
  a step whose gradients are not finite is skipped and halves the scale, every
  ``growth_interval`` finite steps in a row double it (PyTorch's ``GradScaler`` rule).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress_core.criteria.discriminant import spatial_sums
from compress_core.errors import UserError
from compress_core.ir.graph import Graph

BACKENDS = ("torch", "tf")
#: compute types of a training step's forward pass (:attr:`OptimSpec.precision`)
PRECISIONS = ("float32", "bfloat16", "float16")
#: float16 dynamic loss scaling: initial scale, growth and backoff factors, finite steps between growths
LOSS_SCALE = {"init": 2.0 ** 16, "growth": 2.0, "backoff": 0.5, "growth_interval": 2000}


@dataclass(frozen=True)
class LossSpec:
    """Weights of the named loss terms; a zero weight removes the term."""

    weight_decay: float = 0.0
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    ce_weight: float = 1.0
    feature_weight: float = 0.0
    feature_tap: str = ""


@dataclass(frozen=True)
class OptimSpec:
    """SGD settings. ``lr_scale`` multiplies the step's learning rate per canonical parameter
    name (others get ``lr_scale_default``): Hinge searches with its sparsity matrices at
    ``lr`` and the rest of the network at ``lr * 0.01``. ``lr_group`` puts parameters in
    named groups (others: ``"rest"``) whose rates :meth:`Trainer.set_lr_factors` can
    multiply between steps; ``gradients_of`` names the parameters whose gradients
    :meth:`Trainer.gradients` returns after each step (Hinge's gradient-ratio adjustment).
    ``precision`` is the compute type of the training forward pass (:data:`PRECISIONS`;
    see the module's notes on mixed precision)."""

    momentum: float = 0.9
    nesterov: bool = True
    lr_scale: Mapping[str, float] = field(default_factory=dict)
    lr_scale_default: float = 1.0
    lr_group: Mapping[str, str] = field(default_factory=dict)
    gradients_of: tuple[str, ...] = ()
    precision: str = "float32"

    def check_precision(self) -> str:
        """``precision``, if it is one of :data:`PRECISIONS`."""
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r} (choose from: {', '.join(PRECISIONS)})")
        return self.precision

    def groups(self, names: Sequence[str]) -> dict[str, tuple[str, float]]:
        """``(group, lr multiplier)`` of every trainable parameter in ``names``."""
        unknown = sorted((set(self.lr_scale) | set(self.lr_group) | set(self.gradients_of)) - set(names))
        if unknown:
            raise UserError(f"lr_scale / lr_group / gradients_of name parameters the model does not train: "
                            f"{unknown[:3]}")
        return {k: (self.lr_group.get(k, "rest"), float(self.lr_scale.get(k, self.lr_scale_default)))
                for k in names}


def check_lr_groups(factors: Mapping[str, float], known: Iterable[str]) -> dict[str, float]:
    """``factors`` as floats if every key is a known lr group (``Trainer.set_lr_factors``)."""
    known = sorted(set(known))
    unknown = sorted(set(factors) - set(known))
    if unknown:
        raise UserError(f"set_lr_factors: no lr group {unknown[0]!r} (groups: {known})")
    return {g: float(f) for g, f in factors.items()}


def pick(live: Mapping[str, Any], names: Sequence[str] | None, arch: str) -> Mapping[str, Any]:
    """``live`` restricted to ``names`` (``get_weights(model, names)``); None keeps everything."""
    if names is None:
        return live
    missing = [k for k in names if k not in live]
    if missing:
        raise UserError(f"model '{arch}' has no parameter '{missing[0]}'")
    return {k: live[k] for k in names}


class Model(abc.ABC):
    """A live model of one backend, built from ``graph``."""

    graph: Graph


class Trainer(abc.ABC):
    """Optimiser state bound to one model and one loss."""

    @abc.abstractmethod
    def step(self, x: np.ndarray, y: np.ndarray, lr: float, teacher_logits: np.ndarray | None = None,
             feature_target: np.ndarray | None = None) -> dict[str, float]:
        """One SGD step on a batch (``x`` NCHW float32, ``y`` int labels).

        Returns the value of every active loss term and ``loss`` (their sum),
        computed before the update. In a data-parallel run (``Backend.collective`` set when
        the trainer was made) ``x`` and ``y`` are this rank's rows of the global batch (maybe
        none) and the step is the global batch's: the per-image terms are summed over the
        ranks and divided by the global image count, weight decay counts once, every rank
        applies the same update and returns the global batch's values.
        """

    @abc.abstractmethod
    def set_lr_factors(self, factors: Mapping[str, float]) -> None:
        """Multiply the rate of every parameter of group ``g`` (``OptimSpec.lr_group``) by
        ``factors[g]`` from the next step on (groups not named keep their factor; start: 1)."""

    @abc.abstractmethod
    def gradients(self) -> dict[str, np.ndarray]:
        """The gradients of the last step's loss for ``OptimSpec.gradients_of`` (canonical layout)."""

    @abc.abstractmethod
    def set_projection(self, projection: np.ndarray) -> None:
        """The ``[D, k]`` matrix of the ``feature`` loss term (refitted by the method)."""

    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Optimiser buffers as numpy (``momentum/<param name>``; with float16, ``loss_scale/scale`` and
        ``loss_scale/good_steps``), for resuming."""

    @abc.abstractmethod
    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore buffers written by :meth:`state` (from either backend)."""


class Collective(abc.ABC):
    """The framework's own engine summing and sharing numpy arrays across the processes of a
    data-parallel run (``Backend.init_distributed``); every rank calls each method in the same order."""

    rank: int
    world: int

    @abc.abstractmethod
    def all_reduce(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Elementwise sums over the ranks, same shapes and dtypes (float32, float64, int64)."""

    @abc.abstractmethod
    def broadcast(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Rank 0's arrays on every rank (the others pass arrays of the same shapes and dtypes)."""

    def barrier(self) -> None:
        """Return once every rank called it."""
        self.all_reduce([np.zeros(1, np.float32)])


def pack(arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays flattened into one vector per dtype (one collective call each)."""
    by: dict[str, list] = {}
    for a in arrays:
        by.setdefault(np.asarray(a).dtype.str, []).append(np.asarray(a).reshape(-1))
    return {k: np.concatenate(v) for k, v in by.items()}


def unpack(arrays: Sequence[np.ndarray], flat: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Inverse of :func:`pack`: the vectors cut back into arrays shaped as ``arrays``."""
    offset = dict.fromkeys(flat, 0)
    out = []
    for a in arrays:
        a = np.asarray(a)
        k = a.dtype.str
        out.append(np.asarray(flat[k][offset[k]:offset[k] + a.size], a.dtype).reshape(a.shape))
        offset[k] += a.size
    return out


class Backend(abc.ABC):
    """One framework. Stateless apart from the framework's own settings."""

    name: str
    #: set by :meth:`init_distributed`: trainers then sum their gradients over the ranks
    collective: Collective | None = None

    def use_sync_bn(self) -> None:
        """Normalise with the statistics of the global batch in data-parallel training (``--sync-bn``)."""
        raise UserError(f"--sync-bn: the {self.name} backend has no synchronised BatchNorm")

    def init_distributed(self, rank: int, world: int, workers: Sequence[str] | None = None,
                         joined: Collective | None = None) -> Collective:
        """Join a data-parallel run of ``world`` processes as ``rank`` (``methods.distributed.start``);
        ``workers``: every rank's ``host:port``, for engines that need them (TensorFlow's cluster);
        ``joined``: the collective of an earlier backend object of this process, which this one adopts
        (a process joins a run once)."""
        raise UserError(f"the {self.name} backend cannot run on several processes")

    @abc.abstractmethod
    def build(self, graph: Graph, params: Mapping[str, np.ndarray] | None = None) -> Model:
        """A live model of ``graph``; weights from ``params`` or from ``init_params(graph)``."""

    @abc.abstractmethod
    def get_weights(self, model: Model, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All parameters and buffers (or only ``names``), canonical names and layouts, float32 copies."""

    @abc.abstractmethod
    def set_weights(self, model: Model, params: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Assign canonical arrays; ``strict=False`` allows a subset (e.g. a proximal step)."""

    @abc.abstractmethod
    def forward(self, model: Model, x: np.ndarray, taps: Sequence[str] = (),
                bn_batch_stats: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits for a batch and the outputs of the nodes named in ``taps`` (NCHW).

        BatchNorm uses its running statistics unless ``bn_batch_stats``, which
        normalises with the batch's own statistics without updating anything
        (the CDC reference scores features that way).
        """

    @abc.abstractmethod
    def trainer(self, model: Model, loss: LossSpec, optim: OptimSpec | None = None) -> Trainer:
        """An optimiser for ``model`` with the given loss terms (default ``OptimSpec()``)."""

    #: file formats :meth:`export` writes (``methods.export --format``)
    export_formats: tuple[str, ...] = ()

    def export(self, graph: Graph, params: Mapping[str, np.ndarray], path: str, fmt: str,
               quantize: str | None = None) -> None:
        """Write ``graph`` with ``params`` as a file of format ``fmt`` that runs without this library;
        ``quantize`` names a post-training quantisation where the format has one (``tflite``)."""
        raise UserError(f"the {self.name} backend exports no '{fmt}' files (formats: {self.export_formats})")

    def load_exported(self, path: str, fmt: str):
        """A callable ``f(x NCHW float32) -> logits`` running a file :meth:`export` wrote, as a user of the
        format would run it (the format's own loader, nothing of this library)."""
        raise UserError(f"the {self.name} backend reads no '{fmt}' files")

    # -- shared conveniences, written once on top of the primitives -------------------------------
    def predict(self, model: Model, batches: Iterable[np.ndarray]) -> np.ndarray:
        """Logits for every batch, concatenated."""
        return np.concatenate([self.forward(model, x)[0] for x in batches])

    def stream(self, model: Model, batches: Iterable[tuple[np.ndarray, np.ndarray]],
               taps: Sequence[str], bn_batch_stats: bool = False
               ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yield ``(activations of taps, labels)`` batch by batch, for core accumulators."""
        for n in taps:
            model.graph[n]
        for x, y in batches:
            yield self.forward(model, x, taps, bn_batch_stats)[1], y

    def spatial_sums(self, model: Model, x: np.ndarray, taps: Sequence[str], bn_batch_stats: bool = False
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """Per-image spatial sum and Euclidean norm of each tap: ``(sums [n, C], norms [n, C], count)``.

        ``count = H * W`` positions (1 for vectors); the input of ``ClassStats.update_sums``.
        This default reduces in numpy; a backend overrides it to reduce next to the
        convolutions (one read of each map per reduction), so whole feature maps never
        leave the framework during a scoring pass.
        """
        _, acts = self.forward(model, x, taps, bn_batch_stats)
        return {t: spatial_sums(a) for t, a in acts.items()}

    def stream_sums(self, model: Model, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                    taps: Sequence[str], bn_batch_stats: bool = False):
        """Like :meth:`stream`, yielding :meth:`spatial_sums` instead of whole activations."""
        for n in taps:
            model.graph[n]  # an unknown layer name fails before any work
        for x, y in batches:
            yield self.spatial_sums(model, x, taps, bn_batch_stats), y


def import_source(source: str, input_shape: Sequence[int], weights: str = "", arch: str | None = None,
                  kwargs: Mapping[str, Any] | None = None):
    """``(graph, params)`` of a model that another framework defines, whatever backend then runs it:
    ``module:package.path:callable`` (a PyTorch ``nn.Module``, through
    :func:`backends.torch.importer.load_module_source`, the callable called with ``kwargs``;
    ``weights``: a state_dict file to load into it first), ``keras:path`` (a saved Keras model;
    ``weights``: a ``.weights.h5`` file) or ``tf1:path`` (a ``.meta`` graph with the checkpoint prefix
    ``weights``, or a frozen ``.pb``; ``kwargs`` name its input and output tensors), through
    :mod:`backends.tf.importer`."""
    if source.startswith("module:"):
        from backends.torch.importer import load_module_source

        return load_module_source(source, input_shape, weights, arch, kwargs)
    if source.startswith(("keras:", "tf1:")):
        from backends.tf.importer import load_keras_source, load_tf1_source

        load = load_keras_source if source.startswith("keras:") else load_tf1_source
        return load(source.split(":", 1)[1], input_shape, weights, arch, kwargs)
    raise UserError(f"unknown model source {source!r} (zoo names, module:package.path:callable, keras:path, "
                    f"tf1:path)")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state_dict file (``.pth``), read with ``weights_only=True`` (nothing unpickled runs), as
    float32 numpy arrays; the BatchNorm batch counters are dropped."""
    from backends.torch.importer import read_state_dict as read

    return read(path)


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name`` (``"torch"`` or ``"tf"``), imported on first use."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}' (choose from: {', '.join(BACKENDS)})")
    module = importlib.import_module(f"backends.{name}")
    return module.make_backend(**options)
