"""The gold command (`python -m normx_track.gold`) and its corpus-scale counting
(`normx_track.gold.corpus`) against `compute_gold` on the same tokens, tokenised here
independently; bad input in one line; memory bounded by the chunk, not the stream."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from normx_track.gold import texts
from normx_track.gold.__main__ import main
from normx_track.gold.corpus import (PROVENANCE_KEYS, corpus_gold, iter_document_chunks,
                                     write_token_file)
from normx_track.gold.cooccurrence import document_chunks
from normx_track.gold.statistics import (GoldStatistics, compute_gold,
                                         read_gold_provenance)
from normx_track.record.store import vocab_hash

ROOT = Path(__file__).resolve().parents[1]

LINES = [
    "The cat sat on the mat and looked at the dog.",
    "A dog ran across the field after the red ball.",
    "She wrote a letter to her brother in the city.",
    "The old house on the hill had a blue door.",
    "Birds sang in the trees while the sun came up.",
    "He bought bread, milk and eggs at the small shop.",
    "The children played in the park until it got dark.",
    "Rain fell on the roof all night long.",
    "My friend told me a story about a ship at sea.",
    "The teacher asked the class to read the first page.",
    "A small boat drifted slowly down the quiet river.",
    "They walked to the station and waited for the train.",
]


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    """n documents: the hand-written sentences joined in a seeded order (1-3 a line)."""
    rng = np.random.default_rng(seed)
    return [" ".join(LINES[i] for i in rng.choice(len(LINES), size=rng.integers(1, 4)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from normx_track.training.data.tokenizer import train_bpe
    directory = tmp_path_factory.mktemp("tok")
    train_bpe(corpus_lines(200, seed=1) * 3, vocab_size=320, directory=directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def docs_text(tmp_path_factory):
    lines = corpus_lines(150)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n\n   \n", encoding="utf-8")  # blank lines skipped
    return path, lines


def reference_docs(tokenizer, lines) -> list[np.ndarray]:
    """Each line tokenised alone, the EOS after it: a run's documents."""
    return [np.array(tokenizer.encode(line, add_special_tokens=False)
                     + [tokenizer.eos_token_id]) for line in lines]


