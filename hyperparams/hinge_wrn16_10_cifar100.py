"""Hinge, WRN-16-10 on CIFAR-100 at 57.31% MACs: the reference's ``scripts/hinge_wide_resnet.sh``.

Identity-initialised matrices with bias after both 3x3 convs of every block: the first
one's columns prune conv1 (then conv1 and its matrix merge), the second one's rows
decompose conv2; l2,1, lambda 4e-4 annealed by 2 at 400 and 350, tau0 5e-3, same
ratio, fine-tuning 200 epochs at lr 0.01 (lr_factor 0.1), steps at 60, 120, 160, no
distillation. The script passes --layer_balancing, which its WRN prox never reads:
balancing is off here. For the 75.56% point set ``--config.hinge.ratio=0.7556``.
Weight decay 5e-4 and gamma 0.2 are the usual WRN recipe (the script leaves them to its
template).
"""

from hyperparams import common


def get_config():
    cfg = common.base("wrn16_10", workdir="runs/hinge_wrn16_10_cifar100", name="cifar100")
    cfg.train = common.train(epochs=200, lr=0.1, batch_size=128, milestones=(60, 120, 160), gamma=0.2,
                             weight_decay=5e-4)
    cfg.hinge = common.hinge(ratio=0.5731, reg=4e-4, penalty="l21", anneal=2.0, anneal_t1=400.0, anneal_t2=350.0,
                             threshold=5e-3, stop_limit=0.1, layer_balancing=False, distill=False)
    cfg.search = common.train(epochs=200, lr=0.1, batch_size=64, milestones=(60, 120, 160), gamma=0.2,
                              weight_decay=5e-4, nesterov=False)
    cfg.finetune = common.train(epochs=200, lr=0.01, batch_size=64, milestones=(60, 120, 160), gamma=0.2,
                                weight_decay=5e-4, nesterov=False)
    return cfg


validate = common.validate_hinge
