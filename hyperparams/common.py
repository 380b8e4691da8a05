"""Sections shared by the hyperparameter files; every field is explained here once.

An experiment file calls these builders with the values that make it that
experiment and adds its method's own section.
"""

from ml_collections import ConfigDict


def data(name: str = "digits", path: str = "", val_fraction: float = 0.15,
         test_fraction: float = 0.15, image_size: int = 224, workers: int = -1) -> ConfigDict:
    return ConfigDict({
        "name": name,                    # digits (bundled), cifar10, cifar100, synthetic, imagenet
        "path": path,                    # CIFAR: folder or .tar.gz of the python-pickle archive;
                                         # imagenet: folder holding train/<class>/*.JPEG and val/<class>/*.JPEG
        "val_fraction": val_fraction,    # share of the training data held out for model selection
        "test_fraction": test_fraction,  # digits only: share held out as test set (CIFAR has its own)
        "image_size": image_size,        # imagenet: crop size S (eval resizes the short side to S/0.875 first)
        "workers": workers,              # imagenet: processes decoding and augmenting images (-1: one per CPU
                                         #   core, 0: in the training process); the batches do not depend on it
    })


def train(epochs: int, lr: float, batch_size: int = 128, schedule: str = "step",
          milestones: tuple = (), gamma: float = 0.1, weight_decay: float = 5e-4,
          momentum: float = 0.9, nesterov: bool = True, augment: bool = True,
          precision: str = "float32") -> ConfigDict:
    return ConfigDict({
        "epochs": epochs,              # passes over the training split
        "batch_size": batch_size,      # images per SGD step
        "lr": lr,                      # initial learning rate
        "schedule": schedule,          # step (x gamma at each milestone), cosine or constant
        "milestones": tuple(milestones),  # epochs at which a step schedule multiplies lr by gamma
        "gamma": gamma,                # step schedule factor
        "weight_decay": weight_decay,  # coefficient of 0.5*||w||^2 on conv/dense weights and biases
        "momentum": momentum,          # SGD momentum
        "nesterov": nesterov,          # Nesterov momentum (the CDC reference uses it)
        "augment": augment,            # random 4-pixel pad-and-crop plus horizontal flip
        "precision": precision,        # float32, or mixed precision: bfloat16 / float16 forward passes on
                                       #   float32 weights (BatchNorm statistics and every loss term stay
                                       #   float32; float16 with dynamic loss scaling)
    })


def base(model: str, workdir: str, seed: int = 0, **data_kw) -> ConfigDict:
    return ConfigDict({
        "seed": seed,              # data split, shuffling and initialisation
        "workdir": workdir,        # where config, checkpoints, metrics and log go
        "model": ConfigDict({
            "source": model,   # a zoo name (resnet20..110, resnet164, vgg16, densenet40, resnext20/164, wrn16_10,
                               # resnet50, mobilenetv2, googlenet), or module:package.path:callable, a Python
                               # callable returning the torch.nn.Module (e.g. module:torchvision.models:resnet18),
                               # or keras:path/model.keras (a saved Keras model, .keras or .h5), or
                               # tf1:path/model.meta (a TF1 meta graph; a frozen GraphDef: tf1:path/frozen.pb)
            "weights": "",     # the network to start from: a checkpoint of this model (a compressed one is fine),
                               # or a state_dict file (.pth) of a module source, a .weights.h5 of a keras source,
                               # the checkpoint prefix (model.ckpt-1000) of a tf1 source; compression methods
                               # compress it, train continues from it, DCFF fuses from it; empty: the source's
                               # own initial weights, and the compression methods first train a baseline
            "input_shape": (),  # (C, H, W) the model takes; empty: the data's (a mismatch is an error)
            "kwargs": "{}",    # keyword arguments of the source, a dict literal: a module source's callable's
                               # ("{'num_classes': 10}"); a tf1 source's tensor names and layout
                               # ("{'inputs': 'images', 'outputs': 'logits'}", optionally 'data_format': 'NCHW')
        }),
        "data": data(**data_kw),
        "log": ConfigDict({
            "tensorboard": True,  # TensorBoard event files in <workdir>/tb/ (needs the tensorboard package)
        }),
    })


