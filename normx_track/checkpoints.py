"""Checkpoints: written atomically (a kill mid-save leaves the previous file intact), and
loaded without unpickling arbitrary objects — Lightning .ckpt files written by
`normx_track.model.LanguageModel` (weights_only=True), Hugging Face model directories, or
hub revisions (e.g. Pythia's `stepN` branches)."""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel


from .records import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save to a temp file beside the target, then one rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    step: int | None  # optimizer steps, when the checkpoint says
    tokens_seen: int | None  # from the tracker's state in a Lightning checkpoint
    source: str


def read_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; a clear error if damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{first}") from None


def _tracker_tokens(checkpoint: dict[str, Any]) -> int | None:
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("NormTracker") and "tokens_seen" in state:
            return int(state["tokens_seen"])
    return None


def load_lightning(path: str | Path) -> LoadedModel:
    checkpoint = read_lightning_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    if "hf_config" not in hparams:
        raise CheckpointError(f"{path}: no `hf_config` hyper-parameter; only checkpoints of "
                              "normx_track.model.LanguageModel can be loaded by path")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hparams["hf_config"]))
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items()
               if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "embed_out.weight"}  # tied heads are not stored twice
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.tie_weights()
    return LoadedModel(model.eval(), int(checkpoint.get("global_step", 0)),
                       _tracker_tokens(checkpoint), str(path))


def _step_from_name(name: str) -> int | None:
    match = re.search(r"step[_-]?(\d+)", name)
    return int(match.group(1)) if match else None


def load_pretrained(name_or_dir: str, revision: str | None = None) -> LoadedModel:
    """An HF directory or hub name (with `revision`, e.g. Pythia's "step1000")."""
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, revision=revision)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{name_or_dir}{'@' + revision if revision else ''}: cannot "
                              f"load model: {str(err).splitlines()[0]}") from None
    step = _step_from_name(revision or Path(name_or_dir).name)
    return LoadedModel(model.eval(), step, None, f"{name_or_dir}@{revision}" if revision
                       else str(name_or_dir))


def load_model(source: str | Path, revision: str | None = None) -> LoadedModel:
    """Dispatch on what `source` is: a .ckpt file, a model directory, or a hub name."""
    path = Path(source)
    if path.suffix == ".ckpt" or path.is_file():
        return load_lightning(path)
    return load_pretrained(str(source), revision)
