"""One training run from a `Config`: data, model, loggers, tracker, checkpoints, Trainer.
Hydra-free, so notebooks and other launchers can call `run(cfg)` too."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only

from normx_track.record.checkpoint_writer import AtomicCheckpointIO
from normx_track.record.checkpoint_loader import CheckpointError, read_lightning_checkpoint
from normx_track.training.config import Config, TrainerConfig, to_dict
from normx_track.training.data.datamodule import TextDataModule
from normx_track.training.loggers import ResilientWandbLogger, build_loggers, finish_loggers
from normx_track.training.model import LanguageModel, flops_per_token
from normx_track.training.monitors import LogStepThroughput, LossProgressBar
from normx_track.record.store import set_aside

log = logging.getLogger(__name__)
_THROUGHPUT_WINDOW_STEPS = 100  # rates over about the last 100 steps, as ThroughputMonitor's


def build_callbacks(cfg: Config, datamodule: TextDataModule, out: Path,
                    flops_per_batch: float | None = None) -> list[L.Callback]:
    # Between logged steps nothing reads the GPU back (normx_track/training/monitors.py): the bar
    # refreshes, and throughput is timed, only when the loggers write.
    t = cfg.trainer
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step_{step:08d}",
                        every_n_train_steps=t.checkpoint_every_n_steps,
                        save_top_k=-1, save_last=True, auto_insert_metric_name=False,
                        # "last" is always last.ckpt (what ckpt_path=last reads), also when
                        # the run folder was moved and Lightning no longer knows the file.
                        enable_version_counter=False),
        LogStepThroughput(flops_per_batch,
                          window=max(2, _THROUGHPUT_WINDOW_STEPS // t.log_every_n_steps)),
        LossProgressBar(refresh_rate=t.log_every_n_steps),
    ]
    if cfg.logger.kind != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.tracker.enabled:
        from normx_track.training.tracker_factory import build_tracker
        callbacks.append(build_tracker(cfg, datamodule, out))
    return callbacks


def uses_cuda(t: TrainerConfig) -> bool:
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto"
                                                 and torch.cuda.is_available())


def build_strategy(t: TrainerConfig) -> str | Strategy:
    if t.strategy != "fsdp":
        return t.strategy
    # Original parameters (names, weight-decay groups) survive wrapping with use_orig_params.
    if t.accelerator == "cpu":
        from normx_track.training.strategies import CPUFSDPStrategy
        return CPUFSDPStrategy(use_orig_params=True)
    return FSDPStrategy(use_orig_params=True)


def build_trainer(cfg: Config, out: Path, loggers, callbacks) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision, max_steps=t.max_steps, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches, deterministic=t.deterministic,
        default_root_dir=out, logger=loggers or False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # ResumableBatchSampler shards by rank itself
        enable_progress_bar=True)


def resume_checkpoint(cfg: Config) -> str | None:
    """The checkpoint to resume from, checked before anything starts: "last" means
    ``<output_dir>/checkpoints/last.ckpt`` and must exist (Lightning would otherwise
    train from scratch after a warning); a damaged file is named in one line."""
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" \
        else Path(cfg.ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: no checkpoint at {path}; leave "
                              "ckpt_path out to start a fresh run")
    read_lightning_checkpoint(path, mmap=True)  # weights_only; tensors stay on disk
    return str(path)


def set_aside_checkpoints(out: Path) -> None:
    """A fresh run in a used folder: `ckpt_path=last` must never find the earlier run's
    checkpoint (the tracker sets the earlier record aside likewise)."""
    moved = set_aside(out, "checkpoints")
    if moved is not None:
        log.warning("%s held another run's checkpoints; moved them to %s", out, moved)


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_resume_fits(ckpt_path: str, model: LanguageModel) -> None:
    """The checkpoint's weights must fit the model this run's config builds; else one line
    naming the model settings that differ (a resume composes its config afresh, so a
    forgotten `model=...` override builds another model)."""
    checkpoint = read_lightning_checkpoint(ckpt_path, mmap=True)
    if _shapes(checkpoint.get("state_dict") or {}) == _shapes(model.state_dict()):
        return
    then = (checkpoint.get("hyper_parameters") or {}).get("hf_config") or {}
    now = model.hparams["hf_config"]
    differ = [f"{k}: {then.get(k)} -> {now.get(k)}" for k in sorted(set(then) | set(now))
              if then.get(k) != now.get(k) and not k.startswith(("_", "transformers_version"))]
    raise CheckpointError(f"{ckpt_path}: its weights do not fit this run's model "
                          f"({', '.join(differ[:6]) or 'other parameter shapes'}); resume with "
                          f"the overrides the run was started with (.hydra/overrides.yaml)")


def save_emergence(loggers, out: Path) -> None:
    """Once, after training: the per-token emergence table and figures (analysis.emergence)
    go to <out>/figures and, as files, to the W&B run. Never mid-run, and never fatal: the
    record is complete whatever happens here."""
    wandb_loggers = [lg for lg in loggers if isinstance(lg, ResilientWandbLogger)
                     and not lg.failed]
    if not wandb_loggers or not (out / "normx" / "metrics.jsonl").exists():
        return
    try:
        from analysis import emergence
        from analysis.load import load_run

        tables, figures = emergence.build(load_run(out))
        emergence.write(tables, figures, out / "figures", formats=("png",))
        for logger in wandb_loggers:  # one glob: the tables and figures just written
            logger.experiment.save(str(out / "figures" / "emergence*"), base_path=str(out),
                                   policy="now")
    except Exception as err:  # noqa: BLE001 - an extra at the end must not fail the run
        log.warning("emergence summary not saved to W&B (%s: %s); run "
                    "`python -m analysis.emergence %s`", type(err).__name__, err, out)


def run(cfg: Config, job_files: Callable[[], list[Path]] | None = None) -> float | None:
    """Train; returns the final validation loss (what a Hydra sweeper would minimise).
    `job_files` is called (on rank zero) once the input is checked and the run is sure to
    start, for the launcher's config files to upload with the W&B run (`train.py` moves a
    replaced run's Hydra files aside then)."""
    ckpt_path = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    on_gpu = uses_cuda(cfg.trainer)
    if on_gpu:  # TF32 matmuls where fp32 remains (bf16-mixed keeps some)
        torch.set_float32_matmul_precision("high")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = TextDataModule(cfg.data, seed=cfg.seed, on_gpu=on_gpu)
    datamodule.prepare_data()
    datamodule.setup()
    model = LanguageModel.from_configs(cfg.model, cfg.optim, datamodule.vocab_size,
                                       datamodule.eos_token_id, cfg.trainer.max_steps,
                                       compile_model=cfg.trainer.compile,
                                       loss_chunk_tokens=cfg.trainer.loss_chunk_tokens)
    if ckpt_path is not None:
        check_resume_fits(ckpt_path, model)
    # FLOP/s, and MFU against the GPU's peak, are logged from this.
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_batch = cfg.data.batch_size * cfg.data.block_size
    flops_per_batch = tokens_per_batch * flops_per_token(n_params, cfg.model.n_layer,
                                                         cfg.model.n_embd, cfg.data.block_size)
    callbacks = build_callbacks(cfg, datamodule, out, flops_per_batch)  # probe files etc.
    files: list[Path] = []
    if rank_zero_only.rank == 0:  # the input is good: from here the folder is this run's
        if ckpt_path is None:
            set_aside_checkpoints(out)
        files = job_files() if job_files is not None else []
    loggers = build_loggers(cfg.logger, out, to_dict(cfg), files=files,
                            resume=ckpt_path is not None)
    for logger in loggers:  # the bar the loss must clear: a unigram model's loss
        logger.log_metrics({"data/unigram_entropy": datamodule.unigram_entropy()}, step=0)
    trainer = build_trainer(cfg, out, loggers, callbacks)
    try:
        # Resuming never unpickles arbitrary objects: checkpoints hold tensors and plain data.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException:
        try:  # the run's own error is the one to report, not a logger's on the way out
            finish_loggers(loggers, exit_code=1)
        except Exception as err:
            log.warning("closing the loggers failed too (%s: %s)", type(err).__name__, err)
        raise
    if trainer.is_global_zero:
        save_emergence(loggers, out)
    finish_loggers(loggers)
    val_loss = trainer.callback_metrics.get("val/loss")
    return float(val_loss) if val_loss is not None else None