TRAIN_SECTIONS = ("train", "finetune", "distill", "search")


def source_kwargs(text: str) -> dict:
    """``model.kwargs``: a dict literal of keyword arguments (nothing is executed)."""
    import ast

    from compress_core.errors import UserError

    try:
        value = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UserError(f"config field 'model.kwargs' must be a dict literal such as \"{{'num_classes': 10}}\", "
                        f"got {text!r}")
    return value


#: model sources read from a file: prefix -> the file endings it takes
FILE_SOURCES = {"keras:": (".keras", ".h5"), "tf1:": (".meta", ".pb")}


def check_source(source: str) -> None:
    """``model.source`` names a zoo model or has the form ``module:package.path:callable``,
    ``keras:path.keras`` (or ``.h5``) or ``tf1:path.meta`` (or ``.pb``)."""
    import re

    from compress_core.errors import UserError
    from compress_core.ir.zoo import MODELS

    if source in MODELS:
        return
    if source.startswith("module:"):
        if not re.fullmatch(r"module:[A-Za-z_][\w.]*:[A-Za-z_]\w*", source):
            raise UserError(f"config field 'model.source' is {source!r}: write module:package.path:callable")
        return
    for prefix, endings in FILE_SOURCES.items():
        if source.startswith(prefix):
            if not source.endswith(endings) or len(source) <= len(prefix) + len(min(endings, key=len)):
                raise UserError(f"config field 'model.source' is {source!r}: write {prefix}path/model"
                                f"{' or '.join(endings)}")
            return
    raise UserError(f"config field 'model.source' is {source!r}: a zoo model ({', '.join(MODELS)}), "
                    f"module:package.path:callable, keras:path/model.keras or tf1:path/model.meta")


