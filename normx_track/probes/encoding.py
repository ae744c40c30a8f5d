"""Minimal pairs as model inputs (DESIGN.md "Evidence alignment"): prefixes tokenised as
running text, every token piece of every cue word marked, the good and bad words as all
their tokens continuing the prefix (`EncodedPairs`), and BLiMP's whole sentences after a
BOS token (`EncodedSentences`). The probes lay these out for their models."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from normx_track.keys import (EVIDENCE_N_CUE_TRUNCATED, PAIR_N_TOO_LONG, PROBE_CUE_SPLIT_SHARE,
                              PROBE_LEADING_SPACE, PROBE_MEAN_PIECES_PER_WORD)
from normx_track.probes.files import MinimalPair, ProbeFileError
from normx_track.text import (continuation_tokens, encode_text, marks_word_starts,
                              running_text, token_ids)

__all__ = ["EncodedPairs", "EncodedSentences", "NothingFitsError", "encode_pairs",
           "encode_sentences", "pad_id"]


class NothingFitsError(ProbeFileError):
    """No minimal pair fits in the model's context."""


@dataclass
class EncodedPairs:
    """Right-padded model inputs for the one-prefix pairs; index with a slice for a batch.

    Each row is the prefix followed by all the good word's tokens, so one causal pass
    explains the good word at ``last`` (positions <= last never see what follows), the
    contrast at ``contrast_position`` (the first token where the good and bad
    tokenisations differ, the shared tokens before it; DESIGN.md) and gives the good
    word's log-probability. Positions before ``word_start`` (resp. ``contrast_word_start``)
    are the ones ranked: the word being read where the prediction is made is never."""

    input_ids: Tensor  # [B, T] long: prefix + the good word's tokens
    attention_mask: Tensor  # [B, T] long
    cue_mask: Tensor  # [B, T] bool, every piece of every cue word (prefix positions only)
    good_ids: Tensor  # [B] first token of the good word (explained at `last`)
    bad_ids: Tensor  # [B] first token of the bad word
    last: Tensor  # [B] position of the last prefix token (the prediction point)
    contrast_position: Tensor  # [B] last + number of shared tokens
    contrast_good: Tensor  # [B] the good word's first differing token
    contrast_bad: Tensor  # [B] the bad word's (-1 where one word's tokens begin the other's)
    word_start: Tensor  # [B] first position of the prefix's last word (the word read at t)
    contrast_word_start: Tensor  # [B] same at contrast_position: last + 1 when words share
    context: list[list[int]] = field(default_factory=list)  # prefix tokens (as kept)
    good_tokens: list[list[int]] = field(default_factory=list)  # all tokens of the good word
    bad_tokens: list[list[int]] = field(default_factory=list)
    pairs: list[MinimalPair] = field(default_factory=list)
    # About the whole set (not sliced): normx/probe/*, pairs skipped or cut (keys.py).
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def has_cues(self) -> Tensor:
        return self.cue_mask.any(dim=1)

    @property
    def has_contrast(self) -> Tensor:
        return self.contrast_bad >= 0

    def __getitem__(self, index: slice) -> "EncodedPairs":
        if not isinstance(index, slice):
            raise TypeError("index EncodedPairs with a slice")
        rows = self.attention_mask[index]
        width = int(rows.sum(1).max()) if len(rows) else 0
        return EncodedPairs(
            self.input_ids[index, :width], rows[:, :width], self.cue_mask[index, :width],
            self.good_ids[index], self.bad_ids[index], self.last[index],
            self.contrast_position[index], self.contrast_good[index], self.contrast_bad[index],
            self.word_start[index], self.contrast_word_start[index],
            self.context[index], self.good_tokens[index], self.bad_tokens[index],
            self.pairs[index], self.stats)


