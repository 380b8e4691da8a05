"""torch.distributed under the methods' data-parallel runs: the process group from torchrun's environment."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from backends.base import Collective, pack, unpack
from compress_core.errors import UserError


class TorchCollective(Collective):
    """Sums and broadcasts over the default process group (gloo on the CPU, NCCL on GPUs)."""

    def __init__(self, rank: int, world: int, device: torch.device):
        if not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise UserError(f"{missing[0]} is not set: start a run of several processes with torchrun "
                                f"(torchrun --nproc_per_node=N -m methods.<name> ...)")
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        self.rank, self.world, self.device = rank, world, device

    def all_reduce_tensor(self, t: torch.Tensor) -> None:
        """Sum ``t`` over the ranks in place (the trainer's gradients, on the model's device)."""
        dist.all_reduce(t)

    def _each(self, arrays, op) -> list[np.ndarray]:
        out = {}
        for k, v in pack(arrays).items():
            t = torch.from_numpy(v.copy()).to(self.device)
            op(t)
            out[k] = t.cpu().numpy()
        return unpack(arrays, out)

    def all_reduce(self, arrays):
        return self._each(arrays, dist.all_reduce)

    def broadcast(self, arrays):
        return self._each(arrays, lambda t: dist.broadcast(t, 0))

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()
