"""Hand a run's model to the ecosystem: a checkpoint of ours becomes a Hugging Face folder
(``save_pretrained`` model + tokenizer), which lm-eval, minicons, TransformerLens and inseq
read as they read any hub model (``AutoModelForCausalLM``; a masked LM's,
``AutoModelForMaskedLM``).

    python -m normx_track.export outputs/run/checkpoints/last.ckpt exported/run   # train.py
    python -m normx_track.export runs/plain/checkpoint.pt exported/plain         # a state_dict
    python -m normx_track.export runs/hf/checkpoint-200 exported/hf              # an HF folder
    lm_eval --model hf --model_args pretrained=exported/run --tasks blimp --device cpu

CHECKPOINT is a Lightning ``.ckpt`` written by train.py; a Hugging Face model folder (e.g.
the Trainer's ``checkpoint-N/``); or any other file holding a ``state_dict`` (plain tensors,
or a dict with the state_dict under ``"model"``, as examples/plain_loop.py writes), whose
model config comes from ``--config`` (a ``config.json`` or a folder holding one) or else
from the run's record, ``normx/meta.json`` ("model" / "arch") beside the file. Everything is
read with ``weights_only=True``.

The tokenizer is found as `normx_track.attribution.explain` finds it (next to the
checkpoint, in its run folder, or the data cache the run's record names; ``--tokenizer``
overrides) and must be the run's own: where the run folder has a record, its vocabulary
hash must be the one ``normx/meta.json`` records. It is written with the model's context
size as ``model_max_length`` and, where the model config has a ``pad_token_id``, that pad
token.

The folder is written into a temporary folder beside OUT_DIR and renamed to OUT_DIR when
complete, so a full disk or a kill leaves nothing half-written. Errors print one line
naming the file, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from normx_track.errors import InputError
from normx_track.record.atomic import AtomicWriteError, atomic_folder

__all__ = ["ExportError", "export", "main"]


class ExportError(InputError):
    """Bad input to the export (a checkpoint, a tokenizer, an out-dir); names it."""


def export(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None,
           config: str | Path | None = None) -> Path:
    """Write ``out_dir`` (model weights, config, generation config, tokenizer files)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_out_dir(out_dir)
    model, run_dir = load(checkpoint, config)
    tok = find_tokenizer(checkpoint, run_dir, tokenizer)
    check_tokenizer(tok, model, run_dir, given=tokenizer is not None,
                    own=checkpoint_vocab_hash(checkpoint))
    fit_tokenizer(tok, model)
    write_atomically(out_dir, lambda folder: (model.save_pretrained(folder),
                                              tok.save_pretrained(folder)))
    return out_dir


# -- the target ---------------------------------------------------------------------------
def check_out_dir(out_dir: Path) -> None:
    """A new folder, or an empty one, where this user can write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: a file, not a folder; export into a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: the folder exists and is not empty; export into a new one")
    parent = next(p for p in out_dir.absolute().parents if p.exists())
    for folder in (parent, out_dir):
        if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            raise ExportError(f"{folder}: cannot write there (read-only, not yours, or a file), "
                              f"so {out_dir} cannot be written; export somewhere else")


def write_atomically(out_dir: Path, write) -> None:
    """`write(folder)` into a temp folder beside `out_dir`, then one rename
    (`atomic_folder`): a failure leaves neither `out_dir` nor the temp folder."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(out_dir) as folder:
            write(folder)
    except AtomicWriteError:
        raise  # the write itself failed (a full disk): named, nothing left behind
    except OSError as err:
        raise ExportError(f"{out_dir}: cannot create it ({err.strerror or err})") from None


# -- the model ----------------------------------------------------------------------------
def load(checkpoint: Path, config: str | Path | None = None):
    """(the model in eval mode, the run folder whose record describes it)."""
    from normx_track.record.checkpoint_loader import CheckpointError, load_lightning, load_pretrained

    if checkpoint.suffix == ".ckpt":
        if config is not None:
            raise ExportError("--config: only for a state_dict file; a .ckpt holds its config")
        return load_lightning(checkpoint).model, checkpoint.parent.parent
    if checkpoint.is_dir():
        if config is not None:
            raise ExportError("--config: only for a state_dict file; a model folder holds its config")
        return load_pretrained(str(checkpoint)).model, checkpoint.parent
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file or model folder")
    return load_state_dict_file(checkpoint, config), checkpoint.parent


def load_state_dict_file(path: Path, config: str | Path | None):
    """A model built from its config (``--config``, else the record's meta.json beside the
    file) with the file's state_dict."""
    import torch

    from normx_track.record.checkpoint_loader import (CheckpointError, model_from_weights,
                                                      read_lightning_checkpoint)

    state = read_lightning_checkpoint(path)  # weights_only=True; a dict, or one line
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    if not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: no state_dict in it (tensors by name, or a dict with "
                              "them under 'model')")
    arch, source = model_config(path, config)
    return model_from_weights(arch, weights, path, source)


