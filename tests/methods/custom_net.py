"""A user's own PyTorch CNN, as a Python file with a callable: ``module:tests.methods.custom_net:make``.

It mixes what torchvision's families do (a residual block, squeeze-and-excitation, an inverted
bottleneck with a depthwise conv, concatenated branches, ReLU6, dropout) at digits' size (1x8x8).
"""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                nn.Sigmoid())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.branch_a = nn.Conv2d(24, 8, 1)
        self.branch_b = nn.Conv2d(24, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        x = self.relu(x + y)
        x = x * self.se(x)
        x = self.project(self.depthwise(self.expand(x)))
        x = torch.relu(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))
        return self.head(self.pool(x))


def make() -> nn.Module:
    torch.manual_seed(0)
    return Net()
