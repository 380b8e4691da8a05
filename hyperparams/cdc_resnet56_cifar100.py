"""CDC on ResNet-56 / CIFAR-100 with the reference's coherent settings.

Taken from the reference's distillation file, whose ResNet-56 settings are consistent
(the pruning file's ResNet-164 width table and threshold 27 are stale leftovers):
uniform ratio 0.45 on both masks of every block (55.7 M MACs, -55.6%), symmetric
divergence with ridge 0.05 on BN-batch-statistics features in batches of 2000,
blocks 0-14 scored with 20 coarse groups, 15-26 with the 100 fine classes.
Fine-tuning: 200 epochs Nesterov SGD 0.1, x0.22 at 80 and 160, weight decay 8e-4.
Distillation: 200 epochs from 0.05, x0.13 at 80 and 160, weight decay 1e-3, KD at T=1
weight 1, DCA tap = inner ReLU of block 3 of stage 2 (the reference's Res16_2 'Relu2 Output').

Departures, on purpose: the coarse groups are computed from the baseline's confusions on
the *validation* split (the reference's file came from test-set confusions and is not
shipped); DCA is fitted on training images (the reference fitted on the test set);
model selection uses the validation split (the reference picked the best test epoch).
The DCA loss weight of the paper is not in the released code (its file ships 0); 0.1 is ours.

    python -m methods.cdc_prune --backend tf --config hyperparams/cdc_resnet56_cifar100.py \\
        --config.data.path=/data/cifar-100-python.tar.gz --config.model.weights=resnet56_c100.safetensors

The paper's network saves MACs more than time (README, Speed). For a ResNet-56 that runs about as much faster
as it has fewer MACs, add ``--config.cdc.plan=depth --config.cdc.mac_target=0.45``: whole residual blocks
removed, the lowest-scored first (its accuracy on CIFAR is not measured here).
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet56", workdir="runs/cdc_resnet56_cifar100", name="cifar100", val_fraction=0.1)
    # baseline recipe (used when model.weights is empty)
    cfg.train = common.train(epochs=200, lr=0.1, milestones=(80, 160), gamma=0.1, weight_decay=8e-4)
    # the paper's network: any widths, every block reading its share of the whole stream (the common
    # defaults, the stream cut as a group with widths rounded to a measured multiple, and the depth plan
    # are other networks with other numbers)
    cfg.cdc = common.cdc(plan="uniform", ratio=0.45, block_threshold=14, num_coarse=20,
                         bn_mode="batch", score_batch_size=2000, stream="select", multiple=1)
    cfg.finetune = common.train(epochs=200, lr=0.1, milestones=(80, 160), gamma=0.22, weight_decay=8e-4)
    cfg.distill = common.distill(epochs=200, lr=0.05, milestones=(80, 160), gamma=0.13, weight_decay=1e-3,
                                 kd_weight=1.0, kd_temperature=1.0, dca_weight=0.1,
                                 dca_tap="layer2.2.relu1", dca_labels="coarse", dca_refit_every=80)
    return cfg


validate = common.validate_cdc
