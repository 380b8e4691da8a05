"""PyTorch adapter (see backends/base.py for the contract)."""

from backends.torch.model import TorchBackend


def make_backend(**options) -> TorchBackend:
    return TorchBackend(**options)
