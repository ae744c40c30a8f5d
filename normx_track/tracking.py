"""Build the `NormTracker` for our own training runs from a `Config` and the DataModule:
gold statistics (cached by a hash of tokenizer, data and settings), function-word labels,
user lexicons. Users of other scripts construct `NormTracker` directly."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .callback import NormTracker
from .config import Config, to_dict
from .data.datamodule import TextDataModule
from .gold import GoldStatistics, cache_key, compute_gold, function_word_labels, load_lexicon

log = logging.getLogger(__name__)


def cached_gold(datamodule: TextDataModule, cfg: Config) -> GoldStatistics:
    t = cfg.tracker
    key = cache_key(datamodule.dir.name, t.stats_tokens or -1, t.window,
                    int(t.shuffle_correction), cfg.seed)
    path = datamodule.dir / f"gold_{key[:16]}.npz"
    if path.exists():
        return GoldStatistics.load(path, vocab_size=datamodule.vocab_size)
    gold = compute_gold(datamodule.statistics_documents(t.stats_tokens), datamodule.vocab_size,
                        window=t.window, shuffle_correction=t.shuffle_correction, seed=cfg.seed)
    gold.save(path)
    return gold


def lexicon_signals(paths: list[str], datamodule: TextDataModule) -> dict[str, np.ndarray]:
    signals = {}
    for path in paths:
        encode = lambda text: datamodule.tokenizer.encode(text, add_special_tokens=False)
        scores, stats = load_lexicon(path, encode, datamodule.vocab_size)
        log.info("lexicon %s: %s", path, stats)
        signals[f"lexicon/{Path(path).stem}"] = scores
    return signals


def build_tracker(cfg: Config, datamodule: TextDataModule, out_dir: Path) -> NormTracker:
    t = cfg.tracker
    gold = cached_gold(datamodule, cfg)
    vocab = datamodule.vocab()
    function_words = datamodule.function_words()
    if function_words:
        gold.function_word = function_word_labels(vocab, function_words)
    return NormTracker(gold, vocab, out_dir=out_dir, every_n_steps=t.every_n_steps,
                       log_spaced=t.log_spaced, on_checkpoint=t.on_checkpoint,
                       on_train_end=t.on_train_end, min_count=t.min_count,
                       signals=lexicon_signals(t.lexicons, datamodule),
                       stop_on_nonfinite=t.stop_on_nonfinite, top_k_tokens=t.top_k_tokens,
                       meta=to_dict(cfg))
