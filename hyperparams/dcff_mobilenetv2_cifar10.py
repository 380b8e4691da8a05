"""DCFF on MobileNetV2 / CIFAR-10 (CIFAR strides), from scratch, one rate for every fused conv.

The fused convs are the 1x1 expand and projection convs and the classifier's 1x1 (a depthwise
conv follows the channels of its input's group); the streams of the inverted residual blocks are
channel groups like ResNet's. The paper's CIFAR recipe (300 epochs, batch 256, SGD 0.1).

    python -m methods.dcff --backend torch --config hyperparams/dcff_mobilenetv2_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz
"""

from hyperparams import common
from hyperparams.dcff_resnet56_cifar10 import paper_train


def get_config():
    cfg = common.base("mobilenetv2", workdir="runs/dcff_mobilenetv2_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = paper_train()
    cfg.dcff = common.dcff(rates="[0.3]")
    return cfg


validate = common.validate_dcff