def run_command(args, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_bitwise(gold: GoldStatistics, ref: GoldStatistics) -> None:
    assert gold.names() == ref.names()
    for name in ref.names():
        np.testing.assert_array_equal(getattr(gold, name), getattr(ref, name), err_msg=name)
    assert (gold.window, gold.n_tokens, gold.seed) == (ref.window, ref.n_tokens, ref.seed)


# ------------------------------------------------------------ the command's result
@pytest.mark.parametrize("workers,chunk", [(1, None), (1, 7), (4, 300)])
def test_text_file_equals_compute_gold(tok_dir, tokenizer, docs_text, tmp_path, capsys,
                                       workers, chunk):
    """1 and 4 workers; a chunk of 7 tokens is smaller than every document (each chunk
    is then one document)."""
    path, lines = docs_text
    docs = reference_docs(tokenizer, lines)
    assert chunk != 7 or chunk < min(len(d) for d in docs)
    out = tmp_path / "gold.npz"
    extra = [] if chunk is None else ["--chunk-tokens", chunk]
    rc, err = run_command([tok_dir, path, "--out", out, "--workers", workers, "--quiet",
                           *extra], capsys)
    assert rc == 0, err
    gold = GoldStatistics.load(out, vocab_size=len(tokenizer))
    V = len(tokenizer)
    # bitwise compute_gold's at the same chunk size (see corpus.py: the same chunks)
    assert_bitwise(gold, compute_gold(docs, V, **({} if chunk is None else
                                                  {"chunk_tokens": chunk})))
    # counts from a plain Counter of the same tokens
    counted = Counter(int(t) for d in docs for t in d)
    np.testing.assert_array_equal(gold.counts, [counted.get(i, 0) for i in range(V)])
    n = sum(counted.values())
    np.testing.assert_array_equal(gold.self_information[gold.counts > 0],
                                  -np.log(gold.counts[gold.counts > 0] / n))
    # compute_gold in one chunk sums the log m term in another order: a few ulps
    whole = compute_gold(docs, V)
    np.testing.assert_allclose(gold.information_gain, whole.information_gain, rtol=1e-12)
    assert np.isfinite(gold.information_gain_corrected[gold.counts > 0]).all()


def test_provenance_and_vocab(tok_dir, tokenizer, docs_text, tmp_path, capsys):
    path, lines = docs_text
    out = tmp_path / "sub" / "gold.npz"
    rc, err = run_command([tok_dir, path, "--out", out, "--workers", 1, "--max-tokens", 500,
                           "--window", 3, "--seed", 7], capsys)
    assert rc == 0, err
    assert "tok/s" in err                         # the progress bar ran (stderr)
    vocab = json.loads((out.parent / "vocab.json").read_text())
    assert vocab == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    prov = read_gold_provenance(out)
    assert set(prov) == set(PROVENANCE_KEYS)
    assert prov == {**prov, "tokenizer": str(tok_dir), "vocab_hash": vocab_hash(vocab),
                    "vocab_size": len(tokenizer), "corpus": [str(path)], "n_tokens": 500,
                    "max_tokens": 500, "window": 3, "seed": 7, "shuffle_correction": True,
                    "eos": tokenizer.eos_token_id, "text_field": "text"}
    docs = reference_docs(tokenizer, lines)
    ends = np.cumsum([len(d) for d in docs])
    assert prov["n_documents"] == int(np.searchsorted(ends, 500) + 1)
    gold = GoldStatistics.load(out)
    assert gold.provenance == prov
    assert_bitwise(gold, compute_gold(docs, len(tokenizer), window=3, seed=7, max_tokens=500))


def test_old_gold_files_still_load(tmp_path):
    gold = compute_gold([np.array([1, 2, 3, 1, 2])], 5, shuffle_correction=False)
    gold.save(tmp_path / "old.npz")
    assert read_gold_provenance(tmp_path / "old.npz") is None
    assert GoldStatistics.load(tmp_path / "old.npz").provenance is None
    gold.provenance = {"tokenizer": "x", "n_tokens": 5}
    gold.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz", allow_pickle=False) as z:   # an older reader's way
        assert {"counts", "_meta", "_provenance"} <= set(z.files)
    again = GoldStatistics.load(tmp_path / "new.npz")
    assert again.same_as(gold) and again.provenance == gold.provenance


def test_saved_dataset_and_jsonl_equal_text_file(tok_dir, tokenizer, docs_text, tmp_path,
                                                 capsys):
    """A Dataset.save_to_disk folder, a DatasetDict folder (--split), a jsonl file with
    another field, and an hf: spec naming a local folder (the streaming hub loader)."""
    import datasets
    path, lines = docs_text
    ref = compute_gold(reference_docs(tokenizer, lines), len(tokenizer))
    ds = datasets.Dataset.from_dict({"body": lines, "n": list(range(len(lines)))})
    ds.save_to_disk(tmp_path / "flat")
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds}).save_to_disk(
        tmp_path / "dict")
    (tmp_path / "hub").mkdir()
    jsonl = tmp_path / "hub" / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in lines))
    for spec, extra in [(tmp_path / "flat", ["--text-field", "body"]),
                        (tmp_path / "dict", ["--text-field", "body", "--split", "test"]),
                        (jsonl, ["--text-field", "body"]),
                        (f"hf:{tmp_path / 'hub'}:train:body", [])]:
        out = tmp_path / f"{Path(str(spec)).name}.npz"
        rc, err = run_command([tok_dir, spec, "--out", out, "--workers", 1, "--quiet",
                               *extra], capsys)
        assert rc == 0, (spec, err)
        assert_bitwise(GoldStatistics.load(out), ref)


