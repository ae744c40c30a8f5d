"""Closed-class (function) words for the ``function_word`` gold signal (DESIGN.md).

The synthetic corpus knows its own; runs on English text use `ENGLISH`; other languages
pass a file (``tracker.function_words=FILE``: words separated by whitespace or newlines).

`ENGLISH` was compiled for normx-track from the closed word classes of English as the
reference grammars define them (Quirk et al. 1985, *A Comprehensive Grammar of the English
Language*; Biber et al. 1999, *Longman Grammar of Spoken and Written English*):
determiners and quantifiers, pronouns, prepositions, conjunctions, auxiliary and modal
verbs, and the particles ``not``/``to``/existential ``there``, plus the clitics as a
byte-level BPE splits them off: "'s", "'re", "'ve", "'ll", "'d", "'m", and both "n't" and
"'t" (GPT-2's rule splits "don't" as "don" + "'t"). Labels sit on whole words and on
clitics as their tokens occur (`normx_track.gold.word_labels`). "I" is listed with its
capital: a word listed so is always capitalised, so it is never taken for a proper noun.
Adverbs and other open-class words are left out on purpose, even frequent ones ("very",
"just"): the signal separates closed from open class.
"""
from __future__ import annotations

from pathlib import Path

from normx_track.errors import InputError

__all__ = ["ENGLISH", "FunctionWordsError", "resolve_function_words"]


class FunctionWordsError(InputError):
    """The function-word list cannot be read; the message names the file and the key."""


_DETERMINERS = """a an the this that these those my your his her its our their some any no
    every each either neither all both half several many much more most few fewer less
    least enough such what which whose whatever whichever another other"""
_PRONOUNS = """I me myself we us ourselves you yourself yourselves he him himself she
    herself it itself they them themselves mine yours hers ours theirs one ones someone
    somebody something anyone anybody anything everyone everybody everything nobody
    nothing none who whom whoever whomever"""
_PREPOSITIONS = """about above across after against along amid among around as at before
    behind below beneath beside besides between beyond by despite down during except for
    from in inside into like near of off on onto out outside over past per since than
    through throughout till to toward towards under underneath unlike until up upon via
    with within without"""
_CONJUNCTIONS = """and but or nor so yet because although though while whereas if unless
    whether once lest when whenever where wherever"""
_AUXILIARIES = """be am is are was were been being have has had having do does did doing
    will would shall should can could may might must ought"""
_PARTICLES = """not there 's 're 've 'll 'd 'm n't 't"""

ENGLISH: frozenset[str] = frozenset(
    " ".join((_DETERMINERS, _PRONOUNS, _PREPOSITIONS, _CONJUNCTIONS, _AUXILIARIES,
              _PARTICLES)).split())


def resolve_function_words(spec: str | None, corpus_own: set[str] | None,
                           key: str = "tracker.function_words") -> set[str] | None:
    """The function words a run uses.

    spec None: the corpus's own list when it has one (the synthetic corpus), else
    `ENGLISH`; "english": `ENGLISH`; "none": no function-word signal; anything else: a
    file of words."""
    if spec is None:
        return set(corpus_own) if corpus_own else set(ENGLISH)
    if spec == "english":
        return set(ENGLISH)
    if spec == "none":
        return None
    path = Path(spec)
    try:
        words = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise FunctionWordsError(f"{key}: cannot read {path} ({reason})") from None
    if not words:
        raise FunctionWordsError(f"{key}: {path} lists no words")
    return set(words)
