"""Function words on real text: the built-in English closed-class list, a user's file for
other languages, and a run on English text files that gets its function-word curve."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import TINY, run_train
from normx_track.function_words import ENGLISH, FunctionWordsError, resolve_function_words
from normx_track.gold import function_word_labels


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


def test_gpt2_style_tokens_are_labelled_from_the_english_list():
    vocab = ["Ġthe", "Ġcat", "the", "Ġof", "ing", ".", "<|endoftext|>", "ĠBetween"]
    labels = function_word_labels(vocab, ENGLISH)
    assert labels[[0, 2, 3, 7]].tolist() == [1.0] * 4
    assert labels[[1, 4]].tolist() == [0.0, 0.0]
    assert np.isnan(labels[[5, 6]]).all()


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
