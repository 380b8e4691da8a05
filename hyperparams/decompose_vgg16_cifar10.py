"""The seed's VGG experiment on CIFAR-10's VGG-16: Tucker-2 of every conv with EVBMF ranks.

As the seed (kzhang14/Pruning ``main.py --decompose``): every conv of the feature
extractor is a candidate, the first included; the classifier is left dense
(``fc="none"``); fine-tuning with plain SGD (momentum 0.9, no Nesterov) at lr 1e-3.
Departure from the seed: the latency guard is on (turn it off with
``--config.decompose.latency_guard=false`` for the seed's unconditional replacement),
ranks come from the transposed, scale-normalised EVBMF (see the README), and a conv
whose ranks do not save MACs is left alone instead of replaced.

    python -m methods.decompose --backend torch --config hyperparams/decompose_vgg16_cifar10.py \\
        --config.data.path=/data/cifar-10-python.tar.gz --config.model.weights=vgg16_c10.safetensors
"""

from hyperparams import common
from hyperparams.decompose_resnet20_digits import section, validate  # noqa: F401 - the shared checks


def get_config():
    cfg = common.base("vgg16", workdir="runs/decompose_vgg16_cifar10", name="cifar10", val_fraction=0.1)
    # baseline recipe (used when model.weights is empty): the DCFF/HRank VGG-16 schedule
    cfg.train = common.train(epochs=200, lr=0.1, batch_size=128, schedule="step", milestones=(100, 150),
                             gamma=0.1, weight_decay=5e-4, nesterov=False)
    cfg.decompose = section(method="tucker2", fc="none")
    cfg.finetune = common.train(epochs=20, lr=1e-3, batch_size=128, schedule="constant",
                                weight_decay=5e-4, nesterov=False)
    return cfg
