"""One training run from a `Config`: data -> model -> callbacks -> Trainer -> fit.
Hydra-free, so notebooks and other launchers can call `run(cfg)` too; what is checked
before the run changes its folder lives in `training/preflight.py`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, Strategy

from normx_track.record.checkpoint_loader import first_line
from normx_track.record.checkpoint_writer import AtomicCheckpointIO
from normx_track.training import preflight
from normx_track.training.config import Config, ConfigError, TrainerConfig, is_masked, to_dict
from normx_track.training.data.datamodule import TextDataModule
from normx_track.training.loggers import build_loggers, finish_loggers
from normx_track.training.model import LanguageModel, flops_per_token
from normx_track.training.monitors import LogStepThroughput, LossProgressBar

log = logging.getLogger(__name__)
_THROUGHPUT_WINDOW_STEPS = 100  # rates over about the last 100 steps, as ThroughputMonitor's


def uses_cuda(t: TrainerConfig) -> bool:
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto"
                                                 and torch.cuda.is_available())


def build_datamodule(cfg: Config, on_gpu: bool) -> TextDataModule:
    """The tokenised corpus, prepared and split (a BERT/RoBERTa masked LM: its special
    tokens, masked batches)."""
    masked = is_masked(cfg.model.arch)
    datamodule = TextDataModule(cfg.data, seed=cfg.seed, on_gpu=on_gpu,
                                specials=cfg.model.arch if masked else None)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def build_model(cfg: Config, datamodule: TextDataModule) -> LanguageModel:
    masked = is_masked(cfg.model.arch)
    tokenizer = datamodule.tokenizer
    return LanguageModel.from_configs(cfg.model, cfg.optim, datamodule.vocab_size,
                                      datamodule.eos_token_id, cfg.trainer.max_steps,
                                      compile_model=cfg.trainer.compile,
                                      loss_chunk_tokens=cfg.trainer.loss_chunk_tokens,
                                      pad_token_id=tokenizer.pad_token_id if masked else None,
                                      bos_token_id=tokenizer.cls_token_id if masked else None)


def batch_flops(cfg: Config, model: LanguageModel) -> float:
    """FLOP/s, and MFU against the GPU's peak, are logged from this."""
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_batch = cfg.data.batch_size * cfg.data.block_size
    return tokens_per_batch * flops_per_token(n_params, cfg.model.n_layer, cfg.model.n_embd,
                                              cfg.data.block_size)


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


def build_strategy(t: TrainerConfig) -> str | Strategy:
    if t.strategy != "fsdp":
        return t.strategy
    # Original parameters (names, weight-decay groups) survive wrapping with use_orig_params.
    if t.accelerator == "cpu":
        from normx_track.training.strategies import CPUFSDPStrategy
        return CPUFSDPStrategy(use_orig_params=True)
    return FSDPStrategy(use_orig_params=True)


def build_trainer(cfg: Config, out: Path, loggers, callbacks) -> L.Trainer:
    """The Trainer; settings Lightning refuses (an accelerator this host lacks, a strategy
    that does not fit) stop here, in one line naming the trainer keys."""
    t = cfg.trainer
    try:
        return _trainer(cfg, out, loggers, callbacks)
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        raise ConfigError(f"trainer.accelerator={t.accelerator}, trainer.devices={t.devices}, "
                          f"trainer.strategy={t.strategy}, trainer.precision={t.precision}: "
                          f"Lightning cannot start with these ({first_line(err)})") from None


def _trainer(cfg: Config, out: Path, loggers, callbacks) -> L.Trainer:
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


def fit(trainer: L.Trainer, model: LanguageModel, datamodule: TextDataModule,
        ckpt_path: str | None, loggers: list) -> None:
    try:
        # Resuming never unpickles arbitrary objects: checkpoints hold tensors and plain data.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException:
        try:  # the run's own error is the one to report, not a logger's on the way out
            finish_loggers(loggers, exit_code=1)
        except Exception as err:
            log.warning("closing the loggers failed too (%s: %s)", type(err).__name__, err)
        raise


AfterFit = Callable[[list, Path], None]


def run(cfg: Config, on_start: Callable[[], list[Path]] | None = None,
        after_fit: AfterFit | None = None) -> float | None:
    """Train; returns the final validation loss (what a Hydra sweeper would minimise).

    The run folder is locked (`RecordLock`) for the whole call. Everything that can fail at
    start-up (data, model, optimizer, tracker and probes, accelerator and strategy) is built
    before the folder changes (`training/preflight.py`); then, on rank zero, an earlier
    run's files are set aside and `on_start()` is called: the folder is this run's from here
    (train.py's launcher moves a replaced run's Hydra files aside then, and returns its
    config files to upload with the W&B run). `after_fit(loggers, out)` runs on global rank
    zero after training (train.py saves the emergence summary)."""
    out = Path(cfg.output_dir)
    with preflight.held_run_folder(out):
        return _run(cfg, out, on_start, after_fit)


def _run(cfg: Config, out: Path, on_start, after_fit: AfterFit | None) -> float | None:
    ckpt_path = preflight.resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    on_gpu = uses_cuda(cfg.trainer)
    if on_gpu:  # TF32 matmuls where fp32 remains (bf16-mixed keeps some)
        torch.set_float32_matmul_precision("high")
    datamodule = build_datamodule(cfg, on_gpu)
    model = build_model(cfg, datamodule)
    preflight.check_model(model, ckpt_path)
    callbacks = build_callbacks(cfg, datamodule, out, batch_flops(cfg, model))
    trainer = build_trainer(cfg, out, [], callbacks)
    files = preflight.take_folder(out, fresh=ckpt_path is None, on_start=on_start)
    loggers = build_loggers(cfg.logger, out, to_dict(cfg), files=files,
                            resume=ckpt_path is not None)
    trainer.loggers = loggers
    for logger in loggers:  # the bar the loss must clear: a unigram model's loss
        logger.log_metrics({"data/unigram_entropy": datamodule.unigram_entropy()}, step=0)
    fit(trainer, model, datamodule, ckpt_path, loggers)
    if trainer.is_global_zero and after_fit is not None:
        after_fit(loggers, out)
    finish_loggers(loggers)
    val_loss = trainer.callback_metrics.get("val/loss")
    return float(val_loss) if val_loss is not None else None
