"""KSE on the CIFAR GoogLeNet / CIFAR-10 (the KSE paper's GoogLeNet experiment), G=4, T=0.

Every ungrouped conv but the stem is compressed (``kse.layers=all``: the 1x1 and 3x3 convs of
the nine inception modules); fine-tuning as the KSE ResNet-56 file (200 epochs, plain SGD at
0.01, x0.1 at 100, weight decay 1e-5). The baseline (when ``model.weights`` is empty) trains
with the ResNet-56 CIFAR-10 recipe. Pass a trained GoogLeNet:

    python -m methods.kse --backend torch --config hyperparams/kse_googlenet_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.model.weights=googlenet_c10.safetensors
"""

from hyperparams import common, resnet56_cifar10


def get_config():
    cfg = resnet56_cifar10.get_config()
    cfg.model.source = "googlenet"
    cfg.workdir = "runs/kse_googlenet_cifar10"
    cfg.kse = common.kse(G=4, T=0, layers="all")
    cfg.finetune = common.train(epochs=200, lr=0.01, batch_size=128, schedule="step", milestones=(100,),
                                gamma=0.1, weight_decay=1e-5, momentum=0.9, nesterov=False)
    return cfg


validate = common.validate_kse
