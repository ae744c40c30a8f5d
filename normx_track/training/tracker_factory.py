"""Build the `NormTracker` for our own training runs from a `Config` and the DataModule:
gold statistics (cached by a hash of tokenizer, data and settings), function-word labels,
user lexicons and probes. Users of other scripts construct `NormTracker` directly."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from normx_track.tracker.from_corpus import PROBES_BY_OBJECTIVE
from normx_track.tracker.lightning import NormTracker
from normx_track.attribution.mixing import UnsupportedModel, method_class
from normx_track.training.config import Config, ConfigError, TrackerConfig, is_masked, to_dict
from normx_track.training.data.datamodule import TextDataModule
from normx_track.text import surface_forms
from normx_track.gold.statistics import (GoldStatistics, cache_key, compute_gold, load_lexicon,
                                         without_specials)
from normx_track.gold.word_labels import label_function_words
from normx_track.probes.blimp import is_blimp_spec, load_blimp
from normx_track.probes.function_words import resolve_function_words

log = logging.getLogger(__name__)


def cached_gold(datamodule: TextDataModule, cfg: Config) -> GoldStatistics:
    t = cfg.tracker
    tokens = "all" if t.stats_tokens is None else t.stats_tokens  # the real value: 0 is not "all"
    key = cache_key(datamodule.dir.name, tokens, t.window, int(t.shuffle_correction), cfg.seed)
    path = datamodule.dir / f"gold_{key[:16]}.npz"
    if path.exists():
        return GoldStatistics.load(path, vocab_size=datamodule.vocab_size)
    gold = compute_gold(datamodule.statistics_documents(t.stats_tokens), datamodule.vocab_size,
                        window=t.window, shuffle_correction=t.shuffle_correction, seed=cfg.seed)
    gold.save(path)
    return gold


def function_word_signal(datamodule: TextDataModule, gold: GoldStatistics, t: TrackerConfig,
                         function_words: set[str]) -> np.ndarray:
    """Function-word labels on whole words, read off the gold statistics stream."""
    tokenizer = datamodule.tokenizer
    labelled = label_function_words(surface_forms(tokenizer), function_words,
                                    datamodule.statistics_documents(t.stats_tokens),
                                    tokens=datamodule.vocab(),
                                    special_ids=tokenizer.all_special_ids)
    log.info("function-word labels of the types seen >= %d times: %s", t.min_count,
             labelled.summary(gold.counts, t.min_count))
    return labelled.labels


def lexicon_signals(paths: list[str], datamodule: TextDataModule) -> dict[str, np.ndarray]:
    def encode(text: str) -> list[int]:
        return datamodule.tokenizer.encode(text, add_special_tokens=False)

    signals = {}
    for path in paths:
        scores, stats = load_lexicon(path, encode, datamodule.vocab_size)
        skipped = stats["n_lines"] - stats["n_mapped"]
        (log.warning if skipped else log.info)("lexicon %s: %s", path, stats)
        signals[f"lexicon/{Path(path).stem}"] = scores
    return signals


def layout_model(arch: str) -> torch.nn.Module:
    """A tiny model of architecture ``arch`` (an HF model type) on the meta device: its
    module layout, no weights, for checking that the layer-wise methods can read it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    sizes = dict(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                 intermediate_size=16, vocab_size=16, bos_token_id=0, eos_token_id=0,
                 pad_token_id=0)
    config = AutoConfig.for_model(arch, **sizes)
    auto = AutoModelForMaskedLM if is_masked(arch) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def check_layerwise_methods(methods, arch: str) -> None:
    """`ConfigError` in one line naming the method and the architecture when one of the
    context-mixing ``methods`` cannot read ``arch``'s layout (at start-up)."""
    if not methods:
        return
    model = layout_model(arch)
    for method in methods:
        try:
            method_class(method)(model)
        except UnsupportedModel as err:
            raise ConfigError(f"tracker.layerwise_methods: {err} (model.arch={arch})") from None


