"""Plain dataclasses describing a run. `train.py` registers them with Hydra's ConfigStore,
so Hydra validates keys and types; the library itself never imports Hydra.

`validate()` checks values (Hydra checks only names and types) and raises `ConfigError`
naming the offending key, e.g. ``trainer.max_steps must be > 0, got -5``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from normx_track.errors import InputError
from normx_track.keys import CONTEXT_MIXING_METHODS


class ConfigError(InputError):
    """A config value is out of range; the message names the key."""


@dataclass
class ModelConfig:
    arch: str = "gpt2"  # gpt2 | gpt_neox | llama (causal LMs) | bert | roberta (masked LMs)
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_inner: Optional[int] = None  # MLP width; None means 4 * n_embd
    n_positions: int = 128
    dropout: float = 0.0
    tie_word_embeddings: bool = True


MASKED_ARCHS = ("bert", "roberta")  # model.arch values that build a masked LM


def is_masked(arch: str) -> bool:
    return arch in MASKED_ARCHS


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps


@dataclass
class SyntheticDataConfig:
    """The embedded corpus (`data.synthetic`); data/synthetic.py's `SyntheticConfig` adds
    the sentences a document and the seed."""
    n_documents: int = 4000
    n_topics: int = 8
    content_words_per_topic: int = 120  # lemmas (nouns + verbs + adjectives)
    zipf_exponent: float = 1.1
    attractor_probability: float = 0.5
    n_probes: int = 500


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | hub | files
    name: Optional[str] = None  # hub dataset name, e.g. roneneldan/TinyStories
    subset: Optional[str] = None  # hub dataset config name, e.g. wikitext-103-raw-v1
    split: str = "train"
    files: list[str] = field(default_factory=list)  # local .txt/.jsonl/.json/.parquet files
    text_field: str = "text"
    streaming: bool = False
    max_documents: Optional[int] = None
    tokenizer: str = "bpe"  # "bpe" trains a byte-level BPE; otherwise a pretrained name or path
    vocab_size: int = 4096  # for the trained BPE
    block_size: int = 128
    batch_size: int = 16
    val_fraction: float = 0.05
    # Masked LMs (model.arch=bert|roberta): DataCollatorForLanguageModeling's share of the
    # non-special tokens to predict (80 % of them [MASK], 10 % random, 10 % kept), and
    # whole-word masking (every piece of a chosen word; all of them [MASK]).
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    num_workers: Optional[int] = None  # loader processes; null: none on CPU, up to 4 a GPU
    cache_dir: str = ".cache/normx"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | ...
    precision: str = "32-true"
    max_steps: int = 600
    val_check_interval: int = 200
    limit_val_batches: int = 20
    log_every_n_steps: int = 10
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    checkpoint_every_n_steps: int = 200
    deterministic: bool = False
    compile: bool = False  # torch.compile the HF model for training (conf/trainer/gpu.yaml: on)
    # null: HF's loss over all logits at once. N: a causal LM's head and cross-entropy N
    # tokens at a time (torch's linear_cross_entropy): no (tokens x vocabulary) logits in
    # memory (conf/trainer/cpu.yaml: 512). A masked LM's loss is HF's whatever N is.
    loss_chunk_tokens: Optional[int] = None


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | tensorboard | none
    project: str = "normx-track"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    name: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; None: WANDB_MODE, else online if logged in
    # Wait at most this long for W&B uploads when a run ends (0: as long as it takes); what
    # is not uploaded stays in the local W&B run for `wandb sync`.
    finish_timeout_s: float = 300.0


@dataclass
class TrackerConfig:
    enabled: bool = True
    every_n_steps: int = 100
    log_spaced: bool = True  # also snapshot at 1, 2, 4, 8, ... below every_n_steps
    on_checkpoint: bool = True
    on_train_end: bool = True
    # Gold statistics over the first N training tokens (null: the whole stream).
    stats_tokens: Optional[int] = 2_000_000
    window: int = 5
    shuffle_correction: bool = True
    min_count: int = 10
    lexicons: list[str] = field(default_factory=list)  # TSV word<TAB>score files
    stop_on_nonfinite: bool = False
    top_k_tokens: int = 20
    # Probes at each snapshot (normx_track/probes/base.py).
    # Closed-class words for the function_word signal: null = the corpus's own list (the
    # synthetic corpus) else the built-in English one; "english", "none", or a file of words.
    function_words: Optional[str] = None
    # Probes at each snapshot (normx_track/probes/evidence.py, normx_track/probes/faithfulness.py).
    evidence: bool = True  # evidence alignment + minimal-pair accuracy on the probe file
    # A probe file (JSON lines), or BLiMP: "blimp" (agreement paradigms, hub),
    # "blimp:UID+UID", "blimp:FOLDER" or "blimp:FOLDER:UID+UID" (BLiMP's jsonl files; ","
    # separates UIDs too, inside quotes: Hydra reads an unquoted a,b as a sweep).
    # Default: the synthetic corpus's own probes.
    probe_file: Optional[str] = None
    max_probe_pairs: Optional[int] = 100  # per snapshot (null: all); more pairs, steadier curves
    # Probe text as running text: after a space where the tokenizer marks word starts
    # (byte-level BPE, Metaspace), as the training text has it; false: as written
    # (lm-eval 0.3's BLiMP convention; lm-eval >= 0.4 puts the space, as the default).
    probe_leading_space: bool = True
    evidence_by_layer: bool = True
    # Context-mixing methods the evidence probe also ranks layer by layer (row t of each
    # layer's matrix; normx/evidence_{ap,dp}_by_layer/<method>/layer_NN): any of attention,
    # rollout, value_zeroing, alti, globenc. Empty: off. Value Zeroing re-runs every layer
    # once per input position (the costly one).
    layerwise_methods: list[str] = field(default_factory=list)
    faithfulness_examples: int = 0  # held-out windows for comprehensiveness etc. (0: off)
    faithfulness_length: int = 32
    # The k of top-k%: the authors' 0, 0.1, ..., 1.0; ERASER's [0.01,0.05,0.1,0.2,0.5].
    faithfulness_fractions: list[float] = field(
        default_factory=lambda: [k / 10 for k in range(11)])
    captum: bool = False  # add Saliency, InputXGradient, IntegratedGradients (slow)
    ig_steps: int = 50  # IntegratedGradients steps, from an all-zero embedding baseline
    gradient_reduction: str = "l1"  # per position over the embedding dim: l1 | sum (signed)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    output_dir: str = "outputs/run"
    ckpt_path: Optional[str] = None  # a .ckpt to resume from, or "last"


_CHOICES = {
    "model.arch": ("gpt2", "gpt_neox", "llama", "bert", "roberta"),
    "data.source": ("synthetic", "hub", "files"),
    "logger.kind": ("wandb", "csv", "tensorboard", "none"),
    "tracker.gradient_reduction": ("l1", "sum"),
}
_POSITIVE = (
    "model.n_layer", "model.n_embd", "model.n_head", "model.n_positions", "data.vocab_size",
    "data.block_size", "data.batch_size", "data.synthetic.n_documents", "data.synthetic.n_topics",
    "data.synthetic.content_words_per_topic", "trainer.max_steps", "trainer.val_check_interval",
    "trainer.log_every_n_steps", "trainer.accumulate_grad_batches",
    "trainer.checkpoint_every_n_steps", "tracker.every_n_steps", "tracker.window", "optim.lr",
    "tracker.faithfulness_length", "tracker.ig_steps", "data.mlm_probability",
)
_POSITIVE_OR_NULL = {"tracker.stats_tokens": "the whole training stream",
                     "trainer.loss_chunk_tokens": "the loss over all tokens at once",
                     "tracker.max_probe_pairs": "every probe pair"}
_NON_NEGATIVE = ("optim.warmup_steps", "optim.weight_decay", "data.num_workers",
                 "tracker.min_count", "model.dropout", "trainer.gradient_clip_val",
                 "tracker.faithfulness_examples",
                 "logger.finish_timeout_s")
_FRACTIONS = ("data.val_fraction", "optim.min_lr_ratio", "model.dropout", "data.mlm_probability",
              "data.synthetic.attractor_probability")


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


_PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16",
               "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")
_ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


def _devices_ok(devices: Any) -> bool:
    """What Lightning accepts: "auto", an int (-1: all), "N", "-1", or a list of indices."""
    if devices == "auto":
        return True
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices == -1 or devices > 0
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        return bool(parts) and all(p.strip().lstrip("-").isdigit() for p in parts)
    if isinstance(devices, (list, tuple)):
        return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                     for d in devices)
    return False


def _float_fields(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every float in the config tree, with its dotted key."""
    out = []
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            out += _float_fields(value, key + ".")
        elif isinstance(value, float):
            out.append((key, value))
        elif isinstance(value, (list, tuple)):
            out += [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float)]
    return out


