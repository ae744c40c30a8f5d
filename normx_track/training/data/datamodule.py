"""The DataModule: tokenizes documents once into a cached token stream (nanoGPT-style flat
int32 files, EOS between documents), then serves fixed-length blocks.

Cache layout, keyed by everything that changes the tokens (`cache_dir/<key>/`):
`train.bin`, `val.bin` (int32 tokens), `train_doc_lengths.npy`, `tokenizer/`,
`synthetic/` (the embedded corpus and its probes), `info.json` (written last: the marker
that the entry is complete, so a killed preparation is redone, never half-used).
"""
from __future__ import annotations

import hashlib
import json
import os
import itertools
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from normx_track.record.vocabulary import token_strings
from normx_track.training.config import DataConfig
from normx_track.training.data.sources import DataSourceError, load_texts
from normx_track.training.data.synthetic import SyntheticConfig, generate_corpus, write_corpus
from normx_track.training.data.masking import MaskingCollator
from normx_track.training.data.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


class BlockDataset(Dataset):
    """Non-overlapping blocks of `block_size` tokens from a flat token file. ``wrap`` (a
    masked LM's (cls, sep) ids): each block is cls + `block_size` - 2 stream tokens + sep,
    and carries the index it was asked for (the masking collator seeds from it; an index
    past the end is the block index + epoch * len)."""

    def __init__(self, path: Path, block_size: int, split: str = "training",
                 wrap: tuple[int, int] | None = None):
        n_tokens = path.stat().st_size // np.dtype(np.int32).itemsize
        self.wrap = wrap
        per_block = block_size - 2 if wrap is not None else block_size  # stream tokens
        if n_tokens < per_block:  # (numpy cannot even map an empty file)
            raise DataSourceError(
                f"the {split} split holds {n_tokens} tokens, fewer than one block "
                f"(data.block_size={block_size}); give more documents"
                + (" or a larger data.val_fraction" if split == "validation" else "")
                + " or use smaller blocks")
        self.tokens = np.memmap(path, dtype=np.int32, mode="r")
        self.block_size = per_block

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index, i = i, i % len(self)  # (a masked LM's sampler adds epoch * len to the index)
        start = i * self.block_size
        block = np.asarray(self.tokens[start:start + self.block_size], dtype=np.int64)
        if self.wrap is None:
            return {"input_ids": torch.from_numpy(block)}
        cls, sep = self.wrap
        return {"input_ids": torch.from_numpy(np.concatenate([[cls], block, [sep]])),
                "index": index}


class ResumableBatchSampler(Sampler[list[int]]):
    """An endless stream of shuffled batches where global batch b is a pure function of
    (seed, b): epoch b // per_epoch uses its own seeded permutation. Resuming at batch b
    therefore replays exactly what an uninterrupted run would have seen. Under DDP a global
    batch holds `batch_size * world_size` items and each rank takes its slice, so N ranks
    see the same data per step as one process with an N times larger batch."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_in_index: bool = False):
        self.global_size = batch_size * world_size
        self.per_epoch = n_items // self.global_size
        if self.per_epoch < 1:
            raise ValueError(f"{n_items} training blocks make no full batch of "
                             f"{self.global_size} (data.batch_size x devices); use more data "
                             "or a smaller batch")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.rank = start, rank
        # Indices epoch * n_items + item: a masked LM's blocks are masked anew each epoch.
        self.epoch_in_index = epoch_in_index
        self._epoch, self._permutation = -1, np.arange(0)  # the last epoch's order, kept

    def batch(self, b: int) -> list[int]:
        epoch, i = divmod(b, self.per_epoch)
        start = i * self.global_size + self.rank * self.batch_size
        order = self._order(epoch)[start:start + self.batch_size]
        return (order + epoch * self.n_items if self.epoch_in_index else order).tolist()

    def _order(self, epoch: int) -> np.ndarray:
        # One permutation an epoch, kept: drawing it for every batch costs a pass over all
        # blocks (milliseconds a step on a large corpus) on the process that feeds the GPU.
        if epoch != self._epoch:
            self._epoch = epoch
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return self._permutation

    def __iter__(self) -> Iterator[list[int]]:
        return map(self.batch, itertools.count(self.start))


def data_cache_key(cfg: DataConfig, seed: int, specials: str | None = None) -> str:
    # Masking settings change batches, not the token stream: not in the key.
    parts = {k: v for k, v in asdict(cfg).items()
             if k not in ("block_size", "batch_size", "num_workers", "cache_dir", "streaming",
                          "mlm_probability", "whole_word_mask")}
    parts["seed"] = seed
    if specials is not None:  # a masked LM's tokenizer (causal runs keep their keys)
        parts["specials"] = specials
    parts["files"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in cfg.files
                      if os.path.exists(f)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def loader_workers(configured: int | None, on_gpu: bool) -> int:
    """Loader processes: as configured; else none on CPU (a batch is a slice of a memory-
    mapped file, and the cores are busy training) and, on a GPU, up to 4 for each of this
    node's GPUs from the CPUs this process may use, so batches are ready when a step ends."""
    if configured is not None:
        return configured
    if not on_gpu:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cpus or 1) // max(1, torch.cuda.device_count()) - 1))


