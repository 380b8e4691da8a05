"""DCFF ResNet-50 on ImageNet at the 45.3% setting: 15.16 M params, 2.23 G MACs (ours).

lmbxmu: 75.18% top-1 (90 epochs, step lr); MMRazor: 73.96% (120 epochs) for the same
widths. The rates are MMRazor's 49 numbers (stem + conv1, conv2, conv3 of each
block); lmbxmu's 37-number form ``[0.0]+[0.35]*10+[0.3]*6+[0.4]*10+[0.3]*6+[0.1]*4``
gives the same network. Recipe of lmbxmu's step rows: 90 epochs, batch 256, SGD 0.1
(momentum 0.9) x0.1 at 30, 60 and 80, weight decay 1e-4. Departures: no 5-epoch
warm-up, the temperature schedule (``dcff.schedule``, see the README).

    python -m methods.dcff --backend torch --config hyperparams/dcff_resnet50_imagenet.py \\
        --config.data.path=/data/imagenet
"""

from hyperparams import common


def get_config():
    cfg = common.base("resnet50", workdir="runs/dcff_resnet50_imagenet", name="imagenet", val_fraction=0.01)
    cfg.train = common.train(epochs=90, lr=0.1, batch_size=256, schedule="step", milestones=(30, 60, 80),
                             gamma=0.1, weight_decay=1e-4, nesterov=False)
    cfg.dcff = common.dcff(rates="[0.0]+[0.35,0.4,0.1]*10+[0.3,0.3,0.1]*6")
    return cfg


validate = common.validate_dcff
