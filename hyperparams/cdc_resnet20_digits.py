"""CDC on digits: the README's main job, a few minutes on 2 CPU cores.

Trains its own ResNet-20 baseline, scores channels with the generalized symmetric
divergence (coarse labels for the first half of the blocks: 4 groups of digits
found by spectral clustering of the baseline's validation confusions), prunes
to about half the MACs, fine-tunes, then distils from the baseline (KD + DCA).

The plan is the fast one (the common defaults: residual streams cut as channel groups,
widths rounded to the multiple the conv kernels step at, measured on the backend at the start:
16 on an AVX-512 CPU, 46.5% of the MACs; 8 on an AVX2 one, 44.7%); the reference's exact-MAC form
is ``--config.cdc.stream=select --config.cdc.multiple=1`` (49.5%). Both lose about the same
accuracy here (README, Benchmarks: CDC on digits).
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet20", workdir="runs/cdc_resnet20_digits")
    # baseline, trained when model.weights is empty
    cfg.train = common.train(epochs=15, lr=0.1, batch_size=64, schedule="cosine", augment=False)
    cfg.cdc = common.cdc(plan="macs", mac_target=0.5, block_threshold=4, num_coarse=4)
    cfg.finetune = common.train(epochs=10, lr=0.02, batch_size=64, schedule="cosine", augment=False)
    cfg.distill = common.distill(epochs=6, lr=0.01, batch_size=64, schedule="cosine", augment=False,
                                 kd_weight=1.0, kd_temperature=4.0, dca_weight=0.1,
                                 dca_tap="layer2.2.relu1", dca_refit_every=3)
    return cfg


validate = common.validate_cdc
