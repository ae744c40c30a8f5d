"""Probe and explanation text as a tokenizer sees it (DESIGN.md "Evidence alignment":
probe text is tokenised as running text). Used by the attribution CLI and the probes.

* `marks_word_starts`: whether the tokenizer folds the space before a word into the
  word's first token (byte-level BPE, Metaspace), read from what it does.
* `running_text`: text as it would appear mid-text (after a space).
* `continuation_tokens`: a word's tokens as they continue a context.
* `surface_forms`: each token id's text as the tokenizer decodes it alone.
"""
from __future__ import annotations

__all__ = ["continuation_tokens", "encode_text", "marks_word_starts", "running_text",
           "surface_forms", "token_ids", "word_first_token"]

_COMMON_WORDS = ("the", "a", "of", "and", "to", "in", "is", "I")


def encode_text(tokenizer, text: str, **kw) -> dict:
    """The tokenizer's encoding of ``text`` without special tokens (as in training)."""
    return tokenizer(text, add_special_tokens=False, **kw)


def token_ids(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` without special tokens, as ints."""
    return [int(i) for i in encode_text(tokenizer, text)["input_ids"]]


def marks_word_starts(tokenizer) -> bool:
    """Whether the tokenizer folds the space before a word into the word's first token
    (byte-level BPE's "Ġ", Metaspace's "▁" where no space is prepended), read from what
    it does, not from its class: for some common word w, " w" tokenises unlike "w", not as
    a bare space token and then more, and exactly as w does mid-text (after "x ").
    Tokenizers that prepend the mark themselves (SentencePiece with a prefix space) or drop
    spaces (WordPiece) give False: their sentence-initial words are already as mid-text."""
    space = token_ids(tokenizer, " ")
    context = token_ids(tokenizer, "x")
    for word in _COMMON_WORDS:
        alone, spaced = token_ids(tokenizer, word), token_ids(tokenizer, " " + word)
        if alone == spaced or spaced[: len(space)] == space:
            continue
        mid = token_ids(tokenizer, "x " + word)
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
    ids = token_ids(tokenizer, " " + word)
    if not ids:
        raise ValueError(f"the tokenizer gives no token for {word!r}")
    return ids


def word_first_token(tokenizer, word: str, context: str = "") -> int:
    """The first of `continuation_tokens`."""
    return continuation_tokens(tokenizer, word, context)[0]


def surface_forms(tokenizer) -> list[str]:
    """Each token id's text as the tokenizer decodes it alone: byte-level pieces become
    their bytes ("Ċ" a newline, a lone UTF-8 lead byte "\ufffd"), SentencePiece's "▁" a
    space. Ids without a token give ""."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return ["" if t is None else tokenizer.convert_tokens_to_string([t]) for t in tokens]
