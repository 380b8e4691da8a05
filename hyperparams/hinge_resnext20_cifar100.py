"""Hinge, ResNeXt-20 (32x1d) on CIFAR-100 at 53.51% MACs: the reference's ``scripts/hinge_resnext.sh``.

No new layer: one group per cardinality path (its conv1 filters and conv3 input
columns), whole paths removed; l2,1, lambda 2e-4 annealed by 2 at 100 and 75, tau0
5e-3, layer balancing, no same ratio; search and fine-tuning as hinge_resnet56_cifar10.py
(batch 64, lr 0.1, 300 epochs, steps at 150 and 225, distillation).
"""

from hyperparams import common, hinge_resnet56_cifar10


def get_config():
    return hinge_resnet56_cifar10.get_config("resnext20", "cifar100", ratio=0.5351, reg=2e-4, penalty="l21",
                                             anneal_t1=100.0, anneal_t2=75.0, same_ratio=False)


validate = common.validate_hinge
