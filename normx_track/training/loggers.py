"""Lightning loggers from a `LoggerConfig`. W&B runs online when logged in, offline otherwise
(`WANDB_MODE` wins when set); if W&B cannot start, or fails mid-run, training goes on with a
CSV logger."""
from __future__ import annotations

import logging
import netrc
from collections import deque
import os
import secrets
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from normx_track.record.atomic import atomic_open
from normx_track.training.config import LoggerConfig

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
                  files: list[Path] = (), resume: bool = False) -> list[Logger]:
    """The configured logger (plus its fallback); `config` is logged as hyperparameters and
    `files` (e.g. Hydra's config.yaml) are uploaded with the W&B run. `resume`: a run
    resumed from a checkpoint continues the W&B run this folder started."""
    save_dir = str(save_dir)
    if cfg.kind == "none":
        return []
    if cfg.kind == "csv":
        logger: Logger = CSVLogger(save_dir, name="csv")
    elif cfg.kind == "tensorboard":
        logger = TensorBoardLogger(save_dir, name="tensorboard")
    else:
        try:
            logger = _start_wandb(cfg, save_dir, config, files, resume)
        except Exception as err:  # network, auth, disk: none of them should stop training
            log.warning("W&B could not start (%s); logging to CSV under %s/csv instead", err, save_dir)
            logger = CSVLogger(save_dir, name="csv")
    logger.log_hyperparams(config)
    return [logger]


def finish_loggers(loggers: list[Logger], exit_code: int = 0) -> None:
    """End what a run started (the W&B run) before the next one in this process begins."""
    for logger in loggers:
        if isinstance(logger, ResilientWandbLogger):
            logger.finish(exit_code)


class ResilientWandbLogger(WandbLogger):
    """A WandbLogger that cannot stop training. If W&B fails mid-run (its service dies, the
    network goes), the failure is reported once, W&B is dropped, and metrics go on to a CSV
    logger in the run directory. What W&B had written locally (`wandb/<run>/run-*.wandb`)
    can still be uploaded with `wandb sync`."""

    # Rows W&B accepted but may not have written when it died are also sent to the CSV.
    IN_FLIGHT_ROWS = 256

    def __init__(self, *args: Any, save_dir: str, **kwargs: Any):
        super().__init__(*args, save_dir=save_dir, **kwargs)
        self.fallback: CSVLogger | None = None
        self._recent: deque[tuple[dict[str, Any], int | None]] = deque(maxlen=self.IN_FLIGHT_ROWS)
        self._params: list[Any] = []

    @property
    def failed(self) -> bool:
        return self.fallback is not None

    def local_run_dir(self) -> Path:
        """The local W&B run (what `wandb sync` uploads); its parent before the run starts."""
        local = getattr(self._experiment, "dir", None)
        return Path(local).parent if local else Path(self.save_dir) / "wandb"

    def guard(self, method: Callable[..., Any], *args: Any) -> bool:
        """`method(self, *args)` (a WandbLogger method); on failure switch to the CSV
        fallback. True if W&B took it."""
        if self.fallback is None:
            try:
                method(self, *args)
                return True
            except Exception as err:  # whatever W&B raises, training goes on
                self.fall_back(err)
        return False

    def fall_back(self, err: Exception) -> None:
        """Report `err` and send everything from now on to CSV."""
        if self.fallback is not None:
            return
        run_dir = self.local_run_dir()
        log.warning("W&B failed mid-run (%s: %s); logging goes on to CSV under %s/csv. "
                    "Upload what W&B kept locally with `wandb sync %s`",
                    type(err).__name__, err, self.save_dir, run_dir)
        self.fallback = CSVLogger(self.save_dir, name="csv")
        for params in self._params:
            self.fallback.log_hyperparams(params)
        for metrics, step in self._recent:
            self.fallback.log_metrics(metrics, step)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self.guard(WandbLogger.log_metrics, metrics, step):
            self._recent.append((dict(metrics), step))
        else:
            self.fallback.log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if self.guard(WandbLogger.log_hyperparams, params):
            self._params.append(params)
        else:
            self.fallback.log_hyperparams(params)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.guard(WandbLogger.after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def save(self) -> None:
        if self.fallback is not None:
            self.fallback.save()

    @rank_zero_only
    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run, so the next run in this process (a Hydra multirun job) starts
        its own. Uploads get `finish_timeout` seconds; the rest stays on disk."""
        if self._experiment is None or self.failed:
            return
        run_dir = self.local_run_dir()
        try:
            self._experiment.finish(exit_code=exit_code)
        except TimeoutError:
            log.warning("W&B did not finish uploading in time; the run is kept in %s: "
                        "upload it with `wandb sync %s`", run_dir, run_dir)
        except Exception as err:  # the run is over: report, do not fail the job
            log.warning("W&B could not finish the run (%s: %s); upload it later with "
                        "`wandb sync %s`", type(err).__name__, err, run_dir)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.guard(WandbLogger.finalize, status)
        if self.fallback is not None:
            self.fallback.finalize(status)


def wandb_run_id(save_dir: str | Path, resume: bool) -> str:
    """The W&B run id of the run in `save_dir`: the one it started with when resuming (kept
    in ``wandb/normx-run-id``), so the W&B run continues (offline, `wandb sync` uploads its
    pieces into one run, in order); a new one for a fresh run."""
    path = Path(save_dir) / "wandb" / "normx-run-id"
    if resume and path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9] too
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w") as handle:
            handle.write(run_id)
    return run_id


def _start_wandb(cfg: LoggerConfig, save_dir: str, config: dict[str, Any],
                 files: list[Path], resume: bool) -> WandbLogger:
    import wandb

    settings = wandb.Settings(finish_timeout=cfg.finish_timeout_s, finish_timeout_raises=True)
    logger = ResilientWandbLogger(project=cfg.project, entity=cfg.entity, group=cfg.group,
                                  tags=list(cfg.tags), name=cfg.name, save_dir=save_dir,
                                  mode=wandb_mode(cfg), settings=settings,
                                  id=wandb_run_id(save_dir, resume))  # resume="allow"
    run = logger.experiment  # starts the run now, so failures surface here
    for path in files:
        if Path(path).exists() and hasattr(run, "save"):
            run.save(str(path), base_path=str(Path(path).parent.parent), policy="now")
    # Panels line up on the optimizer step rather than W&B's own counter.
    if hasattr(run, "define_metric"):
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return logger
