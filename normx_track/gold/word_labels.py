"""Function-word labels from whole words, not pieces (DESIGN.md, `function_word`).

A subword vocabulary's types are labelled by how they occur in the gold statistics
corpus, so "a" and "in" inside "Samoa" and "Dublin" are no articles or prepositions:

- A token *begins a word* when it is word-start marked (byte-level "Ġ", SentencePiece
  "▁", a leading space in its decoded text), starts a document, or the characters on the
  two sides of the boundary before it are not both letters/digits (so "the" after "("
  begins a word, "oa" after "Sam" does not). WordPiece vocabularies mark the other side:
  a "##" piece continues the word, any other token begins one.
- An occurrence is a *whole word* when it begins a word and the next token does not
  continue it (the next begins a word, is punctuation, or the document ends).
- *Clitics* are labelled as their tokens occur: a listed clitic token ("'s", "'t",
  "n't", ...); a bare "s", "t", "re", "ve", "ll", "d", "m" right after an apostrophe
  token that ends its word (a split "'" + "s"); an "n" right before "'t" (a split
  "n" + "'t"). A clitic does not continue the word before it, and the host of "'t"
  ("don", "didn", "wo") is a negated auxiliary: a function word too.
- *Placeholders*: an occurrence inside a ``<...>`` span of the text (WikiText's
  "<unk>", whether one token or "<" + "unk" + ">").
- *Proper nouns*: a capitalised listed word whose whole-word occurrences are mostly
  mid-sentence (after a letter, digit or comma) is a name ("US", "May"); " The" at a
  sentence start stays a function word. A listed word spelled with a capital (English
  "I") is always capitalised and is never taken for a name.

A type takes the category of at least ``SHARE`` (0.5) of its occurrences, in this order:
placeholder (neither), clitic or negated host (function), not mostly a whole word
(a word-internal piece: neither), then its decoded text: listed (function, unless a
proper noun: neither), alphabetic (content). Specials, ``<...>`` placeholders, and types
whose decoded text holds no letter (punctuation, digits, whitespace, partial UTF-8 bytes)
and is not listed, are neither whatever the corpus says (the synthetic corpus lists ".").

Without a corpus, and for types the corpus never shows, the surface rule: a word-start
marked token (every token, in a vocabulary without markers) is labelled by its text, a
listed clitic token is a function word, and an unmarked token (possibly a piece) is
neither.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from normx_track import keys

SHARE = 0.5
WORD_START_MARKS = ("Ġ", "▁")
CONTINUATION_MARK = "##"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})
_PLACEHOLDER = re.compile(r"<[^\s<>]+>")
# Why a type got its label; FUNCTION_REASONS give 1.0, "content" 0.0, the rest NaN.
REASONS = ("function", "clitic", "clitic_host", "content", "piece", "placeholder",
           "proper_noun", "not_a_word", "special")
FUNCTION_REASONS = ("function", "clitic", "clitic_host")
_CODE = {name: i for i, name in enumerate(REASONS)}


@dataclasses.dataclass
class FunctionWordLabels:
    """Labels [V] (1.0 function, 0.0 content, NaN neither) and each type's reason."""

    labels: np.ndarray
    reasons: np.ndarray   # int [V], indices into REASONS

    def summary(self, counts: np.ndarray | None = None, min_count: int = 0) -> dict:
        """How many types each class holds (``n_function``, ``n_content``,
        ``n_unlabelled``) and each reason (``by_reason``), among types with count >=
        ``min_count`` (all types when ``counts`` is None)."""
        keep = (np.ones(len(self.labels), bool) if counts is None
                else np.asarray(counts) >= min_count)
        by_reason = np.bincount(self.reasons[keep], minlength=len(REASONS))
        return {**class_counts(self.labels[keep]),
                "by_reason": {name: int(k) for name, k in zip(REASONS, by_reason)}}


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """{"n_function", "n_content", "n_unlabelled"} of 1.0 / 0.0 / NaN labels."""
    labels = np.asarray(labels, np.float64)
    return {"n_function": int((labels == 1).sum()), "n_content": int((labels == 0).sum()),
            "n_unlabelled": int(np.isnan(labels).sum())}


