"""The evidence probe: evidence alignment and minimal-pair accuracy on minimal pairs
(DESIGN.md "Evidence alignment", "Minimal-pair accuracy").

Choices (documented here once)
------------------------------
* Words and cues. ``cue_word_indices`` index ``prefix.split()``; a cue word the tokenizer
  splits marks ALL its pieces as cue positions (`encoding.encode_pairs`). Probe text is
  tokenised as running text, after a space, where the tokenizer marks word starts
  (``leading_space``; off: as written, lm-eval 0.3's BLiMP convention).
* What is explained. The good word's first token at t, the last prefix token. The word
  being read at t is never ranked: not t itself (its LogAt is the model's own output logit
  by construction) and not the earlier pieces of the same word (a cue there is trivial);
  the positions of the earlier words are, for every method and layer, in the ranking and
  the softmax. A probe whose cues all lie in the word at t gets no evidence score and is
  counted in ``evidence_n_cue_at_prediction``.
* Contrastive. Good against bad at the first token where their tokenisations differ, the
  shared tokens appended to the input. The word read there is the good word when they
  share tokens (the whole prefix is ranked), else the prefix's last word as above. Pairs
  where one word's tokens begin the other's have no such token and no contrastive score.
* Baselines. The exact expectation under a uniformly random ranking
  (`metrics.random_average_precision`) and a uniform softmax (`metrics.random_dot_product`)
  over the same ranked positions. Ties in AP count as the expectation over orderings.
* Accuracy. The good word wins when its total log-probability given the prefix (all its
  tokens) exceeds the bad word's (`likelihood.continuation_logprobs`). Rows that carry
  BLiMP's whole sentences also get the standard BLiMP score: whole-sentence
  log-probability after a BOS/EOS token, good > bad.
* Prefixes longer than ``max_length`` keep their last tokens; cues cut off are dropped,
  and a pair left with none is counted (``evidence_n_cue_truncated``, warned once). Pairs
  whose words alone, or BLiMP sentences that, exceed ``max_length`` are skipped and counted
  (``pair_n_too_long``, ``blimp_n_too_long``).
* A diverged model (NaN scores) gives NaN for that pair, averaged out with nanmean.

The checks, the batch loop, the metric names and the pair counts are the evidence base's
(`normx_track.probes.evidence_base`), shared with the masked LM's probe.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from normx_track.attribution.normxlogit import attribute_many
from normx_track.attribution.scores import AttributionScores
from normx_track.keys import (
    BLIMP_ACCURACY, BLIMP_ACCURACY_BY_UID, BLIMP_N_PAIRS, BLIMP_N_TOO_LONG,
    EVIDENCE_N_CUE_AT_PREDICTION, EVIDENCE_N_CUE_TRUNCATED, PAIR_ACCURACY, PAIR_ACCURACY_BY_UID,
    PAIR_N_PAIRS, PAIR_N_SHARED_FIRST_TOKEN, PAIR_N_TOO_LONG)
from normx_track.modeling import context_size, model_device
# seeded_subset, nanmean, key_part, accuracy_by_uid and score_arrays lived here: old paths.
from normx_track.probes.common import accuracy_by_uid, key_part, nanmean, seeded_subset  # noqa: F401
from normx_track.probes.encoding import (EncodedPairs, NothingFitsError, encode_pairs,
                                         encode_sentences, pad_id)
from normx_track.probes.evidence_base import (EvidenceBase, ExplainedBatch, LayerwiseMethod,
                                              Ranking, score_arrays)
from normx_track.probes.files import MinimalPair
from normx_track.probes.likelihood import continuation_logprobs, logprobs_of_tokens

__all__ = ["EvidenceProbe", "seeded_subset"]

log = logging.getLogger(__name__)


class EvidenceProbe(EvidenceBase):
    """Evidence alignment and minimal-pair accuracy (module docstring for the choices).

    One forward pass per batch over prefix + good word explains the good word at t (and,
    with ``contrastive``, good against bad where they first differ) and gives the good
    word's log-probability, and the bad word's where it has at most one token past those
    the two share; prefix positions before the prediction point are compared with the cue
    positions by average precision and dot product, for NormXLogit, LogAt, the norm factor
    alone and the random expectation, per layer (logit lens) for NormXLogit and LogAt.
    Accuracy takes one more batched pass for the longer bad words only (and two for
    BLiMP's sentences). Keys::

        normx/evidence_ap/<method>, normx/evidence_dp/<method>   normxlogit, logat, norm,
            random (+ normxlogit_contrastive, logat_contrastive, random_contrastive)
        normx/evidence_ap_by_layer/<normxlogit|logat>/layer_NN     NN: 00 embeddings .. L
        normx/evidence_dp_by_layer/<normxlogit|logat>/layer_NN     (the same, DP)
        normx/evidence_{ap,dp}_by_layer/<mixing>/layer_NN, normx/evidence_{ap,dp}/<mixing>
            with layerwise=[<mixing>, ...] (attention, rollout, value_zeroing, alti,
            globenc): row t of layer NN's matrix, NN 01 .. L; the bare keys: the last layer
        normx/evidence_n_pairs, normx/evidence_n_pairs_contrastive (the scored pairs)
        normx/evidence_n_cue_at_prediction  pairs whose cues all lie in the word at t
        normx/evidence_n_cue_truncated      pairs whose cues were all cut (long prefix)
        normx/pair_accuracy, normx/pair_n_pairs, normx/pair_n_shared_first_token
        normx/pair_accuracy_by_uid/<UID>                (when the pairs carry several UIDs)
        normx/blimp_accuracy, normx/blimp_n_pairs, normx/blimp_accuracy_by_uid/<UID>
        normx/pair_n_too_long, normx/blimp_n_too_long   skipped: longer than max_length
        normx/probe/leading_space, normx/probe/mean_pieces_per_word,
        normx/probe/cue_split_share                     how the probe text tokenises

        probe = EvidenceProbe(load_probe_file("probes.jsonl"), tokenizer)
        row = probe(hf_model)   # {"normx/evidence_ap/normxlogit": 0.71, ...}
    """

    def __init__(self, pairs: Sequence[MinimalPair] | str | Path, tokenizer, batch_size: int = 128,
                 layers: str | Sequence[int] = "all", seed: int = 0, *,
                 max_pairs: int | None = None, max_length: int | None = None,
                 contrastive: bool = True, norm_factor: str = "word_embedding",
                 by_uid: bool = True, leading_space: bool = True,
                 layerwise: Sequence[LayerwiseMethod | str] = (),
                 model: nn.Module | None = None):
        """
        pairs: minimal pairs, or the path of a probe file (`load_probe_file`).
        batch_size: pairs per forward pass. layers: "all", "last" or layer indices for the
            per-layer AP. seed: picks ``max_pairs`` of them (None: all) when there are more.
        max_length: the most positions a row may use (the model's context size).
        leading_space: tokenise probe text as running text (`encoding.encode_pairs`).
        layerwise: methods with per-layer scores, ranked as NormXLogit's (`evidence_base`):
            context-mixing methods by name (``["alti", "rollout"]``, row t of each layer's
            matrix) or `LayerwiseMethod` objects.
        model: try the layer-wise methods on it now: an architecture one of them cannot
            read is refused here, in one line naming both (else at the first call).
        """
        super().__init__(pairs, tokenizer, batch_size, layers, seed, max_pairs=max_pairs,
                         max_length=max_length, contrastive=contrastive,
                         norm_factor=norm_factor, by_uid=by_uid, leading_space=leading_space,
                         layerwise=layerwise, model=model)

    def _encode(self, pairs, tokenizer, max_length, leading_space) -> None:
        self.encoded, self.stats = _encode_prefixed([p for p in pairs if p.has_prefix],
                                                    tokenizer, max_length, leading_space)
        self.rows = self.encoded
        self.sentences = encode_sentences([p for p in pairs if p.has_sentences], tokenizer,
                                          max_length, leading_space)
        if self.sentences is not None:
            self.stats[BLIMP_N_TOO_LONG] = self.sentences.n_too_long
            if not self.sentences.pairs:
                self.sentences = None
        if self.encoded is None and self.sentences is None:
            raise NothingFitsError(f"{pairs[0].source}: no minimal pair fits in the model's "
                                   f"{max_length} positions")
        _warn_cut(self.stats, max_length)
        self.pad_id = pad_id(tokenizer)

    def _check_model(self, model: nn.Module) -> None:
        size, enc, sentences = context_size(model), self.encoded, self.sentences
        if size is None:
            return
        longest = 0
        if enc is not None:
            longest = max(len(c) + max(len(g), len(b))
                          for c, g, b in zip(enc.context, enc.good_tokens, enc.bad_tokens))
        if sentences is not None:
            longest = max(longest, *(1 + max(len(g), len(b))
                                     for g, b in zip(sentences.good, sentences.bad)))
        if longest > size:
            raise ValueError(f"a minimal pair takes {longest} positions but the model has "
                             f"{size}: build the EvidenceProbe with max_length={size}")

    # ------------------------------------------------------------------ evidence
    def _explain(self, model: nn.Module, batch: EncodedPairs) -> ExplainedBatch:
        """Scores [B, T] per method (and [L, B, T] per layer) from one forward pass, and
        the good words' log-probabilities read from it."""
        device = model_device(model)
        explain = [(batch.good_ids, None, batch.last)]
        if self.contrastive:  # pairs without a differing token get a dummy foil, unscored
            explain.append((batch.contrast_good, batch.contrast_bad.clamp(min=0),
                            batch.contrast_position))
        a, *c = attribute_many(model, batch.input_ids.to(device),
                               batch.attention_mask.to(device), explain, layers=self.layers,
                               norm_factor=self.norm_factor)
        scores, stacks, contrastive = score_arrays(a, c[0] if c else None)
        word_logp = _word_logprobs(a, model, batch)
        positions = np.arange(batch.input_ids.shape[1])[None, :]
        cue = batch.cue_mask.numpy()
        # The word read at t (t and its earlier pieces) is never ranked.
        ranking = Ranking.of(cue, positions < batch.word_start.numpy()[:, None])
        n_cue_at_t = int((batch.has_cues.numpy() & ~ranking.keep).sum())
        contrast = None
        if contrastive:
            contrast = Ranking.of(cue, positions < batch.contrast_word_start.numpy()[:, None],
                                  batch.has_contrast.numpy())
        return ExplainedBatch(ranking, scores, stacks, a.layers, contrast, contrastive,
                              carry=(word_logp, n_cue_at_t))

    def _inputs(self, batch: EncodedPairs):
        return batch.input_ids, batch.attention_mask, batch.last, batch.good_ids

    def _evidence_metrics(self, carried: list) -> dict[str, float]:
        return {EVIDENCE_N_CUE_AT_PREDICTION: sum(n for _, n in carried)}

    # ------------------------------------------------------------------ accuracy
    def _accuracy(self, model: nn.Module, carried: list) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.encoded is not None:
            good, bad = (np.concatenate(w) for w in zip(*(lp for lp, _ in carried)))
            out.update(self._pair_accuracy(model, good, bad))
        if self.sentences is not None:
            out.update(self._blimp_accuracy(model))
        return out

    def _pair_accuracy(self, model: nn.Module, good_logp: np.ndarray, bad_logp: np.ndarray
                       ) -> dict[str, float]:
        """Good wins when its whole-word log-probability beats the bad word's, both read
        from the evidence passes where they can be (`_word_logprobs`); the bad words that
        go on past their first differing token take one more pass."""
        enc = self.encoded
        n = len(enc)
        rest = np.flatnonzero(np.isnan(bad_logp))  # (a diverged model's NaN: NaN again)
        if len(rest):
            bad_logp = bad_logp.copy()
            bad_logp[rest] = continuation_logprobs(
                model, [enc.context[i] for i in rest], [enc.bad_tokens[i] for i in rest],
                self.batch_size, self.pad_id)
        correct = good_logp > bad_logp
        out = {PAIR_ACCURACY: float(correct.mean()), PAIR_N_PAIRS: n,
               PAIR_N_SHARED_FIRST_TOKEN: int((enc.good_ids == enc.bad_ids).sum())}
        out.update(self._by_uid(PAIR_ACCURACY_BY_UID, correct, enc.pairs))
        return out

    def _blimp_accuracy(self, model: nn.Module) -> dict[str, float]:
        s = self.sentences
        n = len(s.good)
        logp = continuation_logprobs(model, s.context * 2, s.good + s.bad, self.batch_size,
                                     self.pad_id)
        correct = logp[:n] > logp[n:]
        out = {BLIMP_ACCURACY: float(correct.mean()), BLIMP_N_PAIRS: n}
        out.update(self._by_uid(BLIMP_ACCURACY_BY_UID, correct, s.pairs))
        return out


def _word_logprobs(a: AttributionScores, model: nn.Module, batch: EncodedPairs
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The good and the bad words' log-probabilities given the prefix, read from the pass
    over prefix + good word: the first token's from the logits at t the attribution
    computed, the later tokens' from the states after it. The bad word's too where it has
    at most one token past those it shares with the good word (the states before the
    first differing token are the same for both); NaN for the rest (another pass)."""
    at_t = a.logits.float().log_softmax(-1).cpu()  # [B, V]
    rows = torch.arange(len(batch))
    second = [len(ctx) + 1 for ctx in batch.context]  # where each word's second token is
    shared = (batch.contrast_position - batch.last).tolist()  # leading tokens in common
    readable = np.array([len(b) <= n + 1 for b, n in zip(batch.bad_tokens, shared)])
    good = at_t[rows, batch.good_ids].double().numpy() + logprobs_of_tokens(
        model, a.final_states, second, [g[1:] for g in batch.good_tokens])
    bad = at_t[rows, batch.bad_ids].double().numpy() + logprobs_of_tokens(
        model, a.final_states, second,
        [b[1:] if r else [] for b, r in zip(batch.bad_tokens, readable)])
    bad[~readable] = np.nan
    return good, bad


def _encode_prefixed(pairs: Sequence[MinimalPair], tokenizer, max_length: int | None,
                     leading_space: bool) -> tuple[EncodedPairs | None, dict[str, float]]:
    """The one-prefix pairs encoded (None when there are none, or none fits) and their
    stats (`EncodedPairs.stats`)."""
    if not pairs:
        return None, {}
    try:
        encoded = encode_pairs(pairs, tokenizer, max_length, leading_space, skip_too_long=True)
    except NothingFitsError:  # the sentences may still fit
        return None, {PAIR_N_TOO_LONG: len(pairs)}
    return encoded, dict(encoded.stats)


def _warn_cut(stats: dict[str, float], max_length: int | None) -> None:
    """One warning per probe for what a short context cut or skipped."""
    what = {EVIDENCE_N_CUE_TRUNCATED: "lose every cue word with the start of a prefix longer "
                                      "than the context (accuracy only)",
            PAIR_N_TOO_LONG: "are skipped: their good/bad words alone do not fit",
            BLIMP_N_TOO_LONG: "are skipped for the BLiMP sentence score: a sentence does not "
                              "fit"}
    for key, text in what.items():
        if stats.get(key):
            log.warning("evidence probe: %d minimal pairs %s in the model's %s positions "
                        "(counted in %s)", stats[key], text, max_length, key)
