"""The three collective questions the tracker asks, behind one small protocol: which rank
writes, what rank zero decided, and whether any rank saw something. The default answers
them with `torch.distributed` (one process when it is not initialised); the Lightning front
end answers with the Trainer's strategy."""
from __future__ import annotations

from datetime import timedelta
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


class RankMissingError(RuntimeError):
    """A rank did not call the tracker where the others did (``if rank == 0: step()``)."""


class TorchDistributed:
    """`torch.distributed` when a process group is up (Accelerate, torchrun, Fabric), else
    a single process.

    Before each of the tracker's collectives every rank answers a roll call on the process
    group's store (not a collective, so it cannot deadlock): a rank that skips `step()`
    while the others call it is named after `timeout_s` seconds, instead of a hang in the
    snapshot's gather or all-reduce."""

    timeout_s = 60.0

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = float(timeout_s)

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

    def roll_call(self, tag: str, what: str) -> None:
        """Wait until every rank has reached roll call `tag` (`what`: the call, for the
        message); raise `RankMissingError` naming the ranks missing after `timeout_s`."""
        if not self._active() or dist.get_world_size() < 2:
            return
        store = dist.distributed_c10d._get_default_store()
        rank, world = dist.get_rank(), dist.get_world_size()
        store.set(f"normx_track/rank{rank}", f"{tag} {what}")  # this rank's latest call
        if store.add(f"normx_track/{tag}", 1) == world:
            store.set(f"normx_track/{tag}/all", "1")
        try:
            store.wait([f"normx_track/{tag}/all"], timedelta(seconds=self.timeout_s))
        except (RuntimeError, dist.DistError):  # the store's timeout
            raise RankMissingError(self._missing_message(store, tag, what, world)) from None

    def _missing_message(self, store: Any, tag: str, what: str, world: int) -> str:
        missing = []
        for other in range(world):
            key = f"normx_track/rank{other}"
            last = store.get(key).decode() if store.check([key]) else None
            if last is None or last.split(" ", 1)[0] != tag:
                missing.append(f"rank {other} (its last tracker call: "
                               f"{last.split(' ', 1)[1] if last else 'none'})")
        return (f"normx tracker: {', '.join(missing) or 'a rank'} did not reach {what} within "
                f"{self.timeout_s:g} s while rank {dist.get_rank()} did. Every rank must call "
                "tracker.step() at every step (not only rank 0): the snapshot's collectives "
                "need all ranks; rank zero alone writes the record")


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
