"""What users hand the tracker, checked: the vocabulary in any of its usual forms, and a
saved tracker state (a checkpoint's entry may be damaged, or another program's)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from normx_track.errors import InputError


def vocab_by_id(vocab: Any, size: int) -> list[str] | None:
    """Token strings by id from a list of them, a tokenizer (``get_vocab()``, else
    ``convert_ids_to_tokens``) or a ``{token: id}`` dict (read by id, not in dict order)."""
    if vocab is None:
        return None
    if callable(getattr(vocab, "get_vocab", None)):
        vocab = vocab.get_vocab()
    elif callable(getattr(vocab, "convert_ids_to_tokens", None)):
        vocab = list(vocab.convert_ids_to_tokens(list(range(size))))
    if isinstance(vocab, Mapping):
        by_id = {}
        for token, index in vocab.items():
            if not isinstance(token, str) or isinstance(index, bool) or not isinstance(index, int):
                raise InputError(f"vocab: a {{token: id}} dict maps strings to ints; it has "
                                 f"{token!r}: {index!r}")
            by_id[index] = token
        missing = sorted(set(range(len(by_id))) - set(by_id))
        if missing:
            raise InputError(f"vocab: the {{token: id}} dict's ids are not 0..{len(by_id) - 1}: "
                             f"no token for id(s) {missing[:5]}")
        return [by_id[i] for i in range(len(by_id))]
    if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Sequence):
        raise InputError(f"vocab: pass token strings by id (a list), a tokenizer (with "
                         f"get_vocab()) or a {{token: id}} dict; got {type(vocab).__name__}")
    for index, token in enumerate(vocab):
        if token is not None and not isinstance(token, str):
            raise InputError(f"vocab[{index}] is {type(token).__name__} {token!r}, not a token "
                             "string; pass token strings by id, a tokenizer or a {token: id} dict")
    return list(vocab)


IDENTITY = ("run_id", "vocab_hash")  # which run's record, and which tokenizer, a state is of


def state_identity(state: Mapping[str, Any]) -> dict[str, str]:
    """The run id and vocab hash a state carries (states written before them carry none)."""
    found = {}
    for key in IDENTITY:
        value = state.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"tracker state: {key} must be a string, got {value!r}")
        if value is not None:
            found[key] = value
    return found


def checked_state(state: Any) -> tuple[int, int | None, dict[str, tuple[float, int]]]:
    """(last_step, tokens_seen, losses) of a `Tracker.state_dict()`, each key checked."""
    if not isinstance(state, Mapping):
        raise InputError(f"tracker state: expected the dict Tracker.state_dict() returns, got "
                         f"{type(state).__name__}")
    unknown = sorted(set(state) - {"last_step", "tokens_seen", "losses", *IDENTITY})
    if unknown:
        raise InputError(f"tracker state: unknown key(s) {unknown}; a Tracker.state_dict() "
                         "holds last_step, tokens_seen, losses, run_id and vocab_hash")

    def whole(key: str, value: Any, least: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not np.isfinite(value) or value != int(value) or value < least:
            raise InputError(f"tracker state: {key} must be a whole number >= {least}, got "
                             f"{value!r}")
        return int(value)

    last_step = whole("last_step", state.get("last_step", -1), -1)
    tokens = state.get("tokens_seen")
    tokens = None if tokens is None else whole("tokens_seen", tokens, 0)
    losses = state.get("losses") or {}
    if not isinstance(losses, Mapping):
        raise InputError(f"tracker state: losses must map a loss name to [value, step], got "
                         f"{type(losses).__name__} {losses!r}")
    checked = {}
    for key, pair in losses.items():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or isinstance(pair[0], bool) \
                or not isinstance(pair[0], (int, float)):
            raise InputError(f"tracker state: losses[{key!r}] must be [value, step], got {pair!r}")
        checked[str(key)] = (float(pair[0]), whole(f"losses[{key!r}] step", pair[1], 0))
    return last_step, tokens, checked
