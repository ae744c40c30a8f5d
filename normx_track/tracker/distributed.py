"""The three collective questions the tracker asks, behind one small protocol: which rank
writes, what rank zero decided, and whether any rank saw something. The default answers
them with `torch.distributed` (one process when it is not initialised); the Lightning front
end answers with the Trainer's strategy."""
from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class Distributed(Protocol):
    @property
    def is_main(self) -> bool: ...

    def broadcast(self, obj: T, src: int = 0) -> T: ...

    def any(self, flag: bool) -> bool: ...

    def mean(self, value: torch.Tensor) -> torch.Tensor: ...


class TorchDistributed:
    """`torch.distributed` when a process group is up (Accelerate, torchrun, Fabric), else
    a single process."""

    @staticmethod
    def _active() -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return not self._active() or dist.get_rank() == 0

    def broadcast(self, obj: T, src: int = 0) -> T:
        if not self._active():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any(self, flag: bool) -> bool:
        if not self._active():
            return bool(flag)
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        value = torch.tensor(int(bool(flag)), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if not self._active():
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / dist.get_world_size()


class StrategyDistributed:
    """A Lightning strategy's collectives (DDP, FSDP, or one device)."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    @property
    def is_main(self) -> bool:
        return self.trainer.is_global_zero

    def broadcast(self, obj: T, src: int = 0) -> T:
        return self.trainer.strategy.broadcast(obj, src=src)

    def any(self, flag: bool) -> bool:
        return bool(self.trainer.strategy.reduce_boolean_decision(bool(flag), all=False))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(value, reduce_op="mean")
