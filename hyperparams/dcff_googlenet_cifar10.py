"""DCFF on the CIFAR GoogLeNet / CIFAR-10 (the DCFF paper's GoogLeNet row), from scratch.

One rate for every fused conv (``dcff.rates=[0.3]``: the paper's per-module rates are not
released in a form that maps onto this network); the paper's CIFAR recipe (300 epochs, batch
256, SGD 0.1 x0.1 at 150 and 225, weight decay 5e-4).

    python -m methods.dcff --backend torch --config hyperparams/dcff_googlenet_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz
"""

from hyperparams import common
from hyperparams.dcff_resnet56_cifar10 import paper_train


def get_config():
    cfg = common.base("googlenet", workdir="runs/dcff_googlenet_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = paper_train()
    cfg.dcff = common.dcff(rates="[0.3]")
    return cfg


validate = common.validate_dcff