class TextDataModule(L.LightningDataModule):
    """``specials``: None for a causal LM; "bert" / "roberta" for a masked LM (its special
    tokens in the trained tokenizer, blocks wrapped in them, batches masked)."""

    def __init__(self, cfg: DataConfig, seed: int = 0, on_gpu: bool = False,
                 specials: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.specials = specials
        self.pin_memory = on_gpu  # page-locked batches: faster, asynchronous copies to a GPU
        self.num_workers = loader_workers(cfg.num_workers, on_gpu)
        self.dir = Path(cfg.cache_dir) / data_cache_key(cfg, seed, specials)
        self.tokenizer = None
        self.batches_consumed = 0  # global batches; restored on resume so none is replayed

    # -- preparation (idempotent, safe to run from several processes) --------------------
    def prepare_data(self) -> None:
        if (self.dir / "info.json").exists():
            return
        tmp = self.dir.with_name(self.dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
            raise
        if (self.dir / "info.json").exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)  # a half-built entry from a crash
            os.replace(tmp, self.dir)

    def _build(self, out: Path) -> None:
        synthetic_files = None
        if self.cfg.source == "synthetic":
            syn = SyntheticConfig(**asdict(self.cfg.synthetic), seed=self.seed)
            synthetic_files = write_corpus(generate_corpus(syn), out / "synthetic")
        texts = load_texts(self.cfg, synthetic_files)
        if len(texts) < 2:
            raise DataSourceError(
                f"{', '.join(self.cfg.files) or self.cfg.source}: {len(texts)} document, but "
                "training and validation need one each at least (a .txt file is one document "
                "a line; data.val_fraction of them validate)")
        order = np.random.default_rng(self.seed).permutation(len(texts))
        n_val = max(1, int(len(texts) * self.cfg.val_fraction)) if len(texts) > 1 else 0
        val_docs, train_docs = order[:n_val], order[n_val:]
        tokenizer = get_tokenizer(self.cfg.tokenizer, (texts[i] for i in train_docs),
                                  self.cfg.vocab_size, out / "tokenizer", self.specials)
        if self.specials and (tokenizer.mask_token_id is None or tokenizer.cls_token_id is None
                              or tokenizer.sep_token_id is None):
            raise DataSourceError(f"data.tokenizer={self.cfg.tokenizer}: a masked LM needs a "
                                  f"tokenizer with mask, cls and sep tokens (data.tokenizer="
                                  f"bpe trains one)")
        if not (out / "tokenizer").exists():
            tokenizer.save_pretrained(out / "tokenizer")
        lengths = self._write_tokens(tokenizer, [texts[i] for i in train_docs], out / "train.bin")
        np.save(out / "train_doc_lengths.npy", lengths)
        self._write_tokens(tokenizer, [texts[i] for i in val_docs], out / "val.bin")
        info = {"n_documents": len(texts), "n_train_documents": len(train_docs),
                "n_train_tokens": int(lengths.sum()), "vocab_size": len(tokenizer),
                "vocab_size_requested": self.cfg.vocab_size,
                "config": asdict(self.cfg), "seed": self.seed}
        (out / "info.json").write_text(json.dumps(info, indent=2))

    @staticmethod
    def _write_tokens(tokenizer, texts: list[str], path: Path) -> np.ndarray:
        """Flat int32 tokens, EOS after each document; returns per-document lengths."""
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        docs = [np.asarray(d + [tokenizer.eos_token_id], dtype=np.int32) for d in ids]
        stream = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int32)
        stream.tofile(path)
        return np.asarray([len(d) for d in docs], dtype=np.int64)

    # -- loading ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        if not (self.dir / "info.json").exists():
            self.prepare_data()
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir / "tokenizer")
        wrap = None
        if self.specials:
            wrap = (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id)
        self.train_set = BlockDataset(self.dir / "train.bin", self.cfg.block_size, wrap=wrap)
        self.val_set = BlockDataset(self.dir / "val.bin", self.cfg.block_size, "validation",
                                    wrap)
        if self.cfg.tokenizer == "bpe" and self.vocab_size > self.cfg.vocab_size:
            log.warning("data.vocab_size=%d is below what a byte-level BPE can have (its 256 "
                        "bytes and the end-of-text token): the tokenizer has %d tokens (both "
                        "numbers are in meta.json: config.data.vocab_size, vocab_size)",
                        self.cfg.vocab_size, self.vocab_size)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def vocab(self) -> list[str]:
        """Token strings by id."""
        return token_strings(self.tokenizer)

    @property
    def probe_file(self) -> Path | None:
        path = self.dir / "synthetic" / "probes.jsonl"
        return path if path.exists() else None

    def function_words(self) -> set[str] | None:
        path = self.dir / "synthetic" / "function_words.txt"
        return set(path.read_text().split()) if path.exists() else None

    def statistics_documents(self, max_tokens: int | None = None) -> list[np.ndarray]:
        """Training documents as token arrays, the first `max_tokens` tokens of the stream
        (the last document cut there); only that prefix is read from disk."""
        tokens = np.memmap(self.dir / "train.bin", dtype=np.int32, mode="r")
        bounds = np.cumsum(np.load(self.dir / "train_doc_lengths.npy"))
        end = len(tokens) if max_tokens is None else min(max_tokens, len(tokens))
        return np.split(np.asarray(tokens[:end]), bounds[bounds < end]) if end else []

    def unigram_entropy(self) -> float:
        """Entropy (nats/token) of the training tokens' unigram distribution."""
        tokens = np.memmap(self.dir / "train.bin", dtype=np.int32, mode="r")
        p = np.bincount(tokens, minlength=self.vocab_size) / len(tokens)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ResumableBatchSampler(len(self.train_set), self.cfg.batch_size, self.seed,
                                        self.batches_consumed, rank, world,
                                        epoch_in_index=self.specials is not None)
        return DataLoader(self.train_set, batch_sampler=sampler,
                          **self._loader_options(self.seed))

    def state_dict(self) -> dict[str, Any]:
        # Called when a checkpoint is saved: every batch so far went into an optimizer step.
        trainer = self.trainer
        return {"batches_consumed": trainer.global_step * trainer.accumulate_grad_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_consumed = int(state_dict["batches_consumed"])

    def val_dataloader(self) -> DataLoader:
        # Sharded by rank as the training batches are (the Trainer injects no sampler):
        # N ranks evaluate the blocks one process does, not N copies of the first ones.
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(self.val_set, num_replicas=trainer.world_size,
                                         rank=trainer.global_rank, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, sampler=sampler,
                          **self._loader_options(self.seed + 1))

    def _loader_options(self, mask_seed: int) -> dict[str, Any]:
        # Persistent workers: validation every few hundred steps does not respawn them.
        options = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                       persistent_workers=self.num_workers > 0)
        if self.specials:  # masked LM: the collator masks (seeded by the blocks' indices)
            options["collate_fn"] = MaskingCollator(self.tokenizer, self.cfg.mlm_probability,
                                                    self.cfg.whole_word_mask, mask_seed)
        return options
