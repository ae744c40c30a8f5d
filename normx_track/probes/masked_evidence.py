"""The evidence probe for masked LMs (BERT / RoBERTa; DESIGN.md "Masked language
models"), writing the causal `EvidenceProbe`'s metric names so curves line up across
objectives.

Choices (documented here once)
------------------------------
* Input. The good sentence's one-prefix form with the target word replaced by ONE mask:
  ``[CLS] prefix [MASK] [SEP]`` (``<s> ... </s>`` for RoBERTa). The prefix is tokenised
  as the causal probe does it (`encoding.encode_pairs`: cue words mark all their pieces;
  running text, after a space where the tokenizer marks word starts, by default).
* Single-token targets, as the authors: a pair whose good or bad word continues the
  prefix as several tokens gives accuracy only and is counted in
  ``normx/evidence_n_multitoken_target``.
* What is explained. The good token at the mask (``contrastive``: good against bad
  there). The mask position is dropped from the ranking and the softmax; special tokens
  get scores but are not ranked unless ``rank_specials`` (the authors' code ranks them).
  AP / DP / random over the ranked positions, per layer for NormXLogit and LogAt: the
  evidence base's (`normx_track.probes.evidence_base`), shared with the causal probe, as
  are the checks, the batch loop and the pair counts.
* Accuracy. ``pair_accuracy``: PLL-word-l2r (`normx_track.probes.pll`) of prefix + good
  word against prefix + bad word, all pairs; ``blimp_accuracy``: the same on BLiMP's whole
  sentences; ``mask_accuracy`` (single-token pairs, the authors'): P(good) > P(bad) at the
  mask, read from the evidence passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.masked import attribute_masked_many, is_masked_lm
from normx_track.keys import (
    BLIMP_ACCURACY, BLIMP_ACCURACY_BY_UID, BLIMP_N_PAIRS, EVIDENCE_N_MULTITOKEN_TARGET,
    MASK_ACCURACY, MASK_N_PAIRS, PAIR_ACCURACY, PAIR_ACCURACY_BY_UID, PAIR_N_PAIRS)
from normx_track.modeling import encoder_context_size, model_device
from normx_track.probes.encoding import encode_pairs, pad_id
from normx_track.probes.evidence_base import (EvidenceBase, ExplainedBatch, LayerwiseMethod,
                                              Ranking, score_arrays)
from normx_track.probes.files import MinimalPair
from normx_track.probes.pll import encode_with_word_ids, pll_scores
from normx_track.text import marks_word_starts

__all__ = ["MaskedEvidenceProbe", "MaskedRows", "masked_rows"]


@dataclass
class MaskedRows:
    """``[CLS] prefix [MASK] [SEP]`` rows of the single-token pairs, right-padded."""

    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] bool
    cue_mask: Tensor  # [B, T] bool: every piece of every cue word
    special_mask: Tensor  # [B, T] bool: the [CLS] and [SEP] the row was built with
    mask_position: Tensor  # [B]
    good_ids: Tensor  # [B]
    bad_ids: Tensor  # [B]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: slice) -> "MaskedRows":
        width = int(self.attention_mask[index].sum(1).max())
        return MaskedRows(*(x[index, :width] if x.dim() == 2 else x[index]
                            for x in vars(self).values()))

    def ranked(self, rank_specials: bool = False) -> Tensor:
        """[B, T] bool: the positions in the ranking (real, not the mask, not a special
        token unless ``rank_specials``)."""
        positions = torch.arange(self.input_ids.shape[1])[None, :]
        out = self.attention_mask & (positions != self.mask_position[:, None])
        return out if rank_specials else out & ~self.special_mask


def _special_ids(tokenizer) -> tuple[int, int, int]:
    """(start, end, mask) ids: [CLS]/[SEP] (RoBERTa's <s>/</s>), else BOS/EOS."""
    def first(*names):
        for name in names:
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"the tokenizer has no {' or '.join(names)}: a masked LM probe "
                         f"needs its special tokens")
    return (first("cls_token_id", "bos_token_id"), first("sep_token_id", "eos_token_id"),
            first("mask_token_id"))


