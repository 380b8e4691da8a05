"""ResNet-56 on CIFAR-10, the training recipe of the CDC reference (He et al. schedule).

200 epochs, batch 128, Nesterov SGD 0.1 dropped x0.1 at epochs 80 and 160,
weight decay 8e-4 on 0.5*||w||^2, flip + 4-pixel crop. Needs the CIFAR-10
python archive: ``--config.data.path=/data/cifar-10-python.tar.gz``.
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet56", workdir="runs/resnet56_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = common.train(epochs=200, lr=0.1, batch_size=128, schedule="step",
                             milestones=(80, 160), gamma=0.1, weight_decay=8e-4)
    return cfg


validate = common.validate_train
