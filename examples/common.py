"""What both examples share: this project's configs (composed with Hydra, as train.py does),
the synthetic corpus they name, and the tiny GPT-2 they size, so that a plain loop, an HF
Trainer run and `train.py` start from the same weights and data. Your own script would
build these its own way; the tracker needs only the model, a step count and gold.

Also what keeps a user's files safe, as train.py does: a run folder's checkpoints carry
the run id that its record's meta.json holds (and the tokenizer's vocab hash), so a resume
never continues one run's record from another run's weights; a fresh run in a used folder
sets the earlier run's record and checkpoints aside together (`normx.replaced-<time>`,
`checkpoint.pt.replaced-<time>`: rename them back to resume it), and refuses to start over
a checkpoint it did not write. Bad input is one line, `error: ...`, exit status 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterable

# Light imports only: torch, transformers and the library modules that import them are
# imported in the functions that use them, so an example answers --help and a bad option
# before loading them (issue 30 §6).
from normx_track.errors import InputError
from normx_track.record.atomic import AtomicWriteError
from normx_track.record.store import (RECORD_DIR, RecordLockedError, aside_name, set_aside,
                                      vocab_hash)
from normx_track.training.config import Config, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
USER_FACING = (InputError, RecordLockedError, AtomicWriteError)  # one line, exit status 2
log = logging.getLogger("examples")


def compose(overrides: list[str]) -> Config:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from normx_track.record.checkpoint_loader import first_line

    ConfigStore.instance().store(name="config_schema", node=Config)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose("config", overrides=["output_dir=unused", *overrides])
        return validate(OmegaConf.to_object(cfg))
    except (HydraException, OmegaConfBaseException) as err:
        raise InputError(f"overrides {' '.join(overrides)}: {first_line(err)}") from None


def data_model_and_tracker_args(cfg: Config, out: Path):
    """The corpus (tokenised and cached), the freshly initialised HF model (seeded as
    train.py seeds it) and the tracker's arguments (gold, vocab, probes, schedule)."""
    import torch
    from transformers import AutoModelForCausalLM

    from normx_track.training.data.datamodule import TextDataModule
    from normx_track.training.model import build_hf_config
    from normx_track.training.tracker_factory import tracker_arguments

    torch.manual_seed(cfg.seed)
    data = TextDataModule(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup()
    config = build_hf_config(cfg.model, data.vocab_size, data.eos_token_id)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    return data, model, tracker_arguments(cfg, data, out)


# -- the command line: one line per error --------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are InputErrors (printed by `cli` as one line), not usage."""

    def error(self, message: str):
        raise InputError(message)


def cli(body: Callable[[], None]) -> int:
    """Run `body`; bad input (an argument, a path, a checkpoint) is one line, status 2."""
    try:
        body()
    except USER_FACING as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def at_least_one(flag: str, value: int) -> None:
    if value < 1:
        raise InputError(f"{flag} must be at least 1, got {value}")


def check_run_folder(out: Path) -> None:
    """OUT must be a folder (or not exist yet) this user can write, as must its record."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the run folder is a file; choose another OUT")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    for folder in (existing, out / RECORD_DIR):
        if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            raise InputError(f"{folder}: cannot write there (read-only, not yours, or a file), "
                             f"so {out} cannot hold the run; choose another OUT")


# -- which run a checkpoint belongs to -----------------------------------------------------
def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def identity(run_id: str, vocab: list[str]) -> dict[str, str]:
    """What a checkpoint carries to tie it to its record: the run id and the vocab hash."""
    return {"run_id": run_id, "vocab_hash": vocab_hash(vocab)}


def record_meta(out: Path) -> dict | None:
    """The record's meta.json (None: no record yet); one line naming it if damaged."""
    from normx_track.record.checkpoint_loader import first_line

    path = out / RECORD_DIR / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        meta, why = None, first_line(err)
    else:
        why = "not a JSON object"
    if not isinstance(meta, dict):
        raise InputError(f"{path}: unreadable ({why}), so nothing says which run the record "
                         "is of; restore it, or start a fresh run (without --resume)")
    return meta


def check_same_run(checkpoint: Path, found: dict, out: Path, vocab: list[str]) -> str:
    """`checkpoint` must be of the run whose record is in OUT and of this run's tokenizer;
    returns its run id."""
    run_id = found.get("run_id")
    if not run_id:
        raise InputError(f"{checkpoint}: holds no normx run id (not written by this example, "
                         f"or by a version before run ids), so nothing ties it to the record in "
                         f"{out / RECORD_DIR}; start a fresh run (without --resume)")
    meta = record_meta(out)
    if meta is not None and meta.get("run_id") != run_id:
        raise InputError(f"{checkpoint} is of run {run_id}, but the record {out / RECORD_DIR} "
                         f"is of run {meta.get('run_id') or '(none: not written by this example)'}"
                         ": resuming would mix the two; start a fresh run (without --resume)")
    now = vocab_hash(vocab)
    if found.get("vocab_hash") != now:
        raise InputError(f"{checkpoint}: trained with another tokenizer (vocab hash "
                         f"{str(found.get('vocab_hash'))[:12]}) than these overrides build "
                         f"({now[:12]}); resume with the overrides the run was started with")
    return run_id


def start_fresh(out: Path, checkpoints: Iterable[Path], ours: Callable[[Path], bool]) -> None:
    """A fresh run in a used folder: the earlier run's record and the checkpoints this
    example wrote are set aside under one suffix (`<name>.replaced-<time>`), so that run can
    still be resumed; a checkpoint it did not write is never overwritten: refused."""
    checkpoints = list(checkpoints)
    for path in checkpoints:
        if not ours(path):
            raise InputError(f"{path}: not a checkpoint this example wrote (no normx run id "
                             "in it), and a fresh run would overwrite it; move it away or "
                             "choose another OUT")
    record = set_aside(out)
    moved = [record] if record is not None else []
    for path in checkpoints:
        target = path.with_name(path.name + record.name[len(RECORD_DIR):]) if record else None
        if target is None or target.exists():
            target = aside_name(path, "replaced")
        path.rename(target)
        moved.append(target)
    if moved:
        log.warning("%s held an earlier run; moved it aside as %s (rename them back to "
                    "resume it)", out, ", ".join(p.name for p in moved))