def masked_rows(pairs: Sequence[MinimalPair], tokenizer, max_length: int | None = None,
                leading_space: bool = True) -> tuple[MaskedRows | None, list[int]]:
    """The rows of the single-token pairs, and the indices (into ``pairs``) of the pairs
    they came from; None when no pair is single-token."""
    # Three positions go to [CLS], [SEP] and the mask: the prefix keeps the rest.
    enc = encode_pairs(pairs, tokenizer, None if max_length is None else max_length - 2,
                       leading_space)
    start, end, mask = _special_ids(tokenizer)
    single = [i for i in range(len(enc))
              if len(enc.good_tokens[i]) == 1 and len(enc.bad_tokens[i]) == 1]
    if not single:
        return None, []
    width = max(len(enc.context[i]) for i in single) + 3
    shape = (len(single), width)
    ids = torch.full(shape, pad_id(tokenizer), dtype=torch.long)
    attention, cue, special = (torch.zeros(shape, dtype=torch.bool) for _ in range(3))
    for b, i in enumerate(single):
        n = len(enc.context[i])
        ids[b, : n + 3] = torch.tensor([start, *enc.context[i], mask, end])
        attention[b, : n + 3] = True
        cue[b, 1: n + 1] = enc.cue_mask[i, :n]
        special[b, [0, n + 2]] = True
    mask_position = attention.sum(1) - 2
    rows = MaskedRows(ids, attention, cue, special, mask_position,
                      enc.good_ids[single], enc.bad_ids[single])
    return rows, single


