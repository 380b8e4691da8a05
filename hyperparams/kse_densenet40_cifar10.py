"""KSE on DenseNet-40 / CIFAR-10 with G=5, T=0 (the reference README's command; paper-faithful file).

As the reference, only the 36 dense-layer 3x3 convs are compressed; the stem,
the two transition 1x1 convs, BatchNorm and the fc stay as they are (the
transitions alone are 54 M of the 283 M MACs, a floor under any budget).
Fine-tuning as kse_resnet56_cifar10_g4.py. The baseline, when no
``model.weights`` is given, trains with the ResNet-56 CIFAR-10 recipe.
"""

from hyperparams import common, kse_resnet56_cifar10_g4


def get_config():
    cfg = kse_resnet56_cifar10_g4.get_config(G=5)
    cfg.workdir = "runs/kse_densenet40_cifar10"
    cfg.model.source = "densenet40"
    cfg.kse.layers = r"^dense\d+\.\d+\.conv$"
    return cfg


validate = common.validate_kse
