"""Function words on real text: the built-in English closed-class list, a user's file for
other languages, and a run on English text files that gets its function-word curve."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from conftest import TINY, run_train
from normx_track.probes.function_words import ENGLISH, FunctionWordsError, resolve_function_words
from normx_track.training.data.tokenizer import surface_forms, train_bpe
from normx_track.gold.statistics import function_word_labels


def test_english_list_holds_each_closed_class_and_no_content_words():
    for word in ("the", "these", "she", "themselves", "of", "between", "and", "because", "is",
                 "could", "not", "n't"):
        assert word in ENGLISH, word
    for word in ("cat", "run", "red", "very", "house", "quickly"):
        assert word not in ENGLISH, word


def test_resolution_order_and_a_users_file(tmp_path):
    own = {"zo", "ka"}
    assert resolve_function_words(None, own) == own  # the synthetic corpus knows its own
    assert resolve_function_words(None, None) == set(ENGLISH)
    assert resolve_function_words("english", own) == set(ENGLISH)
    assert resolve_function_words("none", own) is None
    words = tmp_path / "de.txt"
    words.write_text("der die das\nund\n")
    assert resolve_function_words(str(words), None) == {"der", "die", "das", "und"}


@pytest.mark.parametrize("content", [None, b"", b"\xff\xfe\x00"])
def test_unreadable_lists_name_the_file_and_the_key(tmp_path, content):
    path = tmp_path / "words.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FunctionWordsError, match=r"tracker.function_words: .*words\.txt"):
        resolve_function_words(str(path), None)


def test_byte_level_tokens_are_labelled_by_their_decoded_text(tmp_path):
    # GPT-2's byte-level vocabulary spells a newline "Ċ" and "’" as "âĢĻ": both look
    # alphabetic as vocabulary strings, and neither is a word.
    text = "the cat sat on the mat\nit’s between the dog and a cat\t\u2014 ok 1990"
    tokenizer = train_bpe([text] * 200, vocab_size=400, directory=tmp_path)
    labels = function_word_labels(surface_forms(tokenizer), ENGLISH)
    by_token = {t: labels[i] for t, i in tokenizer.get_vocab().items()}
    assert [by_token[t] for t in ("Ġthe", "the", "Ġbetween", "Ġand")] == [1.0] * 4
    assert [by_token[t] for t in ("Ġcat", "Ġmat", "Ġdog")] == [0.0] * 3
    for token in ("Ċ", "ĉ", "âĢĻ", "âĢĶ", "Ġ1990", ".", "<|endoftext|>"):
        if token in by_token:
            assert np.isnan(by_token[token]), token
    assert np.isnan(by_token["Ċ"]) and np.isnan(by_token["âĢĻ"])


def test_sentencepiece_tokens_are_labelled_by_their_decoded_text():
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(
        {"▁the": 0, "▁cat": 1, "▁of": 2, "<0x0A>": 3, "ing": 4, "<unk>": 5}, unk_token="<unk>")))
    tokenizer.backend_tokenizer.decoder = decoders.Metaspace()
    labels = function_word_labels(surface_forms(tokenizer), ENGLISH)
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0, np.nan, 0.0, np.nan])


def test_a_run_on_english_text_files_gets_a_function_word_curve(cache_dir, tmp_path):
    rng = np.random.default_rng(0)
    nouns = "cat dog house garden teacher river window letter market story".split()
    verbs = "sees finds likes paints opens reads".split()
    lines = [f"the {rng.choice(nouns)} {rng.choice(verbs)} a {rng.choice(nouns)} of the "
             f"{rng.choice(nouns)} and it is near {rng.choice(nouns)}" for _ in range(1500)]
    corpus = tmp_path / "english.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    run_train(cache_dir, *TINY, "trainer.max_steps=1", "logger=csv", "data=text_files",
              f"data.files=[{corpus}]", "data.vocab_size=300", "tracker.evidence=false",
              f"hydra.run.dir={out}")
    row = json.loads((out / "normx" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["normx/auroc/function_word"])
    gold = np.load(out / "normx" / "gold.npz")
    vocab = json.loads((out / "normx" / "vocab.json").read_text())
    labelled = {vocab[i].replace("Ġ", "") for i in np.flatnonzero(gold["function_word"] == 1)}
    assert {"the", "of", "and", "it", "is", "a"} <= labelled