class MaskedEvidenceProbe(EvidenceBase):
    """Evidence alignment, mask accuracy and PLL accuracy of a masked LM (module docstring
    for the choices). Keys: those of `EvidenceProbe` (``normx/evidence_ap/<method>``,
    ``.../evidence_dp/...``, ``evidence_{ap,dp}_by_layer/...`` (context-mixing methods
    too, with ``layerwise``), ``evidence_n_pairs(_contrastive)``,
    ``pair_accuracy``, ``pair_n_pairs``, ``blimp_*``, ``*_by_uid/<UID>``) and
    ``normx/evidence_n_multitoken_target``, ``normx/mask_accuracy``, ``normx/mask_n_pairs``.

        probe = MaskedEvidenceProbe(load_probe_file("probes.jsonl"), tokenizer)
        row = probe(bert_for_masked_lm)
    """

    what = "masked evidence probe"

    def __init__(self, pairs: Sequence[MinimalPair] | str | Path, tokenizer,
                 batch_size: int = 128, layers: str | Sequence[int] = "all", seed: int = 0, *,
                 max_pairs: int | None = None, max_length: int | None = None,
                 contrastive: bool = True, norm_factor: str = "word_embedding",
                 rank_specials: bool = False, by_uid: bool = True, pll_batch_size: int = 512,
                 leading_space: bool = True,
                 layerwise: Sequence[LayerwiseMethod | str] = (),
                 model: nn.Module | None = None):
        """As `EvidenceProbe`; ``rank_specials`` ranks [CLS]/[SEP] as the authors' code
        does; ``pll_batch_size``: masked copies per forward pass of the PLL;
        ``leading_space``: probe text as running text (`encoding.encode_pairs`; the PLL's
        sentences after a space where the tokenizer marks word starts); ``layerwise``:
        context-mixing methods by name (row t = the mask position of each layer's matrix)
        or `LayerwiseMethod`s, ranked as NormXLogit is (specials, the mask dropped);
        ``model``: try them on it now (an architecture one cannot read is refused)."""
        self.rank_specials, self.pll_batch_size = rank_specials, pll_batch_size
        super().__init__(pairs, tokenizer, batch_size, layers, seed, max_pairs=max_pairs,
                         max_length=max_length, contrastive=contrastive,
                         norm_factor=norm_factor, by_uid=by_uid, leading_space=leading_space,
                         layerwise=layerwise, model=model)

    def _encode(self, pairs, tokenizer, max_length, leading_space) -> None:
        self.prefixed = [p for p in pairs if p.has_prefix]
        self.rows, single = (masked_rows(self.prefixed, tokenizer, max_length, leading_space)
                             if self.prefixed else (None, []))
        self.n_multitoken = len(self.prefixed) - len(single)
        self.with_sentences = [p for p in pairs if p.has_sentences]
        # Every sentence PLL scores, in this order: prefix + good, prefix + bad (one per
        # prefixed pair), then BLiMP's good and bad sentences.
        texts = ([f"{p.prefix} {p.good}" for p in self.prefixed]
                 + [f"{p.prefix} {p.bad}" for p in self.prefixed]
                 + [p.sentence_good for p in self.with_sentences]
                 + [p.sentence_bad for p in self.with_sentences])
        self.sources = ([p.source for p in self.prefixed] * 2
                        + [p.source for p in self.with_sentences] * 2)
        space = " " if leading_space and marks_word_starts(tokenizer) else ""
        self.sentences = encode_with_word_ids(tokenizer, [space + text for text in texts])
        self._check_lengths(max_length)
        self.mask_id, self.pad_id = int(tokenizer.mask_token_id), pad_id(tokenizer)

    def _check_model(self, model: nn.Module) -> None:
        if not is_masked_lm(model):
            raise ValueError(f"MaskedEvidenceProbe needs a masked LM, got {type(model).__name__}")
        self._check_lengths(encoder_context_size(model))

    def _has_evidence(self) -> bool:
        return bool(self.prefixed)  # evidence keys even when no pair is single-token

    # ------------------------------------------------------------------ evidence
    def _explain(self, model: nn.Module, batch: MaskedRows) -> ExplainedBatch:
        device = model_device(model)
        explain = [(batch.good_ids, None)]
        if self.contrastive:
            explain.append((batch.good_ids, batch.bad_ids))
        a, *c = attribute_masked_many(model, batch.input_ids.to(device),
                                      batch.attention_mask.to(device), explain, self.layers,
                                      self.norm_factor, batch.mask_position)
        scores, stacks, contrastive = score_arrays(a, c[0] if c else None)
        logits = a.logits.cpu()  # softmax is monotone: P(good) > P(bad) iff logits are
        rows = torch.arange(len(batch))
        mask_correct = (logits[rows, batch.good_ids] > logits[rows, batch.bad_ids]).numpy()
        # Rows whose cues survived truncation are scored; the contrast ranks the same.
        ranking = Ranking.of(batch.cue_mask.numpy(), batch.ranked(self.rank_specials).numpy())
        return ExplainedBatch(ranking, scores, stacks, a.layers,
                              ranking if contrastive else None, contrastive, carry=mask_correct)

    def _inputs(self, batch: MaskedRows):
        return batch.input_ids, batch.attention_mask, batch.mask_position, batch.good_ids

    def _evidence_metrics(self, carried: list) -> dict[str, float]:
        correct = np.concatenate(carried) if carried else np.zeros(0, bool)
        return {EVIDENCE_N_MULTITOKEN_TARGET: self.n_multitoken, MASK_N_PAIRS: len(correct),
                MASK_ACCURACY: float(correct.mean()) if len(correct) else float("nan")}

    # ------------------------------------------------------------------ accuracy
    def _accuracy(self, model: nn.Module, carried: list) -> dict[str, float]:
        """One batched PLL over every sentence (one-prefix good and bad, BLiMP's)."""
        pll = pll_scores(model, *self.sentences, self.mask_id, self.pad_id,
                         self.pll_batch_size)
        n_pairs, n_blimp = len(self.prefixed), len(self.with_sentences)
        out: dict[str, float] = {}
        if n_pairs:
            correct = pll[:n_pairs] > pll[n_pairs: 2 * n_pairs]
            out.update({PAIR_ACCURACY: float(correct.mean()), PAIR_N_PAIRS: n_pairs})
            out.update(self._by_uid(PAIR_ACCURACY_BY_UID, correct, self.prefixed))
        if n_blimp:
            blimp = pll[2 * n_pairs:]
            correct = blimp[:n_blimp] > blimp[n_blimp:]
            out.update({BLIMP_ACCURACY: float(correct.mean()), BLIMP_N_PAIRS: n_blimp})
            out.update(self._by_uid(BLIMP_ACCURACY_BY_UID, correct, self.with_sentences))
        return out

    def _check_lengths(self, max_length: int | None) -> None:
        longest = max([len(row) for row in self.sentences[0]]
                      + [self.rows.input_ids.shape[1] if self.rows is not None else 0])
        if max_length is None or longest <= max_length:
            return
        i = max(range(len(self.sources)), key=lambda k: len(self.sentences[0][k]))
        where = self.sources[i] or "a minimal pair"
        raise ValueError(f"{where}: a sentence takes {longest} positions with its special "
                         f"tokens but the model has {max_length}: build the probe with "
                         f"max_length={max_length} (prefixes are cut; whole sentences "
                         f"are not)")