def test_several_corpora_are_one_stream(tok_dir, tokenizer, docs_text, tmp_path, capsys):
    path, lines = docs_text
    second = tmp_path / "more.txt"
    second.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "gold.npz"
    rc, err = run_command([tok_dir, path, second, "--out", out, "--quiet", "--workers", 1,
                           "--no-shuffle-correction"], capsys)
    assert rc == 0, err
    ref = compute_gold(reference_docs(tokenizer, lines + LINES), len(tokenizer),
                       shuffle_correction=False)
    assert_bitwise(GoldStatistics.load(out), ref)


# ------------------------------------------------------------------- bad input
def test_bad_input_one_line(tok_dir, docs_text, tmp_path, capsys):
    import datasets
    path, _ = docs_text
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    (tmp_path / "binary.txt").write_bytes(b"abc\0\x01\x02")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 3)
    (tmp_path / "rows.jsonl").write_text('{"body": "some text"}\n')
    (tmp_path / "notdir").mkdir()
    (tmp_path / "notes.docx").write_text("text")
    datasets.Dataset.from_dict({"body": ["a b c"]}).save_to_disk(tmp_path / "saved")
    cases = [
        ([tmp_path / "no_such_tokenizer", path], "no_such_tokenizer: no such folder"),
        (["no-such-org-xyz/no-such-tokenizer", path], "could not be loaded"),
        ([tok_dir, tmp_path / "missing.txt"], "missing.txt: no such file"),
        ([tok_dir, tmp_path / "empty.txt"], "empty.txt is empty"),
        ([tok_dir, tmp_path / "blank.txt"], "blank.txt holds only whitespace"),
        ([tok_dir, tmp_path / "binary.txt"], "binary.txt looks binary"),
        ([tok_dir, tmp_path / "latin1.txt"], "latin1.txt is not UTF-8"),
        ([tok_dir, tmp_path / "rows.jsonl"], "no field 'text'"),
        ([tok_dir, tmp_path / "saved"], "no field 'text'"),
        ([tok_dir, tmp_path / "notdir"], "not one written by Dataset.save_to_disk"),
        ([tok_dir, "hf:just-a-name"], "hf:just-a-name: not a hub dataset spec"),
        ([tok_dir, f"hf:{tmp_path / 'nothing_here'}:train"], "could not be read"),
        ([tok_dir, tmp_path / "notes.docx"], "notes.docx: unsupported suffix"),
    ]
    capsys.readouterr()
    for args, expected in cases:
        rc, err = run_command([*args, "--out", tmp_path / "g.npz", "--quiet", "--workers", 1],
                              capsys)
        assert rc == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "g.npz").exists()


