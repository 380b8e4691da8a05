"""DCFF ResNet-56 on CIFAR-10, the paper's row: 55.9% fewer FLOPs, 0.38 M params, 93.26% (lmbxmu README).

Rates as the lmbxmu README gives them: 27 per-block conv1 rates, then 3 per-stage
rates (0: the residual streams keep 16/32/64 channels). Recipe of the paper: 300
epochs from scratch, batch 256, SGD 0.1 (momentum 0.9, no Nesterov) x0.1 at 150 and
225, weight decay 5e-4, flip + 4-pixel crop. Our counts: 0.38 M params, 55.06 M MACs.
Departure: the temperature schedule (``dcff.schedule``, see the README); the
released code's is ``--config.dcff.schedule=paper``.

    python -m methods.dcff --backend torch --config hyperparams/dcff_resnet56_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz
"""

from hyperparams import common


def paper_train():
    """The CIFAR recipe of the DCFF paper (also hyperparams/dcff_vgg16_cifar10.py)."""
    return common.train(epochs=300, lr=0.1, batch_size=256, schedule="step", milestones=(150, 225),
                        gamma=0.1, weight_decay=5e-4, nesterov=False)


def get_config():
    cfg = common.base("resnet56", workdir="runs/dcff_resnet56_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = paper_train()
    cfg.dcff = common.dcff(rates="[0.7]*2+[0.5]*3+[0.3]*2+[0.4]+[0.8]+[0.7]*2+[0.8]*4+[0.4]+[0.2]*2+[0.7]+[0.3]"
                                 "+[0.8]+[0.4]*2+[0.7]+[0.3]+[0.4]+[0.8]+[0.0]*3")
    return cfg


validate = common.validate_dcff