def build_probes(t: TrackerConfig, seed: int, tokenizer, probe_file: str | Path | None,
                 held_out: np.ndarray, max_length: int | None = None,
                 masked: bool = False, arch: str | None = None) -> list:
    """The probes `t` asks for: evidence on `t.probe_file` (a file or a BLiMP spec; else
    the corpus's own `probe_file`), faithfulness on `held_out` tokens. ``max_length``:
    the model's context size. ``masked``: a masked LM's probes (PROBES_BY_OBJECTIVE).
    ``t.layerwise_methods`` go to the evidence probe of either objective; ``arch`` (the
    model's type): refuse now a method that cannot read it (`check_layerwise_methods`)."""
    evidence, faithfulness = PROBES_BY_OBJECTIVE["masked" if masked else "causal"]
    probes: list = []
    probe_file = t.probe_file or probe_file
    if t.evidence and probe_file:
        if arch is not None:
            check_layerwise_methods(t.layerwise_methods, arch)
        pairs = load_blimp(probe_file) if is_blimp_spec(probe_file) else probe_file
        # null: every pair (0 meant that in records written before 0 was refused)
        probes.append(evidence(pairs, tokenizer, seed=seed, max_pairs=t.max_probe_pairs or None,
                               max_length=max_length,
                               layers="all" if t.evidence_by_layer else "last",
                               leading_space=t.probe_leading_space,
                               layerwise=list(t.layerwise_methods)))
    elif t.evidence:
        log.info("no probe file (tracker.probe_file): evidence alignment is not measured")
    if t.faithfulness_examples:
        probes.append(faithfulness([np.asarray(held_out)], tokenizer,
                                   n_examples=t.faithfulness_examples,
                                   length=t.faithfulness_length, captum=t.captum, seed=seed,
                                   fractions=t.faithfulness_fractions, ig_steps=t.ig_steps,
                                   gradient_reduction=t.gradient_reduction))
    return probes


def probes_for_record(meta: dict) -> list:
    """The same probes a recorded run used (for replay), from its meta.json."""
    if "data_dir" not in meta or "tracker" not in meta.get("config", {}):
        return []
    data_dir = Path(meta["data_dir"])
    if not (data_dir / "tokenizer").is_dir():
        raise FileNotFoundError(f"{data_dir / 'tokenizer'}: the run's tokenizer (for its probes) "
                                "is not there; run from the folder the run was started in, "
                                "or rebuild its data cache")
    # Records from before probe_leading_space encoded probe text as written.
    tracker = TrackerConfig(**{"probe_leading_space": False, **meta["config"]["tracker"]})
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    synthetic = data_dir / "synthetic" / "probes.jsonl"
    held_out = np.memmap(data_dir / "val.bin", dtype=np.int32, mode="r")
    model = meta["config"]["model"]
    return build_probes(tracker, meta["config"]["seed"], tokenizer,
                        synthetic if synthetic.exists() else None, held_out,
                        model["n_positions"], is_masked(model.get("arch", "gpt2")),
                        model.get("arch", "gpt2"))


def tracker_arguments(cfg: Config, datamodule: TextDataModule, out_dir: Path) -> dict:
    """The core `Tracker`'s arguments for a run of ours: gold with function-word labels,
    lexicons, probes and the schedule (examples/ build any front end from these)."""
    t = cfg.tracker
    gold = cached_gold(datamodule, cfg)
    if is_masked(cfg.model.arch):  # [SEP] ends every document: no word of the language
        gold = without_specials(gold, datamodule.tokenizer.all_special_ids)
    function_words = resolve_function_words(t.function_words, datamodule.function_words())
    if function_words:
        gold.function_word = function_word_signal(datamodule, gold, t, function_words)
    return dict(gold=gold, vocab=datamodule.vocab(), out_dir=out_dir,
                every_n_steps=t.every_n_steps, log_spaced=t.log_spaced, min_count=t.min_count,
                signals=lexicon_signals(t.lexicons, datamodule),
                probes=build_probes(t, cfg.seed, datamodule.tokenizer, datamodule.probe_file,
                                    datamodule.val_set.tokens, cfg.model.n_positions,
                                    is_masked(cfg.model.arch), cfg.model.arch),
                stop_on_nonfinite=t.stop_on_nonfinite, top_k_tokens=t.top_k_tokens,
                meta={"config": to_dict(cfg), "data_dir": str(datamodule.dir.resolve())})


def build_tracker(cfg: Config, datamodule: TextDataModule, out_dir: Path) -> NormTracker:
    t = cfg.tracker
    return NormTracker(**tracker_arguments(cfg, datamodule, out_dir),
                       on_checkpoint=t.on_checkpoint, on_train_end=t.on_train_end)
