"""Hinge, ResNet-56 on CIFAR-10 at 50% MACs: the reference's ``scripts/hinge_resnet.sh`` (first block).

Reference settings: SVD-initialised matrices after both convs of every basic block,
group l1/2 (the script's ``l1d2``, not the paper's l2,1), lambda 4e-4 annealed by 2 at
10 and 5, tau0 5e-3, stop limit 0.1, same ratio for a block's two matrices, layer
balancing, batch 64, search lr 0.1 (rest 1e-3) for at most 200 epochs, fine-tuning
300 epochs (x0.1 at 150, 225) with distillation from the original. Set ``model.weights``
to a trained ResNet-56 (else the ``train`` section trains one). For the 24% point of the
paper set ``--config.hinge.ratio=0.24``.
"""

from hyperparams import common


def get_config(model: str = "resnet56", data: str = "cifar10", **hinge_kw):
    """``hinge_kw`` replaces the reference's ResNet-56 values (the ResNet-20 and ResNeXt files)."""
    cfg = common.base(model, workdir=f"runs/hinge_{model}_{data}", name=data)
    cfg.train = common.train(epochs=164, lr=0.1, batch_size=128, milestones=(81, 122), weight_decay=1e-4)
    cfg.hinge = common.hinge(**{"ratio": 0.5, "reg": 4e-4, "penalty": "l1/2", "anneal": 2.0, "anneal_t1": 10.0,
                                "anneal_t2": 5.0, "threshold": 5e-3, "stop_limit": 0.1, **hinge_kw})
    # the reference's "hingestep-150-225": the search never reaches epoch 225
    cfg.search = common.train(epochs=200, lr=0.1, batch_size=64, milestones=(150, 225), weight_decay=1e-4,
                              nesterov=False)
    cfg.finetune = common.train(epochs=300, lr=0.1, batch_size=64, milestones=(150, 225), weight_decay=1e-4,
                                nesterov=False)
    return cfg


validate = common.validate_hinge
