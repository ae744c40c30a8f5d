"""Minimal-pair probe files and their encoding (DESIGN.md "Probe file format"): BLiMP's
one-prefix JSON lines, extended with `cue_word_indices` (BLiMP's own rows load as they
ship; `normx_track.probes.blimp` adds their cues). Cue words map to all the token positions of
their pieces; the good and bad words map to all their tokens as they continue the prefix
(see `normx_track.probes.base` for how the probes use them)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from normx_track.errors import InputError
from normx_track.keys import (EVIDENCE_N_CUE_TRUNCATED, PAIR_N_TOO_LONG, PROBE_CUE_SPLIT_SHARE,
                              PROBE_LEADING_SPACE, PROBE_MEAN_PIECES_PER_WORD)

# =========================================================================== probe files
class ProbeFileError(InputError):
    """A probe file line is malformed; the message names the file and the line number."""


@dataclass(frozen=True)
class MinimalPair:
    """A one-prefix minimal pair: ``prefix`` then ``good`` (grammatical) vs ``bad``.

    ``cue_word_indices`` index ``prefix.split()``; empty when the pair has no cue (it still
    counts for accuracy). ``sentence_good``/``sentence_bad``: BLiMP's whole sentences, when
    the row has them (the standard BLiMP score). A BLiMP row with no one-prefix form (its
    paradigm differs earlier in the sentence) has an empty prefix and gives that score only.
    """

    prefix: str
    good: str
    bad: str
    cue_word_indices: tuple[int, ...] = ()
    uid: str = ""
    source: str = ""  # "file:line" or "hub:subset:row", for error messages
    sentence_good: str = ""
    sentence_bad: str = ""

    @property
    def has_prefix(self) -> bool:
        return bool(self.prefix)

    @property
    def has_sentences(self) -> bool:
        return bool(self.sentence_good and self.sentence_bad)


_REQUIRED = ("one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad")
_SENTENCES = ("sentence_good", "sentence_bad")


def _strings(record: dict, keys: Sequence[str]) -> list[str] | None:
    """The string values of ``keys`` (None when none is present); raises on a partial or
    non-string set."""
    present = [k for k in keys if k in record]
    if not present:
        return None
    for key in keys:
        if key not in record:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(record[key]).__name__}")
    return [record[k] for k in keys]


def _cue_indices(record: dict, n_words: int) -> tuple[int, ...]:
    cues = record.get("cue_word_indices")
    if cues is None:
        return ()
    if not isinstance(cues, list):
        raise ValueError(f"cue_word_indices must be a list of word indices, got {cues!r}")
    for c in cues:
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"cue_word_indices must hold integers, got {c!r}")
        if not 0 <= c < n_words:
            raise ValueError(f"cue word index {c} out of range: the prefix has {n_words} "
                             f"words (0..{n_words - 1})")
    return tuple(sorted(set(cues)))


def pair_from_record(record: Any, source: str = "") -> MinimalPair:
    """Validate one JSON record (ours or BLiMP's row as it ships); raises ValueError with a
    bare reason."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    one_prefix = _strings(record, _REQUIRED)
    sentences = _strings(record, _SENTENCES) or ["", ""]
    if sentences[0] and sentences[0].strip() == sentences[1].strip():
        raise ValueError(f"sentence_good and sentence_bad are the same ({sentences[0]!r})")
    uid = record.get("UID")
    uid = str(uid) if uid is not None else ""
    if one_prefix is None:
        if not sentences[0]:
            raise ValueError(f"missing field {_REQUIRED[0]!r} (and no sentence_good/"
                             f"sentence_bad either)")
        return MinimalPair("", "", "", (), uid, source, *sentences)
    # Edge spaces would become tokens of their own (a bare "Ġ" read as position t).
    prefix, good, bad = (text.strip() for text in one_prefix)
    if not prefix.split():
        raise ValueError("empty prefix (one_prefix_prefix)")
    for key, word in (("one_prefix_word_good", good), ("one_prefix_word_bad", bad)):
        if not word:
            raise ValueError(f"empty word ({key})")
    if good == bad:
        raise ValueError(f"one_prefix_word_good and one_prefix_word_bad are the same ({good!r})")
    return MinimalPair(prefix, good, bad, _cue_indices(record, len(prefix.split())), uid,
                       source, *sentences)


def _numbered_lines(handle, path: Path):
    number = 0
    try:
        for number, line in enumerate(handle, start=1):
            yield number, line
    except UnicodeDecodeError:
        raise ProbeFileError(f"{path}:{number + 1}: not UTF-8 text") from None


def load_probe_file(path: str | Path) -> list[MinimalPair]:
    """Minimal pairs from a JSON-lines file in BLiMP's one-prefix format (DESIGN.md "Probe
    file format"); ``cue_word_indices`` is optional. Blank lines are skipped. A bad line
    raises `ProbeFileError` naming the file and the (1-based) line number."""
    path = Path(path)
    pairs = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as err:
        raise ProbeFileError(f"{path}: cannot read probe file ({err.strerror or err})") from err
    with handle:
        for number, line in _numbered_lines(handle, path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProbeFileError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            try:
                pairs.append(pair_from_record(record, source=f"{path}:{number}"))
            except ValueError as err:
                raise ProbeFileError(f"{path}:{number}: {err}") from None
    if not pairs:
        raise ProbeFileError(f"{path}: the probe file holds no minimal pairs")
    return pairs


# ============================================================================ encoding
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


def encode_text(tokenizer, text: str, **kw) -> dict:
    return tokenizer(text, add_special_tokens=False, **kw)


def _ids(tokenizer, text: str) -> list[int]:
    return [int(i) for i in encode_text(tokenizer, text)["input_ids"]]


_COMMON_WORDS = ("the", "a", "of", "and", "to", "in", "is", "I")


def marks_word_starts(tokenizer) -> bool:
    """Whether the tokenizer folds the space before a word into the word's first token
    (byte-level BPE's "Ġ", Metaspace's "▁" where no space is prepended), read from what
    it does, not from its class: for some common word w, " w" tokenises unlike "w", not as
    a bare space token and then more, and exactly as w does mid-text (after "x ").
    Tokenizers that prepend the mark themselves (SentencePiece with a prefix space) or drop
    spaces (WordPiece) give False: their sentence-initial words are already as mid-text."""
    space = _ids(tokenizer, " ")
    context = _ids(tokenizer, "x")
    for word in _COMMON_WORDS:
        alone, spaced = _ids(tokenizer, word), _ids(tokenizer, " " + word)
        if alone == spaced or spaced[: len(space)] == space:
            continue
        mid = _ids(tokenizer, "x " + word)
        if mid[: len(context)] == context and mid[len(context):] == spaced:
            return True
    return False


def running_text(text: str, leading_space: bool) -> str:
    """``text`` as it would appear mid-text: after a space when ``leading_space``."""
    return " " + text if leading_space else text


def continuation_tokens(tokenizer, word: str, context: str = "") -> list[int]:
    """The tokens of ``word`` continuing ``context`` (a space between them when there is a
    context): the tokens of ``context + " " + word`` after those of ``context`` when the
    context's own tokens are a prefix of them (true for byte-level BPE, where these are
    the tokens of " " + word), else the tokens of " " + word."""
    word = word.strip()
    if not word:
        raise ValueError("empty word")
    if context:
        ctx = encode_text(tokenizer, context)["input_ids"]
        full = encode_text(tokenizer, context + " " + word)["input_ids"]
        if len(full) > len(ctx) and full[: len(ctx)] == ctx:
            return [int(i) for i in full[len(ctx):]]
    ids = encode_text(tokenizer, " " + word)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer gives no token for {word!r}")
    return [int(i) for i in ids]


def word_first_token(tokenizer, word: str, context: str = "") -> int:
    """The first of `continuation_tokens`."""
    return continuation_tokens(tokenizer, word, context)[0]


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
        g = _ids(tokenizer, running_text(pair.sentence_good.strip(), leading_space))
        b = _ids(tokenizer, running_text(pair.sentence_bad.strip(), leading_space))
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
