"""Minimal-pair probe files (DESIGN.md "Probe file format"): BLiMP's one-prefix JSON lines,
extended with `cue_word_indices` (BLiMP's own rows load as they ship;
`normx_track.probes.blimp` adds their cues). A line becomes a `MinimalPair`; how pairs
become model inputs is `normx_track.probes.encoding`'s."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from normx_track.errors import InputError

__all__ = ["MinimalPair", "ProbeFileError", "load_probe_file", "pair_from_record"]


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