def function_word_counts(function_word: np.ndarray, counts: np.ndarray,
                         min_count: int) -> dict[str, int]:
    """Record keys -> number of function, content and unlabelled types among those with
    count >= min_count (the types `function_word_auroc` is computed over)."""
    keep = np.asarray(counts) >= min_count
    return {keys.FUNCTION_WORD_N.format(label=name[2:]): n
            for name, n in class_counts(np.asarray(function_word)[keep]).items()}


# ------------------------------------------------------------------ type properties
def _core(surface: str) -> str:
    return surface.strip().translate(_APOSTROPHES)


@dataclasses.dataclass
class _Types:
    """Per-type properties [V] from the decoded texts, the vocabulary and the list."""

    lead: np.ndarray       # first character a letter/digit
    tail: np.ndarray       # last character a letter/digit
    tail_mid: np.ndarray   # ... or a comma: what follows is mid-sentence
    marked: np.ndarray     # word start marked
    cont: np.ndarray       # "##" continuation piece
    wordpiece: bool        # the vocabulary marks continuations, not word starts
    capital: np.ndarray
    listed: np.ndarray
    exempt: np.ndarray     # listed with a capital (English "I"): never a name
    word: np.ndarray       # alphabetic
    clitic_form: np.ndarray
    suffix: np.ndarray     # a listed clitic without its apostrophe ("s", "t")
    apostrophe: np.ndarray
    n: np.ndarray          # "n", when "n't" is listed
    t_form: np.ndarray     # "'t" / "n't"
    t_suffix: np.ndarray   # bare "t"
    length: np.ndarray     # characters of the decoded text
    never: np.ndarray      # reason code where the text alone rules a label out, else -1


def _types(surfaces: Sequence[str], tokens: Sequence[str] | None, words: Iterable[str],
           special_ids: Iterable[int]) -> _Types:
    lexicon = {w.translate(_APOSTROPHES).lower() for w in words}
    exempt = {w.lower() for w in words if w != w.lower()}
    clitics = {w for w in lexicon if w.startswith("'") or w == "n't"}
    suffixes = {w[1:] for w in clitics if w.startswith("'")}
    tokens = list(tokens) if tokens is not None else [""] * len(surfaces)
    cores = [_core(s) for s in surfaces]
    lower = [c.lower() for c in cores]

    def flags(test) -> np.ndarray:
        return np.fromiter((bool(test(i)) for i in range(len(surfaces))), bool, len(surfaces))

    marked = flags(lambda i: surfaces[i][:1].isspace() or tokens[i].startswith(WORD_START_MARKS))
    cont = flags(lambda i: tokens[i].startswith(CONTINUATION_MARK) and len(tokens[i]) > 2)
    never = np.full(len(surfaces), -1)
    for i, core in enumerate(cores):
        if _PLACEHOLDER.fullmatch(core):
            never[i] = _CODE["placeholder"]
        elif not any(ch.isalpha() for ch in core) and core.lower() not in lexicon:
            never[i] = _CODE["not_a_word"]   # a listed "." (the synthetic corpus's) counts
    never[[i for i in special_ids if 0 <= i < len(surfaces)]] = _CODE["special"]
    return _Types(
        lead=flags(lambda i: surfaces[i][:1].isalnum()),
        tail=flags(lambda i: surfaces[i][-1:].isalnum()),
        tail_mid=flags(lambda i: surfaces[i][-1:].isalnum() or surfaces[i][-1:] == ","),
        marked=marked, cont=cont, wordpiece=bool(cont.any() and not marked.any()),
        capital=flags(lambda i: cores[i][:1].isupper()),
        listed=flags(lambda i: lower[i] in lexicon), exempt=flags(lambda i: lower[i] in exempt),
        word=flags(lambda i: cores[i].isalpha()),
        clitic_form=flags(lambda i: lower[i] in clitics),
        suffix=flags(lambda i: lower[i] in suffixes and not marked[i]),
        apostrophe=flags(lambda i: cores[i] == "'"),
        n=flags(lambda i: lower[i] == "n" and "n't" in clitics),
        t_form=flags(lambda i: lower[i] in ("'t", "n't")),
        t_suffix=flags(lambda i: lower[i] == "t" and not marked[i] and "'t" in clitics),
        length=np.array([len(x) for x in surfaces], np.int64), never=never)


