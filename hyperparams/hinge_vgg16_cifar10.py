"""Hinge, VGG-16 on CIFAR-10 at 60.90% MACs: the reference's ``scripts/hinge_vgg.sh``.

Matrices with bias after conv layers 2-13 (SVD initialised), rows and columns of each
(the last conv keeps its 512 outputs); l2,1, lambda 2e-4 annealed by 2 at 400 and 200,
tau0 5e-2, no layer balancing, no same ratio, weight decay 5e-4, fine-tuning at lr 0.01
(the script's lr_factor 0.1) without distillation. Our VGG-16 is the zoo's (GAP, one
hidden dense layer); the reference's has three FC layers.
"""

from hyperparams import common


def get_config():
    cfg = common.base("vgg16", workdir="runs/hinge_vgg16_cifar10", name="cifar10")
    cfg.train = common.train(epochs=160, lr=0.1, batch_size=128, milestones=(80, 120), weight_decay=5e-4)
    cfg.hinge = common.hinge(ratio=0.6090, reg=2e-4, penalty="l21", anneal=2.0, anneal_t1=400.0, anneal_t2=200.0,
                             threshold=5e-2, stop_limit=0.1, layer_balancing=False, same_ratio=False,
                             distill=False)
    cfg.search = common.train(epochs=200, lr=0.1, batch_size=64, milestones=(150, 225), weight_decay=5e-4,
                              nesterov=False)
    cfg.finetune = common.train(epochs=300, lr=0.01, batch_size=64, milestones=(150, 225), weight_decay=5e-4,
                                nesterov=False)
    return cfg


validate = common.validate_hinge
