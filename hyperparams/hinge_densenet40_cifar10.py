"""Hinge, DenseNet-40 on CIFAR-10 at 55.22% MACs: the reference's ``scripts/hinge_densenet.sh``.

SVD-initialised matrices after every dense-layer 3x3 conv and transition 1x1 conv, row
groups (decomposition: the growth width and the concatenations are untouched); l2,1,
lambda 2e-4, tau0 1e-3, no balancing, no same ratio, Nesterov momentum, fine-tuning at
lr 0.01 with distillation. The script passes annealing 2, which its DenseNet prox never
reads: annealing is off here.
"""

from hyperparams import common


def get_config():
    cfg = common.base("densenet40", workdir="runs/hinge_densenet40_cifar10", name="cifar10")
    cfg.train = common.train(epochs=300, lr=0.1, batch_size=64, milestones=(150, 225), weight_decay=1e-4)
    cfg.hinge = common.hinge(ratio=0.5522, reg=2e-4, penalty="l21", anneal=0.0, threshold=1e-3, stop_limit=0.1,
                             layer_balancing=False, same_ratio=False)
    cfg.search = common.train(epochs=200, lr=0.1, batch_size=64, milestones=(150, 225), weight_decay=1e-4,
                              nesterov=True)
    cfg.finetune = common.train(epochs=300, lr=0.01, batch_size=64, milestones=(150, 225), weight_decay=1e-4,
                                nesterov=True)
    return cfg


validate = common.validate_hinge
