"""CP decomposition (Lebedev et al. 2015) of a trained ResNet-56 / CIFAR-10.

Ranks: the largest Tucker-2 EVBMF rank of each conv (``cp_rule="vbmf"``; the seed's
``max(shape) // 3`` is ``--config.decompose.cp_rule=seed``). ALS from a seeded random
start with a small ridge; every layer's reconstruction error is in layers.json. CP
fine-tuning is fragile (degenerate factors): the seed used lr 1e-6; here 1e-4.

    python -m methods.decompose --backend torch --config hyperparams/decompose_resnet56_cifar10_cp.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.model.weights=resnet56_c10.safetensors
"""

from hyperparams import decompose_resnet56_cifar10
from hyperparams.decompose_resnet20_digits import validate  # noqa: F401 - the shared checks


def get_config():
    cfg = decompose_resnet56_cifar10.get_config()
    cfg.workdir = "runs/decompose_resnet56_cifar10_cp"
    cfg.decompose.method = "cp"
    cfg.finetune.lr = 1e-4
    return cfg
