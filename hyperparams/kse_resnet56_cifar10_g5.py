"""KSE on ResNet-56 / CIFAR-10 with G=5, T=0: as kse_resnet56_cifar10_g4.py with one more level."""

from hyperparams import common, kse_resnet56_cifar10_g4


def get_config():
    return kse_resnet56_cifar10_g4.get_config(G=5)


validate = common.validate_kse