def model_config(path: Path, config: str | Path | None) -> tuple[dict, Path]:
    """The HF config dict (with its model_type) and the file it came from."""
    if config is not None:
        source = Path(config)
        source = source / "config.json" if source.is_dir() else source
        arch = _read_json(source, "--config")
    else:
        source = path.parent / "normx" / "meta.json"
        if not source.exists():
            raise ExportError(f"{path}: a state_dict without its model config: no record "
                              f"({source}) beside it; pass --config CONFIG.json (or a model folder)")
        arch = (_read_json(source, "the run's record").get("model") or {}).get("arch")
    if not isinstance(arch, dict) or "model_type" not in arch:
        raise ExportError(f"{source}: no model config in it (a dict with 'model_type')")
    return arch, source


def _read_json(path: Path, what: str) -> dict:
    try:
        found = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ExportError(f"{what}: no such file {path}") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(found, dict):
        raise ExportError(f"{path}: not a JSON object")
    return found


# -- the tokenizer ------------------------------------------------------------------------
def find_tokenizer(checkpoint: Path, run_dir: Path, tokenizer: str | Path | None):
    """`--tokenizer`, else explain's search for a .ckpt; else the model folder itself, the
    run folder, its tokenizer/ and the data cache its record names."""
    from normx_track.attribution.explain import (ExplainError, recorded_tokenizer,
                                                 tokenizer_from, load_tokenizer)
    from normx_track.record.checkpoint_loader import first_line

    if tokenizer is not None or checkpoint.suffix == ".ckpt":
        return load_tokenizer(checkpoint, tokenizer)
    places = [checkpoint] if checkpoint.is_dir() else []
    places += [run_dir, run_dir / "tokenizer", recorded_tokenizer(run_dir)]
    for where in places:
        if (where / "tokenizer.json").exists():
            try:
                return tokenizer_from(where)
            except Exception as err:  # noqa: BLE001 - tokenizer loaders raise many kinds
                raise ExplainError(f"cannot load the tokenizer from {where} "
                                   f"({first_line(err)})") from None
    raise ExportError(f"{checkpoint}: no tokenizer.json in {', '.join(map(str, places[:-1]))} "
                      "nor in the data cache its record names; pass --tokenizer PATH")


def checkpoint_vocab_hash(checkpoint: Path) -> str | None:
    """The vocab hash the checkpoint itself carries (the examples write it: plain_loop's
    checkpoint.pt, hf_trainer's checkpoint-N/normx_run.json), else None."""
    import torch

    try:
        if checkpoint.is_dir():
            found = json.loads((checkpoint / "normx_run.json").read_bytes())
        elif checkpoint.suffix != ".ckpt":
            found = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        else:
            return None
    except Exception:  # noqa: BLE001 - no such file or unreadable: nothing carried
        return None
    value = found.get("vocab_hash") if isinstance(found, dict) else None
    return value if isinstance(value, str) else None


def check_tokenizer(tok, model, run_dir: Path, given: bool, own: str | None = None) -> None:
    """The run's own tokenizer: of the model's size and of the vocabulary the checkpoint
    carries (``own``) or else the run's meta.json records (explain's check: another corpus's
    tokenizer of the same size maps ids to other tokens)."""
    from normx_track.attribution.explain import check_vocabulary
    from normx_track.record.store import read_json, vocab_hash
    from normx_track.record.vocabulary import token_strings

    check_vocabulary(tok, model.get_input_embeddings().weight.shape[0])
    found = vocab_hash(token_strings(tok))
    where = "--tokenizer" if given else f"the tokenizer found for {run_dir}"
    if own is not None:
        if found != own:
            raise ExportError(f"{where}: not the tokenizer the checkpoint was trained with "
                              f"(vocab hash {found[:12]}; the checkpoint records {own[:12]}); "
                              "its ids would map to other tokens than the model learnt")
        return
    recorded = (read_json(run_dir, "meta.json") or {}).get("vocab_hash")
    if recorded and found != recorded:
        raise ExportError(f"{where}: not the tokenizer of the run {run_dir} (vocab hash "
                          f"{found[:12]}; the run's normx/meta.json records {recorded[:12]}); "
                          "its ids would map to other tokens than the model learnt")


def fit_tokenizer(tok, model) -> None:
    """The model's context size as model_max_length, and its pad token where it has one."""
    from normx_track.attribution.masked import is_masked_lm
    from normx_track.modeling import context_size, encoder_context_size

    size = encoder_context_size(model) if is_masked_lm(model) else context_size(model)
    if size:
        tok.model_max_length = int(size)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None and tok.pad_token_id != pad:
        tok.pad_token = tok.convert_ids_to_tokens(int(pad))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every other error here
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m normx_track.export",
                                     description="Write a Hugging Face model folder from a "
                                                 "normx-track checkpoint.")
    parser.add_argument("checkpoint", help="a .ckpt written by train.py, a Hugging Face model "
                        "folder (checkpoint-N), or a state_dict file (examples/plain_loop.py's "
                        "checkpoint.pt)")
    parser.add_argument("out_dir", help="the new folder (AutoModelForCausalLM, or for a masked LM "
                             "AutoModelForMaskedLM, .from_pretrained reads it)")
    parser.add_argument("--tokenizer", help="a tokenizer directory or tokenizer.json (default: the run's)")
    parser.add_argument("--config", help="for a state_dict file: its model's config.json or a "
                        "folder holding one (default: the run's normx/meta.json beside the file)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.tokenizer, args.config)
    except (InputError, AtomicWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