def test_help_is_fast_and_a_bad_argument_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "normx_track.gold",
                           "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0 and "--max-tokens" in done.stdout and "hf:NAME" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert not imported & {"transformers", "datasets", "torch"}, "--help imports heavy modules"
    done = subprocess.run([sys.executable, "-m", "normx_track.gold", "tok", "c.txt", "--out",
                           "g.npz", "--window", "0"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--window" in done.stderr, done.stderr


def test_hub_spec_parsing():
    P = texts.parse_hub_spec
    assert P("hf:EleutherAI/pile:train") == texts.HubSpec("EleutherAI/pile", None, "train", None)
    assert P("hf:HuggingFaceFW/fineweb:sample-10BT:train") == \
        texts.HubSpec("HuggingFaceFW/fineweb", "sample-10BT", "train", None)
    assert P("hf:monology/pile-uncopyrighted:train:text") == \
        texts.HubSpec("monology/pile-uncopyrighted", None, "train", "text")
    assert P("hf:wikitext:wikitext-103-raw-v1:validation:page") == \
        texts.HubSpec("wikitext", "wikitext-103-raw-v1", "validation", "page")
    assert P("hf:name::test:body") == texts.HubSpec("name", None, "test", "body")
    for bad in ("hf:", "hf:name", "hf::train", "hf:a:b:c:d:e", "hf:name:train:"):
        with pytest.raises(texts.CorpusError):
            P(bad)


# -------------------------------------------------------------- counting pieces
def zipf_stream(n_tokens: int, vocab_size: int, seed: int = 0, doc_len: int = 60):
    """Documents of a Zipfian stream, made lazily (the caller holds none of them)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab_size) + 2.7)
    p /= p.sum()
    made = 0
    while made < n_tokens:
        size = int(min(rng.integers(1, 2 * doc_len), n_tokens - made))
        made += size
        yield rng.choice(vocab_size, size=size, p=p)


@pytest.mark.parametrize("vocab_size,bucket_pairs,workers", [(300, 50, 1), (70_000, 200, 2)])
def test_corpus_gold_any_buckets_bitwise(vocab_size, bucket_pairs, workers, tmp_path):
    """Many key-range buckets, uint32 tokens and uint64 keys (V > 65535), 2 workers."""
    docs = list(zipf_stream(6000, vocab_size, seed=3))
    ref = compute_gold(docs, vocab_size, chunk_tokens=1000, seed=5)
    gold = corpus_gold(iter(docs), vocab_size, chunk_tokens=1000, bucket_pairs=bucket_pairs,
                       workers=workers, seed=5, tmp_dir=tmp_path)
    assert_bitwise(gold, ref)
    assert gold.provenance == {"n_tokens": 6000, "n_documents": len(docs)}
    assert not any(tmp_path.iterdir())           # temporary files removed


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_shuffling_the_small_dtype_file_is_compute_gold_permutation(dtype, tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 60000, size=10_001).astype(np.int64)
    expected = np.random.default_rng(42).permutation(flat)
    mm = np.memmap(tmp_path / "t.bin", dtype=dtype, mode="w+", shape=flat.shape)
    mm[:] = flat
    np.random.default_rng(42).shuffle(np.asarray(mm))
    np.testing.assert_array_equal(mm, expected)


def test_document_chunks_streamed_equal_compute_golds():
    rng = np.random.default_rng(1)
    for _ in range(30):
        lengths = rng.integers(0, 50, size=rng.integers(1, 3000))
        lengths[rng.random(lengths.size) < 0.01] = 400        # documents over a chunk
        for chunk in (1, 37, 300, 10**6):
            expected = [(d.start, d.stop, t.start, t.stop)
                        for d, t in document_chunks(lengths, chunk)]
            assert list(iter_document_chunks(lengths, chunk)) == expected


def test_memory_is_bounded_by_the_chunk_not_the_stream(tmp_path):
    """Peak traced allocations (numpy reports its buffers to tracemalloc) for a stream of
    1x and 10x the chunk: the chunked command's peak stays put; compute_gold's grows."""
    chunk, V = 20_000, 500

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak(lambda: corpus_gold(zipf_stream(chunk, V), V, chunk_tokens=chunk,
                                     bucket_pairs=chunk, tmp_dir=tmp_path))
    large = peak(lambda: corpus_gold(zipf_stream(10 * chunk, V), V, chunk_tokens=chunk,
                                     bucket_pairs=chunk, tmp_dir=tmp_path))
    whole = peak(lambda: compute_gold(zipf_stream(10 * chunk, V), V, chunk_tokens=chunk))
    assert large < 1.5 * small, (small, large)
    assert large < whole / 3, (large, whole)


def test_token_file_is_the_smallest_dtype_and_cut_at_max_tokens(tmp_path):
    docs = [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4, 5, 6, 7])]
    tf = write_token_file(iter(docs), tmp_path, 65536, max_tokens=5)
    assert tf.dtype == "uint16" and (tf.n_tokens, tf.n_documents) == (5, 2)
    np.testing.assert_array_equal(tf.ids(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(tf.document_lengths(), [3, 2])
    (tmp_path / "wide").mkdir()
    assert write_token_file(iter(docs), tmp_path / "wide", 65537).dtype == "uint32"
    with pytest.raises(ValueError, match="token ids must lie"):
        write_token_file(iter([np.array([0, 9])]), tmp_path, 9)
