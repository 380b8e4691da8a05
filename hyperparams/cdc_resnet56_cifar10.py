"""CDC on ResNet-56 / CIFAR-10: the CIFAR-100 recipe (see cdc_resnet56_cifar100.py) on 10 classes.

With 10 classes there is no coarse level worth clustering, so every block is scored with
the fine labels (block_threshold -1) and the DCA subspace uses the 10 classes. Baseline
of the reference's checkpoints: 94.11% (ResNet-56, CIFAR-10).

    python -m methods.cdc_prune --backend torch --config hyperparams/cdc_resnet56_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.cdc.teacher=resnet56_c10.safetensors
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet56", workdir="runs/cdc_resnet56_cifar10", name="cifar10", val_fraction=0.1)
    cfg.train = common.train(epochs=200, lr=0.1, milestones=(80, 160), gamma=0.1, weight_decay=8e-4)
    cfg.cdc = common.cdc(plan="uniform", ratio=0.45, block_threshold=-1, bn_mode="batch", score_batch_size=2000)
    cfg.finetune = common.train(epochs=200, lr=0.1, milestones=(80, 160), gamma=0.22, weight_decay=8e-4)
    cfg.distill = common.distill(epochs=200, lr=0.05, milestones=(80, 160), gamma=0.13, weight_decay=1e-3,
                                 kd_weight=1.0, kd_temperature=1.0, dca_weight=0.1,
                                 dca_tap="layer2.2.relu1", dca_labels="fine", dca_refit_every=80)
    return cfg


validate = common.validate_cdc