# ------------------------------------------------------------ occurrences in the corpus
_TALLIES = ("n", "placeholder", "clitic", "clitic_host", "whole", "capital_mid")


def _at_next(a: np.ndarray, last: np.ndarray) -> np.ndarray:
    """a[j + 1] within the document, False at its last token."""
    return np.append(a[1:], False) & ~last


def _at_prev(a: np.ndarray, first: np.ndarray) -> np.ndarray:
    """a[j - 1] within the document, False at its first token."""
    return np.insert(a[:-1], 0, False) & ~first


def _tally(ids: np.ndarray, first: np.ndarray, last: np.ndarray, ty: _Types,
           surfaces: Sequence[str]) -> np.ndarray:
    """[len(_TALLIES), V] occurrence counts of one chunk of whole documents."""
    prev = np.insert(ids[:-1], 0, 0)
    if ty.wordpiece:
        internal = ty.cont[ids] & ~first
    else:   # the boundary before j lies inside a run of letters/digits, unmarked
        internal = ~first & ty.tail[prev] & ty.lead[ids] & ~ty.marked[ids]
    ends = ~_at_next(internal, last)
    clitic_a = ty.clitic_form[ids] & ends
    clitic_b = ty.suffix[ids] & _at_prev(ty.apostrophe[ids], first) & ends
    neg = (clitic_a | clitic_b) & (ty.t_form[ids] | ty.t_suffix[ids])
    neg_start = (clitic_a & ty.t_form[ids]) | (ty.apostrophe[ids] & _at_next(neg, last))
    clitic_c = ty.n[ids] & _at_next(neg_start, last)
    internal &= ~clitic_c           # "do" + "n't": the n starts the clitic
    begins, ends = ~internal, ~_at_next(internal, last)
    placeholder = _placeholders(ids, first, surfaces, ty.length)
    clitic = (clitic_a | clitic_b | clitic_c) & ~placeholder
    whole = begins & ends & ~placeholder & ~clitic
    host = (begins & ~clitic_c & ~placeholder
            & (_at_next(neg_start, last) | _at_next(clitic_c, last)))
    mid = ~first & ty.tail_mid[prev]
    events = (np.ones(ids.size, bool), placeholder, clitic, host, whole,
              whole & ty.capital[ids] & mid)
    return np.stack([np.bincount(ids[e], minlength=len(surfaces)) for e in events])


def _placeholders(ids: np.ndarray, first: np.ndarray, surfaces: Sequence[str],
                  lengths: np.ndarray) -> np.ndarray:
    """Occurrences inside a ``<...>`` span (no whitespace inside) of the chunk's decoded
    text: one regex pass over the text, spans mapped back to tokens by character offsets."""
    text = "".join(map(surfaces.__getitem__, ids.tolist()))
    ends = np.cumsum(lengths[ids])
    spans = np.array([m.span() for m in _PLACEHOLDER.finditer(text)], np.int64).reshape(-1, 2)
    a = np.searchsorted(ends, spans[:, 0], side="right")       # token of the first character
    b = np.searchsorted(ends, spans[:, 1] - 1, side="right")   # ... and of the last
    doc = np.cumsum(first)
    a, b = a[doc[a] == doc[b]], b[doc[a] == doc[b]]              # never across documents
    delta = np.zeros(ids.size + 1, np.int64)
    np.add.at(delta, a, 1)
    np.add.at(delta, b + 1, -1)
    return np.cumsum(delta[:-1]) > 0


