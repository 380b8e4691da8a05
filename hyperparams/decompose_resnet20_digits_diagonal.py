"""The seed's "diagonal FC" made real, on its own: a digits ResNet-20 whose classifier becomes diagonal.

Convolutions are left alone (``layers=("fc",)``). Fine-tuning runs with the proximal step of
``(lam / 2) ||W off the diagonal||^2`` after every SGD step (off-diagonal weights divided by
``1 + lr * lam``), then the 10 x 64 classifier is replaced by its 10 diagonal weights (650 -> 20
parameters with the bias). Logit ``j`` then reads only pooled channel ``j``, so the network has to
re-route each class's evidence into one channel: that needs a larger learning rate and more
epochs than the conv decompositions (3 epochs at 0.01 lost 55-70 points; 10 at 0.05 lost 0-2).

    python -m methods.decompose --backend torch --config hyperparams/decompose_resnet20_digits_diagonal.py
"""

from hyperparams import common
from hyperparams.decompose_resnet20_digits import get_config as digits_config
from hyperparams.decompose_resnet20_digits import validate  # noqa: F401 - the shared checks


def get_config():
    cfg = digits_config()
    cfg.workdir = "runs/decompose_resnet20_digits_diagonal"
    cfg.decompose.fc = "diagonal"
    cfg.decompose.layers = ("fc",)
    cfg.decompose.diag_lambda = 200.0  # lr * lam = 10 at the first step: off-diagonals / 11
    cfg.finetune = common.train(epochs=10, lr=0.05, batch_size=64, schedule="cosine", augment=False)
    return cfg
