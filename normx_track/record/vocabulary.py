"""A tokenizer's vocabulary as the record keeps it: token strings by id (``vocab.json``),
fingerprinted by `normx_track.record.store.vocab_hash`."""
from __future__ import annotations


def token_strings(tokenizer) -> list[str]:
    """Token strings by id, ``len(tokenizer)`` of them (added tokens included); an id
    without a token gives "". Read by id: never in the dict order of ``get_vocab()``."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    return [by_id.get(i, "") for i in range(len(tokenizer))]