def _chunks(documents: Iterable[np.ndarray], chunk_tokens: int):
    """(ids, first, last) of consecutive groups of whole documents."""
    group, size = [], 0
    for doc in documents:
        doc = np.asarray(doc, np.int64).ravel()
        if doc.size:
            group.append(doc)
            size += doc.size
        if size >= chunk_tokens:
            yield _joined(group)
            group, size = [], 0
    if group:
        yield _joined(group)


def _joined(group: list[np.ndarray]):
    ids = np.concatenate(group)
    lengths = np.array([d.size for d in group])
    first, last = np.zeros(ids.size, bool), np.zeros(ids.size, bool)
    first[np.cumsum(lengths) - lengths] = True
    last[np.cumsum(lengths) - 1] = True
    return ids, first, last


# ------------------------------------------------------------------------- labels
def _decide(ty: _Types, tally: np.ndarray | None) -> np.ndarray:
    """Reason code per type (see the module docstring for the order)."""
    begins = ~ty.cont if ty.wordpiece else (ty.marked if ty.marked.any() else ~ty.marked)
    surface_rule = np.select(
        [ty.clitic_form, ~begins, ty.listed, ty.word],
        [_CODE["clitic"], _CODE["piece"], _CODE["function"], _CODE["content"]],
        _CODE["not_a_word"])
    if tally is None:
        corpus_rule, seen = surface_rule, np.zeros(len(ty.listed), bool)
    else:
        t = dict(zip(_TALLIES, tally.astype(np.float64)))
        n = np.maximum(t["n"], 1)
        share = {k: v / n for k, v in t.items()}
        name = t["capital_mid"] / np.maximum(t["whole"], 1) >= SHARE
        corpus_rule = np.select(
            [share["placeholder"] >= SHARE, share["clitic"] >= SHARE,
             share["clitic_host"] >= SHARE, share["whole"] < SHARE, ~ty.word & ~ty.listed,
             ty.listed & ty.capital & ~ty.exempt & name, ty.listed],
            [_CODE[r] for r in ("placeholder", "clitic", "clitic_host", "piece", "not_a_word",
                                "proper_noun", "function")],
            _CODE["content"])
        seen = t["n"] > 0
    reasons = np.where(seen, corpus_rule, surface_rule)
    return np.where(ty.never >= 0, ty.never, reasons)


def label_function_words(surfaces: Sequence[str], function_words: Iterable[str],
                         documents: Iterable[np.ndarray] | None = None, *,
                         tokens: Sequence[str] | None = None,
                         special_ids: Iterable[int] = (),
                         chunk_tokens: int = 1 << 22) -> FunctionWordLabels:
    """Label each token type from its occurrences in ``documents`` (token-id arrays,
    the gold statistics stream), or by the surface rule when None (module docstring).

    ``surfaces``: each id's decoded text alone
    (:func:`normx_track.training.data.tokenizer.surface_forms`); ``tokens``: the
    vocabulary strings by id, which carry the word-start marks a decoder may drop
    (Metaspace decodes "▁the" alone as "the"); ``special_ids``: never labelled.
    """
    words = list(function_words)
    if tokens is not None and len(tokens) != len(surfaces):
        raise ValueError(f"{len(tokens)} vocabulary strings for {len(surfaces)} decoded texts")
    ty = _types(surfaces, tokens, words, special_ids)
    tally = None
    if documents is not None:
        parts = [_tally(*chunk, ty, surfaces) for chunk in _chunks(documents, chunk_tokens)]
        tally = np.sum(parts, axis=0) if parts else None
    reasons = _decide(ty, tally)
    labels = np.full(len(surfaces), np.nan)
    labels[np.isin(reasons, [_CODE[r] for r in FUNCTION_REASONS])] = 1.0
    labels[reasons == _CODE["content"]] = 0.0
    return FunctionWordLabels(labels=labels, reasons=reasons)
