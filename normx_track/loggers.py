"""Lightning loggers from a `LoggerConfig`. W&B runs online when logged in, offline otherwise
(`WANDB_MODE` wins when set); if W&B cannot start, training goes on with a CSV logger."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from .config import LoggerConfig

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True if an API key is at hand (env or ~/.netrc), without contacting the server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: LoggerConfig) -> str:
    return cfg.mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def build_loggers(cfg: LoggerConfig, save_dir: str | Path, config: dict[str, Any],
                  files: list[Path] = ()) -> list[Logger]:
    """The configured logger (plus its fallback); `config` is logged as hyperparameters and
    `files` (e.g. Hydra's config.yaml) are uploaded with the W&B run."""
    save_dir = str(save_dir)
    if cfg.kind == "none":
        return []
    if cfg.kind == "csv":
        logger: Logger = CSVLogger(save_dir, name="csv")
    elif cfg.kind == "tensorboard":
        logger = TensorBoardLogger(save_dir, name="tensorboard")
    else:
        try:
            logger = _start_wandb(cfg, save_dir, config, files)
        except Exception as err:  # network, auth, disk: none of them should stop training
            log.warning("W&B could not start (%s); logging to CSV under %s/csv instead", err, save_dir)
            logger = CSVLogger(save_dir, name="csv")
    logger.log_hyperparams(config)
    return [logger]


def _start_wandb(cfg: LoggerConfig, save_dir: str, config: dict[str, Any],
                 files: list[Path]) -> WandbLogger:
    logger = WandbLogger(project=cfg.project, entity=cfg.entity, group=cfg.group,
                         tags=list(cfg.tags), name=cfg.name, save_dir=save_dir,
                         mode=wandb_mode(cfg))
    run = logger.experiment  # starts the run now, so failures surface here
    for path in files:
        if Path(path).exists() and hasattr(run, "save"):
            run.save(str(path), base_path=str(Path(path).parent.parent), policy="now")
    # Panels line up on the optimizer step rather than W&B's own counter.
    if hasattr(run, "define_metric"):
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return logger
