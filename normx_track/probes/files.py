"""Minimal-pair probe files and their encoding (DESIGN.md "Probe file format"): BLiMP's
one-prefix JSON lines, extended with `cue_word_indices` (BLiMP's own rows load as they
ship; `normx_track.probes.blimp` adds their cues). Cue words map to all the token positions of
their pieces; the good and bad words map to all their tokens as they continue the prefix
(see `normx_track.probes.base` for how the probes use them)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from normx_track.errors import InputError

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
@dataclass
class EncodedPairs:
    """Right-padded model inputs for the one-prefix pairs; index with a slice for a batch.

    Each row is the prefix followed by all the good word's tokens, so one causal pass
    explains the good word at ``last`` (positions <= last never see what follows), the
    contrast at ``contrast_position`` (the first token where the good and bad
    tokenisations differ, the shared tokens before it; DESIGN.md) and gives the good
    word's log-probability."""

    input_ids: Tensor  # [B, T] long: prefix + the good word's tokens
    attention_mask: Tensor  # [B, T] long
    cue_mask: Tensor  # [B, T] bool, every piece of every cue word (prefix positions only)
    good_ids: Tensor  # [B] first token of the good word (explained at `last`)
    bad_ids: Tensor  # [B] first token of the bad word
    last: Tensor  # [B] position of the last prefix token (the prediction point)
    contrast_position: Tensor  # [B] last + number of shared tokens
    contrast_good: Tensor  # [B] the good word's first differing token
    contrast_bad: Tensor  # [B] the bad word's (-1 where one word's tokens begin the other's)
    context: list[list[int]] = field(default_factory=list)  # prefix tokens (as kept)
    good_tokens: list[list[int]] = field(default_factory=list)  # all tokens of the good word
    bad_tokens: list[list[int]] = field(default_factory=list)
    pairs: list[MinimalPair] = field(default_factory=list)

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
            self.context[index], self.good_tokens[index], self.bad_tokens[index],
            self.pairs[index])


def pad_id(tokenizer) -> int:
    """The id that pads rows: the pad token, else EOS, else 0 (masked out either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_text(tokenizer, text: str, **kw) -> dict:
    return tokenizer(text, add_special_tokens=False, **kw)


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


def _tokens_and_word_of(tokenizer, prefix: str) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``prefix`` and, per token, the indices of the words it overlaps."""
    spans = _word_spans(prefix)
    if getattr(tokenizer, "is_fast", False):
        enc = encode_text(tokenizer, prefix, return_offsets_mapping=True)
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
    for w, word in enumerate(prefix.split()):
        piece = encode_text(tokenizer, word if w == 0 else " " + word)["input_ids"]
        ids.extend(piece)
        words_of.extend([[w]] * len(piece))
    return ids, words_of


def _shared_length(good: list[int], bad: list[int]) -> int:
    """How many leading tokens the two tokenisations share."""
    n = 0
    while n < min(len(good), len(bad)) and good[n] == bad[n]:
        n += 1
    return n


@dataclass
class _Row:
    context: list[int]
    cue: list[bool]
    good: list[int]
    bad: list[int]
    shared: int


def _encode_row(pair: MinimalPair, tokenizer, max_length: int | None) -> _Row:
    ids, words_of = _tokens_and_word_of(tokenizer, pair.prefix)
    where = pair.source or repr(pair.prefix)
    if not ids:
        raise ValueError(f"{where}: the prefix has no tokens")
    cue_words = set(pair.cue_word_indices)
    cue = [bool(cue_words.intersection(ws)) for ws in words_of]
    good = continuation_tokens(tokenizer, pair.good, pair.prefix)
    bad = continuation_tokens(tokenizer, pair.bad, pair.prefix)
    if good == bad:
        raise ValueError(f"{where}: good {pair.good!r} and bad {pair.bad!r} tokenise alike")
    if max_length is not None:  # keep the end of the prefix: the words nearest the target
        room = max_length - max(len(good), len(bad))
        if room < 1:
            raise ValueError(f"{where}: the words alone take {max(len(good), len(bad))} "
                             f"tokens, more than the model's {max_length} positions")
        ids, cue = ids[-room:], cue[-room:]
    return _Row(ids, cue, good, bad, _shared_length(good, bad))


def encode_pairs(pairs: Sequence[MinimalPair], tokenizer,
                 max_length: int | None = None) -> EncodedPairs:
    """Tokenise prefixes (no special tokens, as in training), mark every token piece of
    every cue word, take the words' continuation tokens, and lay out each row as the
    prefix plus the good word's tokens (right-padded). ``max_length``: the most
    positions a row may use, words included (the model's context size); longer prefixes
    keep their last tokens and lose the cues cut off."""
    if not pairs:
        raise ValueError("no minimal pairs to encode")
    rows = [_encode_row(pair, tokenizer, max_length) for pair in pairs]
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
    diverge = [r.shared < min(len(r.good), len(r.bad)) for r in rows]
    return EncodedPairs(
        input_ids, attention, cue_mask,
        good_ids=torch.tensor([r.good[0] for r in rows]),
        bad_ids=torch.tensor([r.bad[0] for r in rows]),
        last=last,
        contrast_position=last + torch.tensor([r.shared for r in rows]),
        contrast_good=torch.tensor([r.good[min(r.shared, len(r.good) - 1)] for r in rows]),
        contrast_bad=torch.tensor([r.bad[r.shared] if d else -1 for r, d in zip(rows, diverge)]),
        context=[r.context for r in rows], good_tokens=[r.good for r in rows],
        bad_tokens=[r.bad for r in rows], pairs=list(pairs))
