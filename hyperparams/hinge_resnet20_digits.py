"""Hinge on digits: the README example and what the tests shrink (about a minute per backend on 2 CPU cores).

Trains its own ResNet-20 baseline (8 epochs) when ``model.weights`` is empty,
attaches the SVD-initialised matrices after every block conv, searches with the
l2,1 proximal step for at most 8 epochs, compresses to half the MACs and
fine-tunes 6 epochs with distillation. The search's regularisation is 250x the
CIFAR scripts' (5e-2 vs 2e-4): digits has ~20 steps per epoch, CIFAR ~700.
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet20", workdir="runs/hinge_resnet20_digits")
    # baseline, trained when model.weights is empty; digits: no flip, no crop
    cfg.train = common.train(epochs=8, lr=0.1, batch_size=64, schedule="cosine", augment=False)
    cfg.hinge = common.hinge(ratio=0.5, reg=5e-2, penalty="l21", anneal=0.0, threshold=5e-3, stop_limit=0.05)
    # search: the sparsity matrices at lr, everything else at lr * hinge.lr_ratio
    cfg.search = common.train(epochs=8, lr=0.1, batch_size=64, schedule="constant", weight_decay=1e-4,
                              nesterov=False, augment=False)
    cfg.finetune = common.train(epochs=6, lr=0.05, batch_size=64, schedule="cosine", weight_decay=1e-4,
                                nesterov=False, augment=False)
    return cfg


validate = common.validate_hinge
