"""Masked-LM batches: transformers' `DataCollatorForLanguageModeling` on our packed blocks
(DESIGN.md "Masked language models": 15 % of the non-special tokens, 80/10/10, labels
-100 elsewhere; whole-word masking as an option), with each block's mask a pure function
of the seed and the block's index (which carries the epoch: blocks are masked anew each
epoch, RoBERTa's dynamic masking). So a resumed run masks the blocks it replays as the
uninterrupted run did, N DDP ranks mask as one process does, and every evaluation masks
the validation blocks alike (its loss curve compares like with like)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from normx_track.errors import InputError

__all__ = ["MaskingCollator", "word_starts"]


def word_starts(tokenizer) -> np.ndarray:
    """[V] bool: the token begins a word (byte-level "Ġ", SentencePiece "▁", or a WordPiece
    token that is not a "##" continuation). Punctuation stays with the word before it. A
    tokenizer that marks none of these (WordLevel) is refused: every token would be read as
    one long word's piece."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    wordpiece = any(t is not None and t.startswith("##") for t in tokens)
    starts = np.array([t is not None and (not t.startswith("##") if wordpiece
                                          else t[:1] in ("Ġ", "▁"))
                       for t in tokens])
    if not starts.any():
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise InputError(f"whole-word masking needs a tokenizer that marks word starts; "
                         f"{name!s} ({type(tokenizer).__name__}) has no token starting with 'Ġ' "
                         "or '▁' and no '##' continuation: set data.whole_word_mask=false")
    return starts


class MaskingCollator:
    """Blocks ({"input_ids": [T], "index": block index}) -> {"input_ids", "labels"}."""

    def __init__(self, tokenizer, probability: float = 0.15, whole_word: bool = False,
                 seed: int = 0):
        if isinstance(probability, bool) or not 0 < probability < 1:  # as data.mlm_probability
            raise InputError(f"the masking probability must be in (0, 1), got {probability!r}")
        # Whole-word masking replaces every chosen piece by [MASK] (transformers' rule).
        replace = dict(mask_replace_prob=1.0, random_replace_prob=0.0) if whole_word else {}
        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=probability, whole_word_mask=whole_word,
            **replace)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.starts = torch.from_numpy(word_starts(tokenizer)) if whole_word else None
        self.seed = seed

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [self._mask(item["input_ids"][None], int(item["index"])) for item in items]
        return {"input_ids": torch.cat([r for r, _ in rows]),
                "labels": torch.cat([label for _, label in rows])}

    def _mask(self, ids: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One block [1, T], masked with its own generator."""
        state = np.random.SeedSequence([self.seed, index]).generate_state(2)
        self.collator.generator = torch.Generator().manual_seed(
            int(state[0]) << 32 | int(state[1]))
        special = torch.isin(ids, self.special)
        return self.collator.torch_mask_tokens(
            ids.clone(), special_tokens_mask=special.long(),
            offset_mapping=None if self.starts is None else self._offsets(ids))

    def _offsets(self, ids: torch.Tensor) -> np.ndarray:
        """Made-up character offsets [B, T, 2] that put a gap before each word start: the
        collator reads a new word where a token does not start where the last one ended."""
        step = 1 + self.starts[ids].long()
        end = step.cumsum(1)
        return torch.stack([end - 1, end], dim=-1).numpy()
