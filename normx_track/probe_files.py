"""Minimal-pair probe files and their encoding (DESIGN.md "Probe file format"): BLiMP's
one-prefix JSON lines, extended with `cue_word_indices`; cue words map to all the token
positions of their pieces; good/bad targets are the first token of each word as it
continues the prefix (see `normx_track.probes` for how the probes use them)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

# =========================================================================== probe files
class ProbeFileError(ValueError):
    """A probe file line is malformed; the message names the file and the line number."""


@dataclass(frozen=True)
class MinimalPair:
    """A one-prefix minimal pair: ``prefix`` then ``good`` (grammatical) vs ``bad``.

    ``cue_word_indices`` index ``prefix.split()``; empty when the pair has no cue (it still
    counts for accuracy)."""

    prefix: str
    good: str
    bad: str
    cue_word_indices: tuple[int, ...] = ()
    uid: str = ""
    source: str = ""  # "file:line" or "hub:subset:row", for error messages

    @property
    def words(self) -> list[str]:
        return self.prefix.split()


_REQUIRED = ("one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad")


def _pair_from_record(record: Any) -> MinimalPair:
    """Validate one JSON record; raises ValueError with a bare reason."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in _REQUIRED:
        if key not in record:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(record[key]).__name__}")
    prefix = record["one_prefix_prefix"]
    words = prefix.split()
    if not words:
        raise ValueError("empty prefix (one_prefix_prefix)")
    good, bad = record["one_prefix_word_good"].strip(), record["one_prefix_word_bad"].strip()
    for key, word in (("one_prefix_word_good", good), ("one_prefix_word_bad", bad)):
        if not word:
            raise ValueError(f"empty word ({key})")
    cues = record.get("cue_word_indices")
    if cues is None:
        cues = []
    if not isinstance(cues, list):
        raise ValueError(f"cue_word_indices must be a list of word indices, got {cues!r}")
    for c in cues:
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"cue_word_indices must hold integers, got {c!r}")
        if not 0 <= c < len(words):
            raise ValueError(f"cue word index {c} out of range: the prefix has {len(words)} "
                             f"words (0..{len(words) - 1})")
    uid = record.get("UID", "")
    return MinimalPair(prefix=prefix, good=good, bad=bad,
                       cue_word_indices=tuple(sorted(set(cues))),
                       uid=str(uid) if uid is not None else "")


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
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProbeFileError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            try:
                pair = _pair_from_record(record)
            except ValueError as err:
                raise ProbeFileError(f"{path}:{number}: {err}") from None
            pairs.append(MinimalPair(pair.prefix, pair.good, pair.bad, pair.cue_word_indices,
                                     pair.uid, source=f"{path}:{number}"))
    return pairs


def _strip_punct(word: str) -> str:
    return word.strip(".,;:!?\"'")


def load_blimp_from_hub(subset: str, split: str = "train") -> list[MinimalPair]:
    """BLiMP minimal pairs from the hub (``datasets.load_dataset("nyu-mll/blimp", subset)``).

    The hub rows hold whole sentences (``sentence_good``/``sentence_bad``) and a
    ``one_prefix_method`` flag; for rows with the flag, the prefix is the words the two
    sentences share before they differ and good/bad are the first differing words (final
    punctuation stripped). Other rows are skipped. BLiMP has no cue annotation, so these
    pairs give accuracy only."""
    from datasets import load_dataset

    pairs = []
    for row_index, row in enumerate(load_dataset("nyu-mll/blimp", subset, split=split)):
        if "one_prefix_prefix" in row:  # a one-prefix export
            pair = _pair_from_record(row)
        else:
            if not row.get("one_prefix_method"):
                continue
            good_words, bad_words = row["sentence_good"].split(), row["sentence_bad"].split()
            k = 0
            while k < min(len(good_words), len(bad_words)) and good_words[k] == bad_words[k]:
                k += 1
            if k == 0 or k >= len(good_words) or k >= len(bad_words):
                continue
            good, bad = _strip_punct(good_words[k]), _strip_punct(bad_words[k])
            if not good or not bad:
                continue
            pair = MinimalPair(" ".join(good_words[:k]), good, bad, (), str(row.get("UID", "")))
        pairs.append(MinimalPair(pair.prefix, pair.good, pair.bad, pair.cue_word_indices,
                                 pair.uid, source=f"hub:nyu-mll/blimp:{subset}:{row_index}"))
    return pairs