def pad_id(tokenizer) -> int:
    """The id that pads rows: the pad token, else EOS, else 0 (masked out either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def _tokens_and_word_of(tokenizer, text: str) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``text`` and, per token, the indices of the (whitespace-split) words it
    overlaps; a bare-space piece belongs to the word after it. ``text`` may start with a
    space (`running_text`): word indices are those of ``text.split()`` either way."""
    spans = _word_spans(text)
    if getattr(tokenizer, "is_fast", False):
        enc = encode_text(tokenizer, text, return_offsets_mapping=True)
        ids, words_of = list(enc["input_ids"]), []
        for start, end in enc["offset_mapping"]:
            # Overlap, not containment: works whether or not offsets include a leading space.
            words = [w for w, (ws, we) in enumerate(spans) if start < we and ws < end]
            if not words and end > start:  # a bare-space piece belongs to the next word,
                nxt = [w for w, (ws, _) in enumerate(spans) if ws >= end]  # as in " " + word
                words = nxt[:1]
            words_of.append(words)
        return ids, words_of
    ids, words_of = [], []  # slow tokenizer: word by word, " " + word after the first
    spaced = text[:1].isspace()
    for w, word in enumerate(text.split()):
        piece = encode_text(tokenizer, word if w == 0 and not spaced else " " + word)["input_ids"]
        ids.extend(piece)
        words_of.extend([[w]] * len(piece))
    return ids, words_of


def _shared_length(good: list[int], bad: list[int]) -> int:
    """How many leading tokens the two tokenisations share."""
    n = 0
    while n < min(len(good), len(bad)) and good[n] == bad[n]:
        n += 1
    return n


def _trailing_run(flags: list[bool]) -> int:
    """Where the final run of True values starts (len(flags) when the last is False)."""
    n = len(flags)
    while n and flags[n - 1]:
        n -= 1
    return n


@dataclass
class _Row:
    context: list[int]
    cue: list[bool]
    good: list[int]
    bad: list[int]
    shared: int
    word_start: int  # first position of the word read at t (the prefix's last word)
    pieces: list[int]  # tokens per prefix word, before any cut
    cue_pieces: list[int]  # tokens per cue word, before any cut
    cue_cut: bool  # it had cues and the cut left none


def _encode_row(pair: MinimalPair, tokenizer, max_length: int | None, leading_space: bool,
                skip_too_long: bool) -> _Row | None:
    """One pair's row; None (``skip_too_long``, else an error) when its words alone do not
    fit in ``max_length``."""
    text = running_text(pair.prefix, leading_space)
    ids, words_of = _tokens_and_word_of(tokenizer, text)
    where = pair.source or repr(pair.prefix)
    if not ids:
        raise ProbeFileError(f"{where}: the prefix has no tokens")
    cue_words = set(pair.cue_word_indices)
    cue = [bool(cue_words.intersection(ws)) for ws in words_of]
    pieces = [sum(w in ws for ws in words_of) for w in range(len(pair.prefix.split()))]
    last_word = set(words_of[-1])  # the pieces of the word read at t, t included
    in_last = [bool(last_word.intersection(ws)) for ws in words_of[:-1]] + [True]
    good = continuation_tokens(tokenizer, pair.good, text)
    bad = continuation_tokens(tokenizer, pair.bad, text)
    if good == bad:
        raise ProbeFileError(f"{where}: good {pair.good!r} and bad {pair.bad!r} tokenise alike")
    had_cue = any(cue)
    if max_length is not None:  # keep the end of the prefix: the words nearest the target
        room = max_length - max(len(good), len(bad))
        if room < 1 and skip_too_long:
            return None
        if room < 1:
            raise ProbeFileError(f"{where}: the words alone take {max(len(good), len(bad))} "
                                 f"tokens, more than the model's {max_length} positions")
        ids, cue, in_last = ids[-room:], cue[-room:], in_last[-room:]
    return _Row(ids, cue, good, bad, _shared_length(good, bad), _trailing_run(in_last),
                pieces, [pieces[c] for c in sorted(cue_words)], had_cue and not any(cue))


def _stats(rows: list[_Row], n_too_long: int, leading_space: bool) -> dict[str, float]:
    pieces = [n for r in rows for n in r.pieces]
    cue_pieces = [n for r in rows for n in r.cue_pieces]
    return {
        PROBE_LEADING_SPACE: float(leading_space),
        PROBE_MEAN_PIECES_PER_WORD: float(np.mean(pieces)) if pieces else math.nan,
        PROBE_CUE_SPLIT_SHARE: float(np.mean([n >= 2 for n in cue_pieces])) if cue_pieces
        else math.nan,
        EVIDENCE_N_CUE_TRUNCATED: sum(r.cue_cut for r in rows),
        PAIR_N_TOO_LONG: n_too_long,
    }


