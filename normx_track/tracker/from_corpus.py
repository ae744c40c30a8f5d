"""Everything a `Tracker` measures against, from a tokenizer and a text corpus, in one call:
for your own loop, with no part of this project's training code.

    inputs = tracker_inputs(tokenizer, texts, probe_file="blimp:anaphor_gender_agreement.jsonl",
                            held_out=validation_texts, faithfulness_examples=16)
    tracker = Tracker(**inputs, out_dir="runs/mine", every_n_steps=200)

It computes the gold statistics over the texts as a run's stream (each text a document,
EOS after each; DESIGN.md "Gold importance signals"), labels function words on whole words
from their occurrences there, and builds the evidence probe (a probe file or BLiMP rows)
and the faithfulness probe (windows of held-out text) for a causal or a masked LM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from normx_track.gold.statistics import GoldStatistics, compute_gold, without_specials
from normx_track.gold.texts import token_documents
from normx_track.gold.word_labels import label_function_words
from normx_track.probes.blimp import is_blimp_spec, load_blimp
from normx_track.probes.evidence import EvidenceProbe
from normx_track.probes.faithfulness import FaithfulnessProbe
from normx_track.probes.function_words import resolve_function_words
from normx_track.probes.masked_evidence import MaskedEvidenceProbe
from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
from normx_track.record.vocabulary import token_strings
from normx_track.text import surface_forms

# The probes of each objective, evidence then faithfulness, under the same metric names.
PROBES_BY_OBJECTIVE = {"causal": (EvidenceProbe, FaithfulnessProbe),
                       "masked": (MaskedEvidenceProbe, MaskedFaithfulnessProbe)}


def corpus_gold(tokenizer, texts: Iterable[str], *, max_tokens: int | None = None,
                window: int = 5, shuffle_correction: bool = True, seed: int = 0,
                function_words: str | set[str] | None = "english",
                masked: bool = False) -> GoldStatistics:
    """Gold statistics of ``texts`` with ``tokenizer`` (a run's definitions), with
    function-word labels (``"english"``, a file of words, a set, or None for none); for a
    masked LM (``masked``) the special tokens are no gold (NaN), as in its runs."""
    docs = list(token_documents(tokenizer, [list(texts)], tokenizer.eos_token_id))
    gold = compute_gold(docs, len(tokenizer), window=window, max_tokens=max_tokens,
                        shuffle_correction=shuffle_correction, seed=seed)
    words = function_words if isinstance(function_words, set) else \
        resolve_function_words(function_words, None, key="function_words")
    if words:
        gold.function_word = label_function_words(
            surface_forms(tokenizer), words, docs, tokens=token_strings(tokenizer),
            special_ids=tokenizer.all_special_ids).labels
    return without_specials(gold, tokenizer.all_special_ids) if masked else gold


def corpus_probes(tokenizer, *, probe_file: str | Path | None = None,
                  held_out: Sequence[str] | None = None, faithfulness_examples: int = 0,
                  masked: bool = False, max_length: int | None = None, seed: int = 0,
                  **evidence_options: Any) -> list:
    """The evidence probe on ``probe_file`` (JSON lines with cues, or a BLiMP spec such as
    ``blimp:PATH.jsonl``) and, with ``faithfulness_examples``, the faithfulness probe on
    windows of the ``held_out`` texts; a masked LM's (``masked``) under the same names."""
    evidence, faithfulness = PROBES_BY_OBJECTIVE["masked" if masked else "causal"]
    probes: list = []
    if probe_file is not None:
        pairs = load_blimp(probe_file) if is_blimp_spec(probe_file) else probe_file
        probes.append(evidence(pairs, tokenizer, seed=seed, max_length=max_length,
                               **evidence_options))
    if faithfulness_examples:
        if not held_out:
            raise ValueError("faithfulness_examples needs held_out texts to explain")
        blocks = [np.asarray(ids) for ids in
                  token_documents(tokenizer, [list(held_out)], tokenizer.eos_token_id)]
        probes.append(faithfulness([np.concatenate(blocks)], tokenizer,
                                   n_examples=faithfulness_examples, seed=seed))
    return probes


def tracker_inputs(tokenizer, texts: Iterable[str], *, probe_file: str | Path | None = None,
                   held_out: Sequence[str] | None = None, faithfulness_examples: int = 0,
                   masked: bool = False, max_length: int | None = None, seed: int = 0,
                   function_words: str | set[str] | None = "english",
                   max_tokens: int | None = None, window: int = 5) -> dict[str, Any]:
    """`Tracker`'s ``gold``, ``vocab`` and ``probes`` arguments from a tokenizer and a
    corpus (see `corpus_gold`, `corpus_probes`)."""
    return {"gold": corpus_gold(tokenizer, texts, max_tokens=max_tokens, window=window,
                                seed=seed, function_words=function_words, masked=masked),
            "vocab": token_strings(tokenizer),
            "probes": corpus_probes(tokenizer, probe_file=probe_file, held_out=held_out,
                                    faithfulness_examples=faithfulness_examples,
                                    masked=masked, max_length=max_length, seed=seed)}
