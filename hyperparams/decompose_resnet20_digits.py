"""Tucker-2 with VBMF ranks on a digits ResNet-20: the tests' and README's small run (minutes on 2 cores).

Trains its own baseline (when ``model.weights`` is empty), replaces every conv whose
VBMF ranks save MACs and whose factorised sequence is faster on this machine,
compresses the classifier by truncated SVD, fine-tunes. This file also defines
the ``decompose`` section and the checks every ``decompose_*`` file uses.

    python -m methods.decompose --backend torch
"""

from ml_collections import ConfigDict

from hyperparams import common

METHODS = ("tucker2", "cp")
FC_MODES = ("none", "svd", "diagonal")


def section(method: str = "tucker2", fc: str = "svd", layers: tuple = (), skip: tuple = (),
            latency_guard: bool = True, cp_rule: str = "vbmf", weakening: float = 0.0) -> ConfigDict:
    return ConfigDict({
        "method": method,            # tucker2 (Kim et al. 2016) or cp (Lebedev et al. 2015) for convs
        "layers": tuple(layers),     # conv/dense names to try; empty: every conv (and dense when fc != none)
        "skip": tuple(skip),         # names never decomposed
        "ranks": (),                 # rank overrides: (name, r_out, r_in) Tucker-2, (name, r) CP / dense; 0: leave alone
        "weakening": weakening,      # rank + ceil(weakening * (dim - rank)): 0 = VBMF rank, 1 = full rank
        "cp_rule": cp_rule,          # CP rank when not overridden: vbmf (max Tucker-2 VBMF rank) or seed (max dim // 3)
        "cp_iters": 200,             # ALS iterations of CP
        "tucker_iters": 10,          # HOOI sweeps after the SVD start (seed: tensorly's 100, minutes per 512-ch conv)
        "fc": fc,                    # dense layers: none, svd (VBMF rank) or diagonal (regularised, then compact)
        "diag_lambda": 200.0,        # diagonal: weight lam of (lam/2)||off-diagonal||^2; after each step / (1 + lr lam)
        "latency_guard": latency_guard,  # keep a factorisation only where it runs faster on this machine
        "latency_batch": 32,         # images per timed forward pass of the guard
        "latency_repeats": 10,       # timed passes per candidate (median)
        "latency_margin": 0.0,       # keep when t_factorised < (1 - margin) * t_dense
        "report_repeats": 20,        # timed passes per model for the report's latency columns
    })


def get_config():
    cfg = common.base("resnet20", workdir="runs/decompose_resnet20_digits")
    # baseline, trained when model.weights is empty (as hyperparams/resnet20_digits.py)
    cfg.train = common.train(epochs=15, lr=0.1, batch_size=64, schedule="cosine", augment=False)
    # 15 epochs leave the weights dominated by their random initialisation, where VBMF sees
    # only noise (rank 0 everywhere): the ranks are weakened halfway toward full rank
    cfg.decompose = section(weakening=0.5)
    cfg.finetune = common.train(epochs=6, lr=0.01, batch_size=64, schedule="cosine", augment=False)
    return cfg


def validate(cfg) -> None:
    """The choices of the decompose section (its layers and ranks are checked against the model by
    ``methods.decompose.check`` before any work)."""
    from compress_core.data.config import check_choice, check_positive, check_range

    common.validate_train(cfg)
    check_choice(cfg, "decompose.method", METHODS)
    check_choice(cfg, "decompose.fc", FC_MODES)
    check_choice(cfg, "decompose.cp_rule", ["vbmf", "seed"])
    check_range(cfg, "decompose.diag_lambda", 0.0, None)
    check_range(cfg, "decompose.weakening", 0.0, 1.0)
    check_range(cfg, "decompose.latency_margin", 0.0, 1.0, hi_inclusive=False)
    for f in ("decompose.cp_iters", "decompose.tucker_iters", "decompose.latency_batch", "decompose.latency_repeats",
              "decompose.report_repeats"):
        check_positive(cfg, f)
