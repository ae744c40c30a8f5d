"""What a run checks before it changes anything in its folder, and how it then takes the
folder over (`training/run.py` calls these in order).

- `held_run_folder(out)`: the folder is usable (not a file, writable, nothing where the
  run keeps its parts) and locked (`RecordLock`, rank zero) for the whole run.
- `resume_checkpoint(cfg)`: `ckpt_path` names a checkpoint that reads ("last": the
  folder's last.ckpt, else its newest readable step checkpoint).
- `check_model(model, ckpt_path)`: the checkpoint's weights fit the model this config
  builds, and torch accepts the optimizer settings.
- `take_folder(out, fresh, on_start)`: once everything that can fail is built, an earlier
  run's files are set aside (a fresh run) and the launcher's `on_start` is called.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lightning.pytorch.utilities import rank_zero_only

from normx_track.record.checkpoint_loader import (CheckpointError, first_line,
                                                  read_lightning_checkpoint, tracker_state)
from normx_track.record.store import RecordLock, check_run_folder, read_json, set_aside
from normx_track.training.config import Config, ConfigError
from normx_track.training.model import LanguageModel

log = logging.getLogger(__name__)


@contextmanager
def held_run_folder(out: Path) -> Iterator[None]:
    """The run folder checked, then locked on rank zero until the block ends (the
    launcher's `StartGuard` may hold it already: the lock is re-entrant in a process)."""
    check_run_folder(out)
    lock = RecordLock.acquire(out) if rank_zero_only.rank == 0 else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# -- resuming ------------------------------------------------------------------------------
def resume_checkpoint(cfg: Config) -> str | None:
    """The checkpoint to resume from, checked before anything starts: "last" means
    ``<output_dir>/checkpoints/last.ckpt`` (Lightning would otherwise train from scratch
    after a warning), or, where a kill came between a step's checkpoint and last.ckpt, the
    newest readable ``step_*.ckpt``; a damaged file is named in one line."""
    if cfg.ckpt_path is None:
        return None
    folder = Path(cfg.output_dir) / "checkpoints"
    path = folder / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if cfg.ckpt_path == "last" and not path.is_file():
        return newest_step_checkpoint(folder, path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: no checkpoint at {path}; leave "
                              "ckpt_path out to start a fresh run")
    check_same_run(read_lightning_checkpoint(path, mmap=True), path, Path(cfg.output_dir))
    return str(path)


def check_same_run(checkpoint: dict, path: Path, out: Path) -> None:
    """A checkpoint of another run (its tracker state names another run id than the
    folder's record) would continue this record with that run's weights: refused now,
    before anything starts (the tracker refuses it too, for runs outside train.py)."""
    theirs = (tracker_state(checkpoint) or {}).get("run_id")
    meta = out / "normx" / "meta.json"
    ours = (read_json(meta.parent, "meta.json") or {}).get("run_id") if meta.exists() else None
    if None not in (theirs, ours) and theirs != ours:
        raise CheckpointError(f"ckpt_path={path}: a checkpoint of run {theirs}, but {meta} is "
                              f"the record of run {ours}; resume a run in its own folder "
                              "(hydra.run.dir=<its folder>), or leave ckpt_path out to start a "
                              "fresh run here")


def newest_step_checkpoint(folder: Path, last: Path) -> str:
    """`ckpt_path=last` without last.ckpt: the newest step checkpoint that reads."""
    for path in sorted(folder.glob("step_*.ckpt"), reverse=True):  # zero-padded steps
        try:
            read_lightning_checkpoint(path, mmap=True)
        except CheckpointError as err:
            log.warning("%s; trying an earlier one", err)
            continue
        log.warning("ckpt_path=last: no %s (the run stopped between %s and it?); resuming "
                    "from %s, the newest step checkpoint", last, path.name, path)
        return str(path)
    raise CheckpointError(f"ckpt_path=last: no checkpoint at {last} nor any readable "
                          f"step_*.ckpt beside it; leave ckpt_path out to start a fresh run "
                          "(the folder's earlier run is then set aside)")


# -- the model the config builds -----------------------------------------------------------
def check_model(model: LanguageModel, ckpt_path: str | None) -> None:
    """A resumed checkpoint fits `model`; the optimizer builds."""
    if ckpt_path is not None:
        check_resume_fits(ckpt_path, model)
    check_optimizer(model)


def check_optimizer(model: LanguageModel) -> None:
    """Build the optimizer once now (cheap: AdamW allocates its state at the first step),
    so a setting torch refuses stops the run before it changes anything."""
    try:
        model.configure_optimizers()
    except (ValueError, TypeError, IndexError, RuntimeError) as err:
        o = model.optim
        raise ConfigError(f"optim (lr={o.lr}, betas={list(o.betas)}, weight_decay="
                          f"{o.weight_decay}): the optimizer refuses it ({first_line(err)})"
                          ) from None


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# The config keys behind the HF config's fields (model.py's build_hf_config, per family).
_CONFIG_KEYS = {"model.arch": ("model_type",), "model.n_layer": ("n_layer", "num_hidden_layers"),
                "model.n_embd": ("n_embd", "hidden_size"),
                "model.n_head": ("n_head", "num_attention_heads"),
                "model.n_inner": ("n_inner", "intermediate_size"),
                "model.n_positions": ("n_positions", "max_position_embeddings"),
                "model.tie_word_embeddings": ("tie_word_embeddings",),
                "vocabulary size (data.tokenizer, data.vocab_size)": ("vocab_size",)}


def config_values(hf_config: dict) -> dict[str, Any]:
    """Our config keys' values as an HF config dict (from a checkpoint) holds them."""
    values = {}
    for key, names in _CONFIG_KEYS.items():
        found = [hf_config[n] for n in names if n in hf_config]
        values[key] = found[0] if found else None
    return values


def check_resume_fits(ckpt_path: str, model: LanguageModel) -> None:
    """The checkpoint's weights must fit the model this run's config builds; else one line
    naming the config keys that differ (a resume composes its config afresh, so a
    forgotten `model=...` override builds another model)."""
    checkpoint = read_lightning_checkpoint(ckpt_path, mmap=True)
    if _shapes(checkpoint.get("state_dict") or {}) == _shapes(model.state_dict()):
        return
    then = config_values((checkpoint.get("hyper_parameters") or {}).get("hf_config") or {})
    now = config_values(model.hparams["hf_config"])
    differ = [f"{k}: {then[k]} -> {now[k]}" for k in _CONFIG_KEYS if then[k] != now[k]]
    raise CheckpointError(f"{ckpt_path}: its weights do not fit this run's model "
                          f"({', '.join(differ) or 'other parameter shapes'}); resume with "
                          f"the overrides the run was started with (.hydra/overrides.yaml)")


# -- all is built: the folder is this run's ------------------------------------------------
def take_folder(out: Path, fresh: bool, on_start: Callable[[], list[Path]] | None
                ) -> list[Path]:
    """On rank zero: a fresh run sets an earlier run's files aside (`claim_folder`), then
    `on_start()` says the folder is this run's; returns the files it names (for W&B)."""
    if rank_zero_only.rank != 0:
        return []
    if fresh:
        claim_folder(out)
    return on_start() if on_start is not None else []


def claim_folder(out: Path) -> None:
    """A fresh run in a used folder sets the earlier run's checkpoints, record and figures
    aside (`<name>.replaced-<time>`): `ckpt_path=last` must never find the other run's
    checkpoint, nor analysis mix the two. Called once everything that can fail at start-up
    is built, so a run that cannot start moves nothing."""
    for name in ("checkpoints", "normx", "figures"):
        moved = set_aside(out, name)
        if moved is not None:
            log.warning("%s held another run's %s; moved them to %s", out, name, moved)
