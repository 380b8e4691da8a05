"""DCFF on digits: ResNet-20 trained compact from scratch with fused filters (~1-2 min per backend on 2 cores).

The README's quick example and what the tests shrink. Rates in lmbxmu's layout:
9 per-block conv1 rates, then 3 per-stage rates (every conv2 of the stage, and
the stem for stage 1). Widths 16/32/64 -> conv1 8/16/32, streams 12/24/48.
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet20", workdir="runs/dcff_resnet20_digits")
    # digits are not mirror-symmetric and only 8x8: no flip, no crop
    cfg.train = common.train(epochs=15, lr=0.1, batch_size=64, schedule="cosine", weight_decay=5e-4,
                             augment=False)
    cfg.dcff = common.dcff(rates="[0.5]*9+[0.25]*3")
    return cfg


validate = common.validate_dcff
