"""PyTorch adapter (see backends/base.py for the contract) and the importer of ``nn.Module`` s."""

from backends.torch.importer import from_module
from backends.torch.model import TorchBackend

__all__ = ["TorchBackend", "from_module", "make_backend"]


def make_backend(**options) -> TorchBackend:
    return TorchBackend(**options)
