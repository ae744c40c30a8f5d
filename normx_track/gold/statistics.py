"""Gold importance signals computed from a token stream (DESIGN.md "Definitions").

Signals are arrays of length V indexed by token id:

- ``counts``: c(w); ``self_information``: -log(c(w)/N) (natural log), NaN where c(w) = 0.
- ``information_gain``: KL(p(.|w) || p(.)) from symmetric co-occurrence counts within
  +-W tokens inside documents; NaN for tokens without co-occurrences.
- ``information_gain_corrected``: information_gain minus the same KL computed on a seeded
  shuffle of the stream (see :func:`shuffle_documents`).
- ``function_word``: 1.0 / 0.0 / NaN labels on whole words (see :func:`function_word_labels`).

The KL's kernels are `normx_track.gold.cooccurrence`'s (how they are fast is said there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import zipfile
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np

from normx_track.errors import InputError
from normx_track.gold.cooccurrence import (  
    check_window, cooccurrence_kl, flatten, kl)  # noqa: F401 - cooccurrence_kl re-exported
from normx_track.gold.word_labels import label_function_words
from normx_track.record.atomic import atomic_open


class GoldFileError(InputError):
    """A gold.npz that cannot be read; the message names the file."""


SIGNALS = ("counts", "self_information", "information_gain",
           "information_gain_corrected", "function_word")


# --------------------------------------------------------------------------- streams
def _as_documents(documents: Iterable[np.ndarray], vocab_size: int,
                  max_tokens: int | None) -> list[np.ndarray]:
    """Validate ids and truncate the stream after its first ``max_tokens`` tokens."""
    docs, total = [], 0
    for doc in documents:
        if max_tokens is not None and total >= max_tokens:
            break
        doc = np.asarray(doc).ravel()
        if doc.size and (doc.min() < 0 or doc.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}); got "
                             f"[{doc.min()}, {doc.max()}]")
        if max_tokens is not None:
            doc = doc[: max_tokens - total]
        docs.append(doc.astype(np.int64, copy=False))
        total += doc.size
    if total == 0:
        raise ValueError("no tokens to compute gold statistics from (empty documents)")
    return docs


def shuffle_documents(documents: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """The shuffle behind ``information_gain_corrected``.

    All tokens of the stream are permuted together with ``np.random.default_rng(seed)``
    (unigram counts are preserved exactly), then cut back into documents of the original
    lengths, so window truncation at document edges is the same as in the real stream.
    """
    flat, lengths = flatten(documents)
    flat = _shuffled(flat, seed)
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _shuffled(flat: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(flat)


# ------------------------------------------------------------------------ container
@dataclasses.dataclass
class GoldStatistics:
    """Gold signals as arrays [V] plus the settings that produced them."""

    counts: np.ndarray
    self_information: np.ndarray
    information_gain: np.ndarray
    information_gain_corrected: np.ndarray | None = None
    function_word: np.ndarray | None = None
    window: int = 5
    n_tokens: int = 0
    seed: int = 0
    # Where the statistics come from (the gold command writes it; see
    # `read_gold_provenance` for its keys); None for gold computed in a run.
    provenance: dict | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[0])

    def names(self) -> list[str]:
        """Names of the signals present (``counts`` included)."""
        return [s for s in SIGNALS if getattr(self, s) is not None]

    def same_as(self, other: "GoldStatistics") -> bool:
        """The same signals, settings and values (NaN equal to NaN)."""
        return (self.names() == other.names()
                and (self.window, self.n_tokens, self.seed) == (other.window, other.n_tokens,
                                                                 other.seed)
                and all(np.array_equal(getattr(self, s), getattr(other, s), equal_nan=True)
                        for s in self.names()))

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz atomically: temp file in the same directory, then os.replace."""
        arrays = {s: getattr(self, s) for s in self.names()}
        meta = np.array([self.window, self.n_tokens, self.seed], dtype=np.int64)
        if self.provenance is not None:  # a plain string array: never a pickled object
            arrays["_provenance"] = np.array(json.dumps(self.provenance, sort_keys=True))
        with atomic_open(path) as handle:
            np.savez(handle, _meta=meta, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "GoldStatistics":
        """Read a file written by :meth:`save`; reject arrays not of length ``vocab_size``.
        A damaged file, or one holding Python objects (never unpickled), raises
        `GoldFileError` naming it. ``provenance`` is None for files that record none."""
        with _open_gold(path) as z:
            arrays = {s: z[s] for s in SIGNALS if s in z.files}
            window, n_tokens, seed = (int(v) for v in z["_meta"])
            provenance = _provenance(z, path)
        missing = {"counts", "self_information", "information_gain"} - arrays.keys()
        if missing:
            raise ValueError(f"gold file {os.fspath(path)!r} lacks {sorted(missing)}")
        sizes = {s: a.shape for s, a in arrays.items()}
        expected = vocab_size if vocab_size is not None else arrays["counts"].shape[0]
        if any(shape != (expected,) for shape in sizes.values()):
            raise ValueError(f"gold file {os.fspath(path)!r} has array shapes {sizes}, "
                             f"expected length {expected} (vocab_size)")
        return cls(**arrays, window=window, n_tokens=n_tokens, seed=seed,
                   provenance=provenance)


@contextlib.contextmanager
def _open_gold(path: str | os.PathLike):
    """np.load of a gold file; anything unreadable (outside the body) -> `GoldFileError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            yield z
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
            zlib.error) as err:
        if isinstance(err, GoldFileError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "pickle" in reason:  # numpy's text would advise allow_pickle=True: never
            reason = "damaged, or holding Python objects rather than plain arrays"
        raise GoldFileError(f"{os.fspath(path)}: not a readable gold file ({reason})"
                            ) from None


def _provenance(z, path) -> dict | None:
    if "_provenance" not in z.files:
        return None
    try:
        value = json.loads(str(z["_provenance"][()]))
    except json.JSONDecodeError as err:
        raise GoldFileError(f"{os.fspath(path)}: its provenance is not JSON ({err.msg})"
                            ) from None
    if not isinstance(value, dict):
        raise GoldFileError(f"{os.fspath(path)}: its provenance is not a JSON object")
    return value


def read_gold_provenance(path: str | os.PathLike) -> dict | None:
    """Where a gold file's statistics come from, without reading its arrays: the dict the
    gold command (``python -m normx_track.gold``) records, or None for a file that records
    none (a run's own gold, or one written before provenance existed).

    Keys written by the gold command (`normx_track.gold.corpus.PROVENANCE_KEYS`):
    ``tokenizer`` (the name or folder as given), ``vocab_hash`` (`normx_track.record.store.
    vocab_hash` of the token strings by id, as a run's meta.json has it), ``vocab_size``,
    ``corpus`` (the corpus specs as given, a list of str), ``text_field``, ``n_tokens``,
    ``n_documents``, ``max_tokens`` (None: all), ``window``, ``eos`` (the id appended to
    each document, None if none), ``shuffle_correction``, ``seed``, ``normx_track_version``.
    A damaged file raises `GoldFileError`.
    """
    with _open_gold(path) as z:
        return _provenance(z, path)


def compute_gold(documents: Iterable[np.ndarray], vocab_size: int, window: int = 5,
                 shuffle_correction: bool = True, seed: int = 0,
                 max_tokens: int | None = None, chunk_tokens: int = 1 << 23
                 ) -> GoldStatistics:
    """All stream-derived gold signals of ``documents`` (1-D arrays of token ids).

    ``max_tokens`` keeps the first N tokens of the stream only (the last kept document
    may be cut). ``information_gain_corrected`` uses :func:`shuffle_documents` with
    ``seed``. See :func:`cooccurrence_kl` for ``chunk_tokens``.
    """
    check_window(window)
    docs = _as_documents(documents, vocab_size, max_tokens)
    flat, lengths = flatten(docs)
    counts = np.bincount(flat, minlength=vocab_size).astype(np.int64)
    n_tokens = int(flat.size)
    with np.errstate(divide="ignore"):
        self_info = np.where(counts > 0, -np.log(counts / max(n_tokens, 1)), np.nan)
    ig = kl(flat, lengths, vocab_size, window, chunk_tokens)
    corrected = None
    if shuffle_correction:
        corrected = ig - kl(_shuffled(flat, seed), lengths, vocab_size, window, chunk_tokens)
    return GoldStatistics(counts=counts, self_information=self_info, information_gain=ig,
                          information_gain_corrected=corrected, window=window,
                          n_tokens=n_tokens, seed=seed)


def without_specials(gold: GoldStatistics, special_ids: Iterable[int]) -> GoldStatistics:
    """The gold signals NaN at the special tokens, so no correlation uses them (counts
    and function-word labels as they are): a masked LM's [SEP] or </s> ends every document
    but is no word of the language."""
    ids = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    ids = ids[ids < gold.vocab_size]
    for name in gold.names():
        if name in ("counts", "function_word"):
            continue
        values = np.array(getattr(gold, name), dtype=np.float64)
        values[ids] = np.nan
        setattr(gold, name, values)
    return gold


def cache_key(*parts: str | bytes | int) -> str:
    """Stable sha256 hex over identifiers (tokenizer hash, data name, settings...).

    Each part is type-tagged and length-prefixed, so ("ab", "c") != ("a", "bc") and
    1 != "1".
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, bytes, int)):
            raise TypeError(f"cache_key parts must be str, bytes or int, got {type(part)}")
        tag, data = {str: (b"s", lambda p: p.encode("utf-8")), bytes: (b"b", lambda p: p),
                     int: (b"i", lambda p: str(p).encode())}[type(part)]
        raw = data(part)
        h.update(tag + len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()


# ------------------------------------------------------------ labels and lexicons
def function_word_labels(surfaces: Sequence[str], function_words: Iterable[str],
                         documents: Iterable[np.ndarray] | None = None, *,
                         tokens: Sequence[str] | None = None,
                         special_ids: Iterable[int] = ()) -> np.ndarray:
    """Float [V]: 1.0 function word, 0.0 content word, NaN neither.

    Labels sit on whole words: from each type's occurrences in ``documents`` (the gold
    statistics stream) when given, else from its decoded text and word-start mark; see
    :mod:`normx_track.gold.word_labels` (which also gives each type's reason and the
    class counts, `label_function_words`).
    """
    return label_function_words(surfaces, function_words, documents, tokens=tokens,
                                special_ids=special_ids).labels


class LexiconError(InputError):
    """A lexicon cannot be read or maps no word; the message names the file (and line)."""


def load_lexicon(path: str | os.PathLike, encode: Callable[[str], list[int]],
                 vocab_size: int) -> tuple[np.ndarray, dict]:
    """Map a ``word<TAB>score`` TSV onto token ids.

    A word maps if ``encode(" " + word)`` is one token (byte-level BPE spells a word
    after a space with its own token), else if ``encode(word)`` is one token; otherwise it
    is skipped and counted. The first mapping of a token id wins; later words mapping to
    the same id are skipped as duplicates; NaN/inf scores are skipped and counted. Blank
    lines and lines starting with "#" are ignored. Returns (scores [V] with NaN where
    absent, stats). A lexicon that maps no word at all raises `LexiconError` (its curve
    would be null throughout).
    """
    path = os.fspath(path)
    scores = np.full(vocab_size, np.nan)
    stats = dict(n_lines=0, n_mapped=0, n_skipped_multitoken=0, n_skipped_duplicate=0,
                 n_skipped_nonfinite=0)
    for lineno, line in _lexicon_lines(path):
        stats["n_lines"] += 1
        fields = line.split("\t")
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 2 tab-separated fields, got {len(fields)}")
            word, score = fields[0].strip(), float(fields[1])
        except ValueError as err:
            raise LexiconError(f"{path}:{lineno}: malformed lexicon line: {err}") from None
        if not math.isfinite(score):
            stats["n_skipped_nonfinite"] += 1
            continue
        ids = encode(" " + word)
        if len(ids) != 1:
            ids = encode(word)
        if len(ids) != 1:
            stats["n_skipped_multitoken"] += 1
            continue
        tid = int(ids[0])
        if not 0 <= tid < vocab_size:
            raise LexiconError(f"{path}:{lineno}: token id {tid} for {word!r} is outside "
                               f"the vocabulary (vocab_size={vocab_size})")
        if not np.isnan(scores[tid]):
            stats["n_skipped_duplicate"] += 1
            continue
        scores[tid] = score
        stats["n_mapped"] += 1
    if stats["n_mapped"] == 0:
        raise LexiconError(f"{path}: no word of the lexicon maps to a single token "
                           f"({stats['n_lines']} lines, {stats['n_skipped_multitoken']} words of "
                           f"several tokens, {stats['n_skipped_nonfinite']} non-finite scores)")
    return scores, stats


def _lexicon_lines(path: str):
    """(line number, line) of the non-blank, non-comment lines; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip() and not line.startswith("#"):
                    yield lineno, line
    except UnicodeDecodeError:
        raise LexiconError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise LexiconError(f"{path}: cannot read lexicon ({err.strerror or err})") from None