def unknown_keys(obj: Any, prefix: str = "") -> list[str]:
    """Attributes of the config's dataclasses that are not their fields: keys a `+key=...`
    override added, which no code reads."""
    if not is_dataclass(obj):
        return []
    names = {f.name for f in fields(obj)}
    extra = [prefix + k for k in vars(obj) if k not in names and not k.startswith("_")]
    for name in sorted(names):
        extra += unknown_keys(getattr(obj, name), f"{prefix}{name}.")
    return extra


def validate(cfg: Config) -> Config:
    """Range checks Hydra cannot express; returns cfg so calls can be chained."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}: nothing reads them (a '+' override "
                          "adds a key; check its spelling)")
    for key, value in _float_fields(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    if not _devices_ok(cfg.trainer.devices):
        raise ConfigError(f"trainer.devices must be 'auto', a positive count, -1 (all) or a "
                          f"list of device indices, got {cfg.trainer.devices!r}")
    if str(cfg.trainer.precision) not in _PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {list(_PRECISIONS)}, got "
                          f"{cfg.trainer.precision!r}")
    if cfg.trainer.accelerator not in _ACCELERATORS:
        raise ConfigError(f"trainer.accelerator must be one of {list(_ACCELERATORS)}, got "
                          f"{cfg.trainer.accelerator!r}")
    for key, null_means in _POSITIVE_OR_NULL.items():
        if _get(cfg, key) is not None and _get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0 (or null: {null_means}), got {_get(cfg, key)}")
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {_get(cfg, key)!r}")
    for key in _POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key} must be > 0, got {_get(cfg, key)}")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) is not None and _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")
    for key in _FRACTIONS:
        if not 0 <= _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {_get(cfg, key)}")
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), "
                          f"got {betas}")
    if is_masked(cfg.model.arch) and cfg.data.block_size < 3:
        raise ConfigError(f"data.block_size must be >= 3 for a masked LM (its blocks are "
                          f"[CLS] ... [SEP]), got {cfg.data.block_size}")
    if cfg.data.whole_word_mask and not is_masked(cfg.model.arch):
        raise ConfigError(f"data.whole_word_mask is for masked LMs (model.arch in "
                          f"{list(MASKED_ARCHS)}); model.arch={cfg.model.arch} is causal: set "
                          "data.whole_word_mask=false")
    if not 0 <= cfg.seed < 2**32:  # numpy's and Lightning's seed range
        raise ConfigError(f"seed must be in [0, 2**32), got {cfg.seed}")
    if cfg.model.n_embd % cfg.model.n_head:
        raise ConfigError(f"model.n_embd ({cfg.model.n_embd}) must be divisible by "
                          f"model.n_head ({cfg.model.n_head})")
    if cfg.data.block_size > cfg.model.n_positions:
        raise ConfigError(f"data.block_size ({cfg.data.block_size}) must be <= "
                          f"model.n_positions ({cfg.model.n_positions})")
    if cfg.trainer.strategy.startswith("fsdp_") and cfg.trainer.accelerator == "cpu":
        raise ConfigError(f"trainer.strategy={cfg.trainer.strategy} needs trainer.accelerator=gpu;"
                          " on CPU use trainer.strategy=fsdp (gloo) or ddp")
    if isinstance(cfg.tracker.layerwise_methods, str):
        raise ConfigError(f"tracker.layerwise_methods must be a list, e.g. [alti,rollout], got "
                          f"{cfg.tracker.layerwise_methods!r}")
    unknown = [m for m in cfg.tracker.layerwise_methods if m not in CONTEXT_MIXING_METHODS]
    if unknown:
        raise ConfigError(f"tracker.layerwise_methods: unknown method(s) {unknown}; the "
                          f"choices are {list(CONTEXT_MIXING_METHODS)}")
    if len(set(cfg.tracker.layerwise_methods)) < len(cfg.tracker.layerwise_methods):
        raise ConfigError(f"tracker.layerwise_methods names a method twice: "
                          f"{list(cfg.tracker.layerwise_methods)}")
    bad = [f for f in cfg.tracker.faithfulness_fractions if not 0 <= f <= 1]
    if bad or not cfg.tracker.faithfulness_fractions:
        raise ConfigError(f"tracker.faithfulness_fractions must be a non-empty list of "
                          f"fractions in [0, 1], got {cfg.tracker.faithfulness_fractions}")
    if cfg.data.source == "hub" and not cfg.data.name:
        raise ConfigError("data.name must name a hub dataset when data.source is 'hub'")
    if cfg.data.source == "files" and not cfg.data.files:
        raise ConfigError("data.files must list at least one file when data.source is 'files'")
    if cfg.data.source != "files" and cfg.data.files:
        raise ConfigError(f"data.files is set but data.source is {cfg.data.source!r}, which "
                          "ignores it: add data=text_files")
    return cfg


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (for W&B and meta.json)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