def validate_train(cfg) -> None:
    """Checks every file runs from its ``validate`` (and every command runs on any file):
    the seed, the model, the data, and every training section (``train``, ``finetune``,
    ``distill``, ``search``) with the same rules."""
    from backends.base import PRECISIONS
    from compress_core.data.config import check_choice, check_positive, check_range
    from compress_core.errors import UserError

    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise UserError(f"config field 'seed' must be an integer in [0, 2**32), got {seed!r}")
    check_source(cfg.model.source)
    source_kwargs(cfg.model.kwargs)
    shape = tuple(cfg.model.input_shape)
    if shape and (len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
        raise UserError(f"config field 'model.input_shape' must be (C, H, W) or empty, got {shape}")
    check_choice(cfg, "data.name", ["digits", "cifar10", "cifar100", "synthetic", "imagenet"])
    if "image_size" in cfg.data:
        check_positive(cfg, "data.image_size")
    check_range(cfg, "data.val_fraction", 0.0, 1.0, lo_inclusive=False)
    workers = cfg.data.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < -1:
        raise UserError(f"config field 'data.workers' must be an integer >= -1 (-1: one per CPU core), got {workers!r}")
    if "log" in cfg and not isinstance(cfg.log.tensorboard, bool):
        raise UserError(f"config field 'log.tensorboard' must be true or false, got {cfg.log.tensorboard!r}")
    for section in TRAIN_SECTIONS:
        if section not in cfg:
            continue
        t = cfg[section]
        for f in ("epochs", "batch_size"):
            v = t[f]
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"config field '{section}.{f}' must be an integer, got {v!r}")
        # a baseline needs an epoch; fine-tuning, distillation or a search may be skipped with 0
        check_range(cfg, f"{section}.epochs", 1 if section == "train" else 0, None)
        check_positive(cfg, f"{section}.batch_size")
        check_positive(cfg, f"{section}.lr")
        check_range(cfg, f"{section}.weight_decay", 0.0, None)
        check_range(cfg, f"{section}.momentum", 0.0, 1.0)
        check_positive(cfg, f"{section}.gamma")
        check_choice(cfg, f"{section}.schedule", ["step", "cosine", "constant"])
        if "precision" in t:
            check_choice(cfg, f"{section}.precision", list(PRECISIONS))
        ms = list(t.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(set(ms)):
            raise UserError(f"config field '{section}.milestones' must be increasing positive epochs, got {ms}")


def cdc(ratio: float = 0.45, plan: str = "uniform", mac_target: float = 0.5, block_threshold: int = -1,
        num_coarse: int = 0, coarse_labels: str = "", scorer: str = "gsd", stream: str = "group",
        bn_mode: str = "inference", score_batch_size: int = 256, min_width: int = 1,
        multiple: int = 0, widths: tuple = (), latency_runtime: str = "backend") -> ConfigDict:
    from ml_collections import config_dict

    return ConfigDict({
        "scorer": scorer,            # gsd (symmetric divergence), abs_snr, fdr, t_test, di
        "ridge": config_dict.placeholder(float),  # scorer ridge; None: the reference's (gsd 0.05, others 1e-4)
        "bn_mode": bn_mode,          # inference: BN running stats; batch: the reference's batch statistics
        "score_batch_size": score_batch_size,  # images per scoring batch (the BN batch in batch mode)
        "plan": plan,                # uniform (ratio), predefined (widths), macs (mac_target: one uniform
                                     #   ratio), latency (mac_target: the widths that time fastest), depth
                                     #   (mac_target: whole residual blocks removed, the lowest-scored first)
        "ratio": ratio,              # uniform plan: remove floor(C * ratio) channels of every mask
        "widths": tuple(widths),     # predefined plan: channels kept per mask, in mask order (0: the mask's
                                     #   residual block is removed; all masks of that block 0)
        "mac_target": mac_target,    # macs, latency and depth plans: fraction of the unpruned MACs to keep
        "latency_runtime": latency_runtime,  # latency plan: timed on backend (the --backend) or ort (ONNX Runtime)
        "latency_batch": 32,         # latency plan: batch the networks are timed at
        "latency_repeats": 5,        # latency plan: timed passes per network (median, in turns)
        "min_width": min_width,      # no mask keeps fewer channels
        "multiple": multiple,        # round kept widths to the nearest multiple; 0: the one the conv kernels step
                                     #   at, measured on the backend (16 with AVX-512, 8 with AVX2); 1: off
        "stream": stream,            # a residual stream's masks: group (default: the stream is cut as one
                                     #   channel group, scored by the sum of its masks' scores) or select (the
                                     #   reference: each block reads a selection, the stream stays whole; slower)
        "block_threshold": block_threshold,  # blocks <= this are scored with coarse labels; -1: all fine
        "coarse_labels": coarse_labels,  # file with one group id per class; empty: from the confusion matrix
        "num_coarse": num_coarse,    # groups when computed (spectral clustering of validation confusions)
    })


def distill(epochs: int, lr: float, enabled: bool = True, kd_weight: float = 1.0, kd_temperature: float = 1.0,
            dca_weight: float = 0.0, dca_tap: str = "", dca_labels: str = "coarse", dca_refit_every: int = 80,
            **train_kw) -> ConfigDict:
    c = train(epochs=epochs, lr=lr, **train_kw)
    c.update({
        "enabled": enabled,            # cdc_prune: distil after fine-tuning
        "student": "",                 # cdc_distill: pruned checkpoint (cdc_prune passes its own)
        "kd_weight": kd_weight,        # weight of T^2 * KL(teacher || student) at temperature T
        "kd_temperature": kd_temperature,  # T (the reference: 1, where the T^2 factor is 1)
        "dca_weight": dca_weight,      # weight of the DCA intermediate loss (the reference ships 0)
        "dca_tap": dca_tap,            # node whose output is projected (same name in teacher and student)
        "dca_labels": dca_labels,      # coarse or fine labels for the DCA subspaces
        "dca_refit_every": dca_refit_every,  # epochs between refits of the student subspace
    })
    return c


def validate_cdc(cfg) -> None:
    """Checks of a CDC file that need no model (those against the model and the data run in the
    methods' checks, ``methods.cdc_distill.check_cdc``, before any work)."""
    from compress_core.data.config import check_choice, check_positive, check_range
    from compress_core.errors import UserError

    validate_train(cfg)
    check_choice(cfg, "cdc.scorer", ["gsd", "abs_snr", "fdr", "t_test", "di"])
    check_choice(cfg, "cdc.plan", ["uniform", "predefined", "macs", "latency", "depth"])
    check_choice(cfg, "cdc.latency_runtime", ["backend", "ort"])
    check_positive(cfg, "cdc.latency_batch")
    check_positive(cfg, "cdc.latency_repeats")
    check_choice(cfg, "cdc.bn_mode", ["inference", "batch"])
    check_choice(cfg, "cdc.stream", ["select", "group"])
    check_range(cfg, "cdc.ratio", 0.0, 1.0)
    check_range(cfg, "cdc.mac_target", 0.0, 1.0, lo_inclusive=False, hi_inclusive=True)
    check_choice(cfg, "distill.dca_labels", ["coarse", "fine"])
    if cfg.distill.dca_weight < 0 or cfg.distill.kd_weight < 0 or cfg.distill.kd_temperature <= 0:
        raise UserError("distill.dca_weight and distill.kd_weight must be >= 0 and distill.kd_temperature > 0")
    if cfg.distill.dca_weight > 0 and not cfg.distill.dca_tap:
        raise UserError("distill.dca_weight > 0 needs distill.dca_tap (the layer whose output is projected)")
    check_positive(cfg, "cdc.score_batch_size")
    check_positive(cfg, "cdc.min_width")
    check_range(cfg, "cdc.multiple", 0, None)
    check_positive(cfg, "distill.dca_refit_every")
    if cfg.cdc.block_threshold < -1:
        raise UserError(f"config field 'cdc.block_threshold' is {cfg.cdc.block_threshold} (-1: fine labels everywhere)")
    if cfg.cdc.block_threshold >= 0 and not cfg.cdc.coarse_labels and cfg.cdc.num_coarse < 2:
        raise UserError("coarse labels are used (cdc.block_threshold >= 0): set cdc.coarse_labels "
                        "or cdc.num_coarse >= 2")


def kse(G: int = 4, T: int = 0, layers: str = r"^layer\d+\.\d+\.conv\d$", entropy_sets: str = "paper",
        form: str = "auto"):
    return ConfigDict({
        "G": G,                      # number of levels (>= 2): level 0 pruned, G-1 kept, others clustered
        "T": T,                      # >= 0: intermediate levels get ceil(N / 2^(G-1-g+T)) centroids
        "k": 5,                      # nearest neighbours of the kernel entropy (the reference: 5)
        "entropy_sets": entropy_sets,  # paper: kernels of input channel c; reference: the released code's sets
        "layers": layers,            # regex of the conv names to compress (full match); all: every ungrouped
                                     #   conv but the stem (any model, imported ones too)
        "kmeans_max_iter": 100,      # Lloyd iterations at most per k-means
        "kmeans_tol": 1e-4,          # stop when centres move < tol * mean variance (scikit-learn's rule)
        "form": form,                # exported inference form: auto (the faster here), dense or shared
        "latency_batch": 32,         # batch size at which the two forms are timed
        "latency_repeats": 10,       # timed forward passes per form (median)
    })


def validate_kse(cfg) -> None:
    """Checks of a KSE file that need no model (its layers are checked against the model by
    ``methods.kse.check`` before any work)."""
    from compress_core.criteria.kse import ENTROPY_SETS
    from compress_core.data.config import check_choice, check_range

    validate_train(cfg)
    check_range(cfg, "kse.G", 2, None)
    check_range(cfg, "kse.T", 0, None)
    check_range(cfg, "kse.k", 1, None)
    check_choice(cfg, "kse.entropy_sets", list(ENTROPY_SETS))
    check_choice(cfg, "kse.form", ["auto", "dense", "shared"])


def dcff(rates: str, schedule: str = "run", t_start: float = 1.0, t_end: float = 5.0,
         k: float = 3.0) -> ConfigDict:
    return ConfigDict({
        "rates": rates,        # prune rates, e.g. "[0.0]+[0.35,0.4,0.1]*10+[0.3,0.3,0.1]*6" (formats: compress_core.recipes.dcff)
        "schedule": schedule,  # run: t from t_start to t_end over the whole run, k per run;
                               # paper: the released code's t_s=1, t_e=1e4, k=1 per epoch (fields below ignored)
        "t_start": t_start,    # temperature at the first epoch (> 0; multiplies the negative filter distance)
        "t_end": t_end,        # temperature after the last epoch (>= t_start)
        "k": k,                # steepness: t = t_s + (t_e - t_s) tanh(k x / 2) / tanh(k / 2), x = epoch / epochs
    })


def validate_dcff(cfg) -> None:
    """Checks of a DCFF file that need no model (the rates against the model: ``methods.dcff.check``)."""
    from compress_core.data.config import check_choice, check_positive, check_range
    from compress_core.recipes import dcff as dcff_core

    validate_train(cfg)
    check_choice(cfg, "dcff.schedule", ["run", "paper"])
    check_positive(cfg, "dcff.t_start")
    check_range(cfg, "dcff.t_end", cfg.dcff.t_start, None)
    check_positive(cfg, "dcff.k")
    dcff_core.parse_rates(cfg.dcff.rates)


def hinge(ratio: float, reg: float = 2e-4, penalty: str = "l21", anneal: float = 2.0, anneal_t1: float = 10.0,
          anneal_t2: float = 5.0, threshold: float = 5e-3, stop_limit: float = 0.1, init: str = "auto",
          layer_balancing: bool = True, same_ratio: bool = True, lr_ratio: float = 0.01, distill: bool = True
          ) -> ConfigDict:
    return ConfigDict({
        "ratio": ratio,              # target: compressed MACs / MACs of the network before Hinge, in (0, 1]
        "penalty": penalty,          # l21 (group l2,1 soft-thresholding, the paper) or l1/2 (group half-thresholding)
        "reg": reg,                  # lambda: the prox threshold of matrix l is lr * lambda_eff * w_l
        "anneal": anneal,            # f: lambda_eff = lambda, lambda/f, lambda/f^2 as the family-1 regulariser
        "anneal_t1": anneal_t1,      #   falls below t1, then t2 (0: no annealing)
        "anneal_t2": anneal_t2,
        "threshold": threshold,      # tau0: groups with norm < tau0 count as zero while searching
        "stop_limit": stop_limit,    # stop searching when MAC ratio at tau0 - ratio <= stop_limit
        "tolerance": 0.01,           # the threshold search ends within this of the target ratio
        "remain": 0.2,               # share of the groups of every matrix that always survives
        "init": init,                # auto (the reference's per architecture), svd2 or identity
        "layer_balancing": layer_balancing,  # w_l = mean group norm of matrix l at init (else 1)
        "same_ratio": same_ratio,    # a block's 2nd matrix keeps as many groups as its 1st
        "lr_ratio": lr_ratio,        # searching: matrices at lr, the rest of the network at lr * lr_ratio
        "lr_adjust": "auto",         # p1: rates of the rest and the 1st matrices / rho^1.35 (rho: gradient-norm
                                     #   ratio of the two matrix families, every step); none; auto: p1 where the
                                     #   reference uses it (ResNet basic, bottleneck, WRN)
        "distill": distill,          # fine-tune with 0.6 CE + 0.4 T^2 KL(teacher || student) at T = 4
        "kd_weight": 0.4,
        "ce_weight": 0.6,
        "kd_temperature": 4.0,
    })


def validate_hinge(cfg) -> None:
    """Checks of a Hinge file that need no model (the placement on the model: ``methods.hinge.check``)."""
    from compress_core.data.config import check_choice, check_positive, check_range
    from compress_core.recipes import hinge

    validate_train(cfg)
    check_range(cfg, "hinge.ratio", 0.0, 1.0, lo_inclusive=False, hi_inclusive=True)
    check_choice(cfg, "hinge.penalty", list(hinge.PENALTIES))
    check_choice(cfg, "hinge.init", list(hinge.INITS[:3]))
    check_range(cfg, "hinge.reg", 0.0, None)
    check_range(cfg, "hinge.threshold", 0.0, None)
    check_range(cfg, "hinge.anneal", 0.0, None)
    check_range(cfg, "hinge.stop_limit", 0.0, None)
    check_range(cfg, "hinge.remain", 0.0, 1.0, hi_inclusive=True)
    check_positive(cfg, "hinge.tolerance")
    check_range(cfg, "hinge.lr_ratio", 0.0, None)
    check_choice(cfg, "hinge.lr_adjust", list(hinge.LR_ADJUST))
