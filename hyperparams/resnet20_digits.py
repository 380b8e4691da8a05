"""ResNet-20 on scikit-learn's bundled 8x8 digits: a few minutes on 2 CPU cores.

The default of ``methods.train``, and what the tests shrink further.
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet20", workdir="runs/resnet20_digits")
    # digits are not mirror-symmetric and only 8x8: no flip, no crop
    cfg.train = common.train(epochs=15, lr=0.1, batch_size=64, schedule="cosine",
                             weight_decay=5e-4, augment=False)
    return cfg


validate = common.validate_train
