"""A CNN without batch statistics (``module:tests.methods.plain_net:make``): data-parallel runs of it
must give the weights of one process (BatchNorm would normalise each process's rows on their own)."""

from __future__ import annotations

from torch import nn


def make() -> nn.Module:
    import torch

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))
