"""ResNet-56 on CIFAR-100: the CIFAR-10 recipe (resnet56_cifar10.py) on the 100-class archive.

Needs the CIFAR-100 python archive: ``--config.data.path=/data/cifar-100-python.tar.gz``.
The CDC reference's ResNet-56 / CIFAR-100 teacher reached 73.27% with this recipe.
"""

from hyperparams import common, resnet56_cifar10


def get_config():
    cfg = resnet56_cifar10.get_config()
    cfg.workdir = "runs/resnet56_cifar100"
    cfg.data.name = "cifar100"
    return cfg


validate = common.validate_train
