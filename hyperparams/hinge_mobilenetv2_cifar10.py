"""Hinge on MobileNetV2 / CIFAR-10 (CIFAR strides) at 50% MACs, with the generic placement.

The reference has no MobileNetV2 mapping in the released code: the generic rule puts a matrix
after every ungrouped conv but the stem (rows: decomposition; columns where the conv alone writes
a cuttable group, e.g. the expand convs, whose channels the depthwise conv follows). The rest is
the ResNet-56 file's recipe (l1/2, lambda 4e-4, search lr 0.1 for at most 200 epochs, fine-tuning
300 epochs with distillation). Set ``model.weights`` to a trained MobileNetV2.
"""

from hyperparams import common
from hyperparams.hinge_resnet56_cifar10 import get_config as resnet56_config


def get_config():
    return resnet56_config("mobilenetv2", "cifar10")


validate = common.validate_hinge
