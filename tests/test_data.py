"""Tokenizer training, local files through HF datasets, packing and caching."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

from normx_track.training.config import DataConfig, SyntheticDataConfig
from normx_track.training.data.datamodule import TextDataModule, loader_workers
from normx_track.training.data.sources import DataSourceError, load_local_files, load_texts
from normx_track.training.data.tokenizer import get_tokenizer, train_bpe

TEXTS = ["the cat sat on the mat .", "a dog ran after the cat !", "numbers 12345 and ünïcödé 🙂"]


def test_bpe_round_trips_text(tmp_path):
    tokenizer = train_bpe(TEXTS * 50, vocab_size=300, directory=tmp_path / "bpe")
    for text in TEXTS + ["unseen wörds, tabs\tand\nnewlines"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert (tmp_path / "bpe" / "tokenizer.json").exists()
    again = get_tokenizer("bpe", [], 300, tmp_path / "bpe")  # reused, not retrained on []
    assert again.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])


def test_unavailable_pretrained_tokenizer_falls_back_to_bpe(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = get_tokenizer(str(tmp_path / "no_such_tokenizer"), TEXTS * 20, 280, tmp_path / "bpe")
    assert tokenizer.decode(tokenizer.encode(TEXTS[0])) == TEXTS[0]


def test_local_text_jsonl_and_parquet_files_load_through_datasets(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first document\n\nsecond document\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    assert load_texts(DataConfig(source="files", files=[str(txt)])) == ["first document",
                                                                        "second document"]
    assert load_texts(DataConfig(source="files", files=[str(jsonl)])) == TEXTS
    parquet = tmp_path / "c.parquet"
    load_local_files([str(jsonl)]).to_parquet(parquet)
    assert load_texts(DataConfig(source="files", files=[str(parquet)], max_documents=2)) == TEXTS[:2]


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DataSourceError, match="no such file: .*missing.txt"):
        load_texts(DataConfig(source="files", files=[str(tmp_path / "missing.txt")]))
    bad = tmp_path / "x.jsonl"
    bad.write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(DataSourceError, match=r"x.jsonl: rows have no field 'text'"):
        load_texts(DataConfig(source="files", files=[str(bad)]))


def small_synthetic(tmp_path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), vocab_size=400, block_size=16,
                      batch_size=4, synthetic=SyntheticDataConfig(
                          n_documents=120, n_topics=2, content_words_per_topic=12, n_probes=5),
                      **kw)


def test_datamodule_packs_blocks_and_is_deterministic(tmp_path):
    dm = TextDataModule(small_synthetic(tmp_path), seed=3)
    dm.prepare_data()
    dm.setup()
    stream = np.fromfile(dm.dir / "train.bin", dtype=np.int32)
    assert len(dm.train_set) == len(stream) // 16
    np.testing.assert_array_equal(dm.train_set[2]["input_ids"].numpy(), stream[32:48])
    docs = dm.statistics_documents()
    assert sum(map(len, docs)) == len(stream)
    assert all(d[-1] == dm.eos_token_id for d in docs)  # EOS closes every document
    assert sum(map(len, dm.statistics_documents(max_tokens=100))) == 100
    assert dm.probe_file is not None and "the" in dm.function_words()
    text = dm.tokenizer.decode(docs[0][:-1])
    assert text.split()[-1] == "."
    # Same seed, fresh cache: identical tokens; another seed: another split.
    twin = TextDataModule(small_synthetic(tmp_path / "twin"), seed=3)
    twin.prepare_data()
    assert (twin.dir / "train.bin").read_bytes() == (dm.dir / "train.bin").read_bytes()
    other = TextDataModule(small_synthetic(tmp_path), seed=4)
    other.prepare_data()
    assert (other.dir / "train.bin").read_bytes() != (dm.dir / "train.bin").read_bytes()


def test_loader_workers_deliver_the_same_batches(tmp_path):
    plain = TextDataModule(small_synthetic(tmp_path), seed=0)
    workers = TextDataModule(small_synthetic(tmp_path, num_workers=2), seed=0)
    for dm in (plain, workers):
        dm.setup()
    assert (plain.num_workers, workers.num_workers) == (0, 2)
    loader = workers.train_dataloader()
    assert loader.persistent_workers
    # The sampler runs on past an epoch (its end restarts a shuffled pass): 200 batches span
    # the first 133-batch epoch and the start of the next.
    pairs = zip(itertools.islice(loader, 200), itertools.islice(plain.train_dataloader(), 200))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in pairs)


def test_loader_workers_default_to_none_on_cpu_and_up_to_four_a_gpu(monkeypatch):
    assert loader_workers(None, on_gpu=False) == 0
    assert loader_workers(3, on_gpu=False) == 3 and loader_workers(0, on_gpu=True) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loader_workers(None, on_gpu=True) == 4  # 8 CPUs a GPU, one for the trainer
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert loader_workers(None, on_gpu=True) == 1  # 2 CPUs a GPU


def test_interrupted_preparation_is_redone(tmp_path):
    dm = TextDataModule(small_synthetic(tmp_path), seed=0)
    dm.dir.mkdir(parents=True)
    (dm.dir / "train.bin").write_bytes(b"half")  # a crash before info.json was written
    dm.setup()
    assert (dm.dir / "info.json").exists() and len(dm.train_set) > 0


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_loader_reads_a_local_dataset_directory(tmp_path, streaming):
    """The hub path (`data.source=hub`) runs the real `datasets.load_dataset(name, ...)`;
    a local folder stands in for a hub name so no network is needed."""
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"story": t}) for t in TEXTS))
    cfg = DataConfig(source="hub", name=str(folder), split="train", text_field="story",
                     streaming=streaming, max_documents=2)
    assert load_texts(cfg) == TEXTS[:2]
    missing = DataConfig(source="hub", name=str(tmp_path / "nope"), split="train")
    with pytest.raises(DataSourceError, match="nope"):
        load_texts(missing)
