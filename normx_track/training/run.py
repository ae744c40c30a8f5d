"""One training run from a `Config`: data, model, loggers, tracker, checkpoints, Trainer.
Hydra-free, so notebooks and other launchers can call `run(cfg)` too."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only

from lightning.fabric.utilities.exceptions import MisconfigurationException

from normx_track.record.checkpoint_writer import AtomicCheckpointIO
from normx_track.record.checkpoint_loader import (CheckpointError, first_line,
                                                  read_lightning_checkpoint)
from normx_track.record.store import RecordLock, check_run_folder, set_aside
from normx_track.training.config import Config, ConfigError, TrainerConfig, is_masked, to_dict
from normx_track.training.data.datamodule import TextDataModule
from normx_track.training.loggers import build_loggers, finish_loggers
from normx_track.training.model import LanguageModel, flops_per_token
from normx_track.training.monitors import LogStepThroughput, LossProgressBar

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
    read_lightning_checkpoint(path, mmap=True)  # weights_only; tensors stay on disk
    return str(path)


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


def claim_folder(out: Path) -> None:
    """A fresh run in a used folder sets the earlier run's checkpoints, record and figures
    aside (`<name>.replaced-<time>`): `ckpt_path=last` must never find the other run's
    checkpoint, nor analysis mix the two. Called once everything that can fail at start-up
    is built, so a run that cannot start moves nothing."""
    for name in ("checkpoints", "normx", "figures"):
        moved = set_aside(out, name)
        if moved is not None:
            log.warning("%s held another run's %s; moved them to %s", out, name, moved)


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


AfterFit = Callable[[list, Path], None]


def run(cfg: Config, on_start: Callable[[], list[Path]] | None = None,
        after_fit: AfterFit | None = None) -> float | None:
    """Train; returns the final validation loss (what a Hydra sweeper would minimise).

    The run folder is locked (`RecordLock`) for the whole call. Everything that can fail at
    start-up (data, model, optimizer, tracker and probes, accelerator and strategy) is built
    before the folder changes; then, on rank zero, an earlier run's files are set aside and
    `on_start()` is called: the folder is this run's from here (`train.py` moves a replaced
    run's Hydra files aside then, and returns its config files to upload with the W&B run).
    `after_fit(loggers, out)` runs on global rank zero after training (train.py saves the
    emergence summary)."""
    out = Path(cfg.output_dir)
    check_run_folder(out)
    lock = RecordLock.acquire(out) if rank_zero_only.rank == 0 else None
    try:
        return _run(cfg, out, on_start, after_fit)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config, out: Path, on_start, after_fit: AfterFit | None) -> float | None:
    ckpt_path = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    on_gpu = uses_cuda(cfg.trainer)
    if on_gpu:  # TF32 matmuls where fp32 remains (bf16-mixed keeps some)
        torch.set_float32_matmul_precision("high")
    masked = is_masked(cfg.model.arch)  # a BERT/RoBERTa masked LM: its tokens, masked batches
    datamodule = TextDataModule(cfg.data, seed=cfg.seed, on_gpu=on_gpu,
                                specials=cfg.model.arch if masked else None)
    datamodule.prepare_data()
    datamodule.setup()
    tokenizer = datamodule.tokenizer
    model = LanguageModel.from_configs(cfg.model, cfg.optim, datamodule.vocab_size,
                                       datamodule.eos_token_id, cfg.trainer.max_steps,
                                       compile_model=cfg.trainer.compile,
                                       loss_chunk_tokens=cfg.trainer.loss_chunk_tokens,
                                       pad_token_id=tokenizer.pad_token_id if masked else None,
                                       bos_token_id=tokenizer.cls_token_id if masked else None)
    if ckpt_path is not None:
        check_resume_fits(ckpt_path, model)
    check_optimizer(model)
    # FLOP/s, and MFU against the GPU's peak, are logged from this.
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_batch = cfg.data.batch_size * cfg.data.block_size
    flops_per_batch = tokens_per_batch * flops_per_token(n_params, cfg.model.n_layer,
                                                         cfg.model.n_embd, cfg.data.block_size)
    callbacks = build_callbacks(cfg, datamodule, out, flops_per_batch)  # probe files etc.
    trainer = build_trainer(cfg, out, [], callbacks)
    files: list[Path] = []
    if rank_zero_only.rank == 0:  # all is built: from here the folder is this run's
        if ckpt_path is None:
            claim_folder(out)
        files = on_start() if on_start is not None else []
    loggers = build_loggers(cfg.logger, out, to_dict(cfg), files=files,
                            resume=ckpt_path is not None)
    trainer.loggers = loggers
    for logger in loggers:  # the bar the loss must clear: a unigram model's loss
        logger.log_metrics({"data/unigram_entropy": datamodule.unigram_entropy()}, step=0)
    try:
        # Resuming never unpickles arbitrary objects: checkpoints hold tensors and plain data.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException:
        try:  # the run's own error is the one to report, not a logger's on the way out
            finish_loggers(loggers, exit_code=1)
        except Exception as err:
            log.warning("closing the loggers failed too (%s: %s)", type(err).__name__, err)
        raise
    if trainer.is_global_zero and after_fit is not None:
        after_fit(loggers, out)
    finish_loggers(loggers)
    val_loss = trainer.callback_metrics.get("val/loss")
    return float(val_loss) if val_loss is not None else None
