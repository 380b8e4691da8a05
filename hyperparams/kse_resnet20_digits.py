"""KSE on digits: a quick README example and what the tests shrink (a few minutes on 2 CPU cores).

Trains its own ResNet-20 baseline (the recipe of resnet20_digits.py) when
``model.weights`` is empty, compresses every block conv with G=4, T=0 (paper
entropy sets), fine-tunes the centroids for 10 epochs and exports the faster form.
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet20", workdir="runs/kse_resnet20_digits")
    # baseline, trained when model.weights is empty; digits: no flip, no crop
    cfg.train = common.train(epochs=15, lr=0.1, batch_size=64, schedule="cosine", augment=False)
    cfg.kse = common.kse(G=4, T=0)
    cfg.finetune = common.train(epochs=10, lr=0.01, batch_size=64, schedule="cosine", weight_decay=1e-5,
                                augment=False)
    return cfg


validate = common.validate_kse
