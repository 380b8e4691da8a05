"""CDC on ResNet-56 / CIFAR-10: the CIFAR-100 recipe (cdc_resnet56_cifar100.py) on 10 classes.

With 10 classes there is no coarse level worth clustering, so every block is scored with
the fine labels (block_threshold -1) and the DCA subspace uses the 10 classes. Baseline
of the reference's checkpoints: 94.11% (ResNet-56, CIFAR-10).

    python -m methods.cdc_prune --backend torch --config hyperparams/cdc_resnet56_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.model.weights=resnet56_c10.safetensors
"""

from hyperparams import cdc_resnet56_cifar100, common


def get_config():
    cfg = cdc_resnet56_cifar100.get_config()
    cfg.workdir = "runs/cdc_resnet56_cifar10"
    cfg.data.name = "cifar10"
    cfg.cdc.block_threshold = -1   # fine labels in every block
    cfg.cdc.num_coarse = 0
    cfg.distill.dca_labels = "fine"
    return cfg


validate = common.validate_cdc
