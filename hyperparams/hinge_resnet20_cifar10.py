"""Hinge, ResNet-20 on CIFAR-10 at 45.16% MACs: the reference's ``scripts/hinge_resnet.sh`` (third block).

As hinge_resnet56_cifar10.py but with the l2,1 penalty (the script's ``l1``), lambda 2e-4
and annealing thresholds 20 and 15. Set ``model.weights`` to a trained ResNet-20.
"""

from hyperparams import common, hinge_resnet56_cifar10


def get_config():
    return hinge_resnet56_cifar10.get_config("resnet20", ratio=0.4516, reg=2e-4, penalty="l21", anneal_t1=20.0,
                                             anneal_t2=15.0)


validate = common.validate_hinge
