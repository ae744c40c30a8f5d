"""Checkpoints loaded without unpickling arbitrary objects — Lightning .ckpt files written by
`normx_track.training.model.LanguageModel` (weights_only=True), Hugging Face model directories, or
hub revisions (e.g. Pythia's `stepN` branches)."""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from normx_track.errors import InputError
from normx_track.keys import TRACKER_STATE_KEY


class CheckpointError(InputError):
    """A checkpoint cannot be read; the message names the file."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    step: int | None  # optimizer steps, when the checkpoint says
    tokens_seen: int | None  # from the tracker's state in a Lightning checkpoint
    source: str


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_lightning_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True (``mmap``: tensors left on disk,
    to check a file cheaply); a clear one-line error if damaged."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError, KeyError, AttributeError, IndexError, TypeError) as err:
        # torch's own message may advise weights_only=False: never pass that on.
        reason = first_line(err)
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "it holds objects other than tensors and plain data"
        raise CheckpointError(f"{path}: cannot read checkpoint, the file is corrupt, truncated "
                              f"or not a PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no dict inside)")
    return checkpoint


def tracker_state(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tracker's state in a Lightning checkpoint dict: under its key "NormTracker", or
    under the older keys that carried its settings ("NormTracker{...}")."""
    states = checkpoint.get("callbacks", {}) or {}
    if TRACKER_STATE_KEY in states:
        return states[TRACKER_STATE_KEY]
    for key, state in states.items():
        if str(key).startswith(TRACKER_STATE_KEY + "{") and isinstance(state, dict):
            return state
    return None


def _tracker_tokens(checkpoint: dict[str, Any]) -> int | None:
    state = tracker_state(checkpoint)
    return int(state["tokens_seen"]) if state and "tokens_seen" in state else None


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that share storage with an earlier one (e.g. a tied lm_head)."""
    seen, tied = set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen:
            tied.add(name)
        seen.add(tensor.data_ptr())
    return tied


_MASKED_TYPES = ("bert", "roberta")  # model types that load as masked LMs


def auto_class(model_type: str | None):
    """BERT/RoBERTa load with their MLM head; every other model as a causal LM."""
    return AutoModelForMaskedLM if model_type in _MASKED_TYPES else AutoModelForCausalLM


def model_from_weights(hf_config: dict, weights: dict[str, torch.Tensor], path: str | Path,
                       config_source: str | Path | None = None) -> PreTrainedModel:
    """The model its HF config describes, with ``weights`` (a state_dict) in it, in eval
    mode; a tied head may be missing from the weights (it is stored once). Errors name
    ``path`` (and ``config_source``, where the config came from another file)."""
    of = f" of {config_source}" if config_source else ""
    try:
        config = AutoConfig.for_model(**hf_config)
        model = auto_class(config.model_type).from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{config_source or path}: cannot build the model from its "
                              f"config ({first_line(err)})") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model{of} "
                              f"({first_line(err)})") from None
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]  # a tied head is not stored twice
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model{of} (missing "
                              f"{missing[:5]}, unexpected {list(unexpected)[:5]})")
    if tied:
        model.tie_weights()
    return model.eval()


def load_lightning(path: str | Path) -> LoadedModel:
    """The HF model inside a `LanguageModel` checkpoint, in eval mode."""
    checkpoint = read_lightning_checkpoint(path)
    hparams, state = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict")
    if not isinstance(hparams, dict) or "hf_config" not in hparams or not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a normx LanguageModel checkpoint (expected "
                              "'hyper_parameters' with 'hf_config' and a 'state_dict')")
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise CheckpointError(f"{path}: the checkpoint's state_dict has no 'model.' entries")
    model = model_from_weights(hparams["hf_config"], weights, path)
    return LoadedModel(model, int(checkpoint.get("global_step", 0)),
                       _tracker_tokens(checkpoint), str(path))


def _step_from_name(name: str) -> int | None:
    match = re.search(r"step[_-]?(\d+)", name)
    return int(match.group(1)) if match else None


def load_pretrained(name_or_dir: str, revision: str | None = None) -> LoadedModel:
    """An HF directory or hub name (with `revision`, e.g. Pythia's "step1000")."""
    try:
        config = AutoConfig.from_pretrained(name_or_dir, revision=revision)
        model = auto_class(config.model_type).from_pretrained(name_or_dir, revision=revision)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{name_or_dir}{'@' + revision if revision else ''}: cannot "
                              f"load a Hugging Face model ({first_line(err)})") from None
    step = _step_from_name(revision or Path(name_or_dir).name)
    return LoadedModel(model.eval(), step, None, f"{name_or_dir}@{revision}" if revision
                       else str(name_or_dir))


def load_model(source: str | Path, revision: str | None = None) -> LoadedModel:
    """Dispatch on what `source` is: a .ckpt file, a model directory, or a hub name."""
    path = Path(source)
    if path.suffix == ".ckpt" or path.is_file():
        return load_lightning(path)
    if not path.exists() and (path.is_absolute() or str(source).startswith(".")):
        raise CheckpointError(f"{path}: no such checkpoint file or model directory")
    return load_pretrained(str(source), revision)
