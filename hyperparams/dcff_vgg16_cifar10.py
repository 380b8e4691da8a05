"""DCFF VGG-16 on CIFAR-10, the paper's row: 76.8% fewer FLOPs, 93.47% (lmbxmu README).

13 per-conv rates as the lmbxmu README gives them. Recipe of the paper: 300 epochs
from scratch, batch 256, SGD 0.1 (momentum 0.9, no Nesterov) x0.1 at 150 and 225,
weight decay 5e-4, flip + 4-pixel crop. Our counts: 72.39 M MACs (README 72.77 M),
1.11 M params (README 1.06 M: our VGG-16 head is dense 512 - BN - ReLU - dense).
Departure: the temperature schedule (``dcff.schedule``, see the README).

    python -m methods.dcff --backend torch --config hyperparams/dcff_vgg16_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz
"""

from hyperparams import common
from hyperparams.dcff_resnet56_cifar10 import paper_train


def get_config():
    cfg = common.base("vgg16", workdir="runs/dcff_vgg16_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = paper_train()
    cfg.dcff = common.dcff(rates="[0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6")
    return cfg


validate = common.validate_dcff