def encode_pairs(pairs: Sequence[MinimalPair], tokenizer, max_length: int | None = None,
                 leading_space: bool = True, skip_too_long: bool = False) -> EncodedPairs:
    """Tokenise prefixes (no special tokens, as in training), mark every token piece of
    every cue word, take the words' continuation tokens, and lay out each row as the
    prefix plus the good word's tokens (right-padded).

    leading_space: encode each prefix as running text, after a space, where the tokenizer
        marks word starts (`marks_word_starts`), so that its first word is tokenised as
        mid-text (DESIGN.md); False: as written (lm-eval 0.3's BLiMP convention).
    max_length: the most positions a row may use, words included (the model's context
        size); longer prefixes keep their last tokens and lose the cues cut off (counted
        in ``stats``). A pair whose words alone do not fit is an error, or with
        ``skip_too_long`` skipped and counted (``pairs`` then holds the kept ones; none
        kept raises `NothingFitsError`)."""
    if not pairs:
        raise ValueError("no minimal pairs to encode")
    leading_space = bool(leading_space) and marks_word_starts(tokenizer)
    encoded = [(pair, _encode_row(pair, tokenizer, max_length, leading_space, skip_too_long))
               for pair in pairs]
    kept = [(pair, row) for pair, row in encoded if row is not None]
    if not kept:
        raise NothingFitsError(f"{pairs[0].source or repr(pairs[0].prefix)}: no minimal pair "
                               f"fits in the model's {max_length} positions (the good and bad "
                               "words alone take more)")
    pairs, rows = [p for p, _ in kept], [r for _, r in kept]
    width = max(len(r.context) + len(r.good) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    cue_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, r in enumerate(rows):
        full = r.context + r.good
        input_ids[b, : len(full)] = torch.tensor(full)
        attention[b, : len(full)] = 1
        cue_mask[b, : len(r.context)] = torch.tensor(r.cue)
    last = torch.tensor([len(r.context) - 1 for r in rows])
    shared = torch.tensor([r.shared for r in rows])
    word_start = torch.tensor([r.word_start for r in rows])
    diverge = [r.shared < min(len(r.good), len(r.bad)) for r in rows]
    return EncodedPairs(
        input_ids, attention, cue_mask,
        good_ids=torch.tensor([r.good[0] for r in rows]),
        bad_ids=torch.tensor([r.bad[0] for r in rows]),
        last=last,
        contrast_position=last + shared,
        contrast_good=torch.tensor([r.good[min(r.shared, len(r.good) - 1)] for r in rows]),
        contrast_bad=torch.tensor([r.bad[r.shared] if d else -1 for r, d in zip(rows, diverge)]),
        # Explained inside the good word, the word read there is the good word: the
        # whole prefix is earlier words.
        word_start=word_start,
        contrast_word_start=torch.where(shared > 0, last + 1, word_start),
        context=[r.context for r in rows], good_tokens=[r.good for r in rows],
        bad_tokens=[r.bad for r in rows], pairs=pairs,
        stats=_stats(rows, len(encoded) - len(kept), leading_space))


@dataclass
class EncodedSentences:
    """BLiMP's whole sentences for the standard score: each after a BOS (else EOS) token,
    as lm-eval scores BLiMP."""

    context: list[list[int]]
    good: list[list[int]]
    bad: list[list[int]]
    pairs: list[MinimalPair]
    n_too_long: int  # pairs skipped: a sentence does not fit in the model's context


def encode_sentences(pairs: Sequence[MinimalPair], tokenizer, max_length: int | None = None,
                     leading_space: bool = True) -> EncodedSentences | None:
    """The sentences of ``pairs`` (None without pairs); ``leading_space`` as in
    `encode_pairs`. A pair either of whose sentences takes more than ``max_length``
    positions with its BOS is skipped and counted (a cut sentence would not be the
    sentence's probability)."""
    if not pairs:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = bos if bos is not None else getattr(tokenizer, "eos_token_id", None)
    if bos is None:
        raise ProbeFileError("BLiMP's sentence score needs a BOS or EOS token to start from; "
                             "the tokenizer has neither")
    leading_space = bool(leading_space) and marks_word_starts(tokenizer)
    out = EncodedSentences([], [], [], [], 0)
    for pair in pairs:
        g = token_ids(tokenizer, running_text(pair.sentence_good.strip(), leading_space))
        b = token_ids(tokenizer, running_text(pair.sentence_bad.strip(), leading_space))
        if not g or not b:
            raise ProbeFileError(f"{pair.source}: a sentence has no tokens")
        if max_length is not None and 1 + max(len(g), len(b)) > max_length:
            out.n_too_long += 1
            continue
        out.context.append([int(bos)])
        out.good.append(g)
        out.bad.append(b)
        out.pairs.append(pair)
    return out