# ============================================================================ encoding
@dataclass
class EncodedPairs:
    """Right-padded prefixes with cue masks and targets; index with a slice for a batch."""

    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] long
    cue_mask: Tensor  # [B, T] bool, every piece of every cue word
    good_ids: Tensor  # [B] first token of the good word
    bad_ids: Tensor  # [B] first token of the bad word
    last: Tensor  # [B] position of the last prefix token (the prediction point)
    pairs: list[MinimalPair] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def has_cues(self) -> Tensor:
        return self.cue_mask.any(dim=1)

    def __getitem__(self, index: slice) -> "EncodedPairs":
        if not isinstance(index, slice):
            raise TypeError("index EncodedPairs with a slice")
        width = int(self.last[index].max()) + 1 if len(self.last[index]) else 0
        return EncodedPairs(self.input_ids[index, :width], self.attention_mask[index, :width],
                            self.cue_mask[index, :width], self.good_ids[index],
                            self.bad_ids[index], self.last[index], self.pairs[index])


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_text(tokenizer, text: str, **kw) -> dict:
    return tokenizer(text, add_special_tokens=False, **kw)


def word_first_token(tokenizer, word: str, context: str = "") -> int:
    """The first token of ``word`` continuing ``context`` (a space between them when there
    is a context): the tokens of ``context + " " + word`` after those of ``context`` when
    the context's own tokens are a prefix of them (true for byte-level BPE, where this is
    the first token of " " + word), else the first token of " " + word."""
    word = word.strip()
    if not word:
        raise ValueError("empty word")
    if context:
        ctx = encode_text(tokenizer, context)["input_ids"]
        full = encode_text(tokenizer, context + " " + word)["input_ids"]
        if len(full) > len(ctx) and full[: len(ctx)] == ctx:
            return int(full[len(ctx)])
    ids = encode_text(tokenizer, " " + word)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer gives no token for {word!r}")
    return int(ids[0])


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


def encode_pairs(pairs: Sequence[MinimalPair], tokenizer,
                 max_length: int | None = None) -> EncodedPairs:
    """Tokenise prefixes (no special tokens, as in training), right-pad them, mark every
    token piece of every cue word, and take the good/bad targets' first tokens."""
    if not pairs:
        raise ValueError("no minimal pairs to encode")
    rows, cues, good, bad = [], [], [], []
    for pair in pairs:
        ids, words_of = _tokens_and_word_of(tokenizer, pair.prefix)
        if not ids:
            raise ValueError(f"{pair.source or pair.prefix!r}: the prefix has no tokens")
        cue_words = set(pair.cue_word_indices)
        cue = [bool(cue_words.intersection(ws)) for ws in words_of]
        if max_length is not None and len(ids) > max_length:
            ids, cue = ids[-max_length:], cue[-max_length:]
        rows.append(ids)
        cues.append(cue)
        good.append(word_first_token(tokenizer, pair.good, pair.prefix))
        bad.append(word_first_token(tokenizer, pair.bad, pair.prefix))
    width, pad = max(map(len, rows)), _pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    cue_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (ids, cue) in enumerate(zip(rows, cues)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        cue_mask[b, : len(ids)] = torch.tensor(cue)
    return EncodedPairs(input_ids, attention, cue_mask, torch.tensor(good), torch.tensor(bad),
                        torch.tensor([len(r) - 1 for r in rows]), list(pairs))
