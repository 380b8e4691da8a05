"""Tucker-2 with EVBMF ranks on a trained ResNet-56 / CIFAR-10 (Kim et al. 2016 applied to a CIFAR ResNet).

Every 3x3 conv is a candidate (the stem too: the MAC check leaves it alone when its
ranks do not pay); the classifier is compressed by truncated SVD; the latency guard
keeps a factorisation only where it runs faster here. Fine-tuning follows Kim et al.:
SGD lr 1e-3, divided by 10 halfway.

    python -m methods.decompose --backend torch --config hyperparams/decompose_resnet56_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.model.weights=resnet56_c10.safetensors
"""

from hyperparams import common, resnet56_cifar10
from hyperparams.decompose_resnet20_digits import section, validate  # noqa: F401 - the shared checks


def get_config():
    cfg = resnet56_cifar10.get_config()  # model, data and the baseline recipe (used when model.weights is empty)
    cfg.workdir = "runs/decompose_resnet56_cifar10"
    cfg.decompose = section(method="tucker2", fc="svd")
    cfg.finetune = common.train(epochs=20, lr=1e-3, batch_size=128, schedule="step", milestones=(10,),
                                gamma=0.1, weight_decay=8e-4)
    return cfg
