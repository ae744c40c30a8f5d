"""FSDP on CPU processes, for checking sharded code paths (the tracker's gather, resume)
on a laptop or CI before a GPU cluster: `trainer=fsdp trainer.accelerator=cpu`.

torch's FSDP runs on CPU with the gloo backend once it is told the device; Lightning's
FSDPStrategy refuses CPU by name and leaves FSDP to look for an accelerator, so this
subclass wraps the module itself with `device_id=cpu`. Lightning's full state dicts
"offload to CPU", which on CPU aliases the gathered parameters that FSDP then frees
(a segfault when cloned), so the state dicts are gathered without offloading."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator
from unittest import mock

import lightning.fabric.strategies.fsdp as fabric_fsdp
import lightning.pytorch.strategies.fsdp as pytorch_fsdp
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel

from normx_track.tracker.snapshot import is_sharded


def _full_state_dict_in_place(module: torch.nn.Module, world_size: int, rank0_only: bool = True):
    return FullyShardedDataParallel.state_dict_type(
        module, StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


@contextlib.contextmanager
def _no_offload() -> Iterator[None]:
    with mock.patch.object(pytorch_fsdp, "_get_full_state_dict_context", _full_state_dict_in_place), \
            mock.patch.object(fabric_fsdp, "_get_full_state_dict_context", _full_state_dict_in_place):
        yield


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not is_sharded(model):
            kwargs = {k: v for k, v in self.kwargs.items() if k != "device_id"}
            model = FullyShardedDataParallel(
                model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied above
        return super()._setup_model(model)  # already wrapped: Lightning's remaining setup

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _no_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        with _no_offload():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with _no_offload():
            return super().load_checkpoint(checkpoint_path, *args, **kwargs)
