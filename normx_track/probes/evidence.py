"""The evidence probe: evidence alignment and minimal-pair accuracy on minimal pairs
(DESIGN.md "Evidence alignment", "Minimal-pair accuracy").

Choices (documented here once)
------------------------------
* Words and cues. ``cue_word_indices`` index ``prefix.split()``; a cue word the tokenizer
  splits marks ALL its pieces as cue positions (`files.encode_pairs`). Probe text is
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
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from normx_track.attribution.normxlogit import attribute_many, context_size, eval_mode, model_device
from normx_track.probes.likelihood import continuation_logprobs, logprobs_from_states
from normx_track.gold.metrics import (
    average_precision_rows,
    dot_product_alignment_rows,
    random_baselines_rows,
)
from normx_track.probes.files import (EncodedPairs, MinimalPair, NothingFitsError,
                                      encode_pairs, encode_sentences, load_probe_file, pad_id)

__all__ = ["EvidenceProbe", "seeded_subset"]

from normx_track.keys import (  # noqa: E402,F401 - the names this probe writes
    BLIMP_ACCURACY, BLIMP_ACCURACY_BY_UID, BLIMP_N_PAIRS, BLIMP_N_TOO_LONG, CONTRASTIVE_METHODS,
    EVIDENCE_AP, EVIDENCE_AP_BY_LAYER, EVIDENCE_DP, EVIDENCE_N_CUE_AT_PREDICTION,
    EVIDENCE_N_CUE_TRUNCATED, EVIDENCE_N_PAIRS, EVIDENCE_N_PAIRS_CONTRASTIVE, METHODS,
    PAIR_ACCURACY, PAIR_ACCURACY_BY_UID, PAIR_N_PAIRS, PAIR_N_SHARED_FIRST_TOKEN,
    PAIR_N_TOO_LONG)

log = logging.getLogger(__name__)
T = TypeVar("T")


def seeded_subset(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` of ``items`` chosen with ``seed``, in their original order (all if n is None
    or there are no more than n)."""
    items = list(items)
    if n is None or len(items) <= n:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).any():
        return math.nan
    return float(np.nanmean(arr))


def key_part(text: str) -> str:
    """A UID or name made safe for a slash-separated metric key."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text) or "none"


def accuracy_by_uid(key: str, correct: np.ndarray, pairs: Sequence[MinimalPair]) -> dict:
    """Accuracy per paradigm (``key`` with ``{uid}``), when the pairs hold two or more."""
    uids = np.array([p.uid for p in pairs])
    if len(set(uids)) < 2:
        return {}
    return {key.format(uid=key_part(u)): float(correct[uids == u].mean())
            for u in sorted(set(uids))}


def score_arrays(a, contrast=None) -> tuple[dict, dict, dict]:
    """An attribution's scores as numpy: per method [B, T], per layer [L, B, T], and the
    contrastive variants' (from the attribution explaining good against bad)."""
    def numpy(tensors: dict) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in tensors.items()}

    scores = numpy({"normxlogit": a.normxlogit, "logat": a.logat, "norm": a.norm})
    stacks = numpy({"normxlogit": a.normxlogit_layers, "logat": a.logat_layers}
                   if a.layers else {})
    contrastive = numpy({"normxlogit_contrastive": contrast.normxlogit,
                         "logat_contrastive": contrast.logat} if contrast is not None else {})
    return scores, stacks, contrastive


class _Alignment:
    """Per-row AP and DP of each method, accumulated over batches."""

    def __init__(self):
        self.ap: dict[str, list[float]] = {}
        self.dp: dict[str, list[float]] = {}
        self.by_layer: dict[tuple[str, int], list[float]] = {}

    def add(self, scores: dict[str, np.ndarray], relevant: np.ndarray, ranked: np.ndarray,
            keep: np.ndarray, random_name: str) -> None:
        """Rows ``keep`` of [B, T] ``scores``; ``ranked`` the positions in the ranking."""
        for name, s in scores.items():
            self.ap.setdefault(name, []).extend(average_precision_rows(s, relevant, ranked)[keep])
            with np.errstate(invalid="ignore"):  # rows with nothing ranked: NaN, not kept
                dp = dot_product_alignment_rows(s, relevant, ranked)
            self.dp.setdefault(name, []).extend(dp[keep])
        random_ap, random_dp = random_baselines_rows(relevant, ranked)
        self.ap.setdefault(random_name, []).extend(random_ap[keep])
        self.dp.setdefault(random_name, []).extend(random_dp[keep])

    def add_layers(self, stacks: dict[str, np.ndarray], layers: Sequence[int],
                   relevant: np.ndarray, ranked: np.ndarray, keep: np.ndarray) -> None:
        for name, stack in stacks.items():  # [L, B, T]
            per_layer = average_precision_rows(stack, relevant, ranked)[:, keep]
            for layer, values in zip(layers, per_layer):
                self.by_layer.setdefault((name, layer), []).extend(values)

    def metrics(self, methods: Sequence[str]) -> dict[str, float]:
        out = {}
        for name in methods:
            out[EVIDENCE_AP.format(method=name)] = nanmean(self.ap.get(name, []))
            out[EVIDENCE_DP.format(method=name)] = nanmean(self.dp.get(name, []))
        for (name, layer), values in sorted(self.by_layer.items()):
            out[EVIDENCE_AP_BY_LAYER.format(method=name, layer=layer)] = nanmean(values)
        return out


class EvidenceProbe:
    """Evidence alignment and minimal-pair accuracy (module docstring for the choices).

    One forward pass per batch over prefix + good word explains the good word at t (and,
    with ``contrastive``, good against bad where they first differ) and gives the good
    word's log-probability; prefix positions before the prediction point are compared with
    the cue positions by average precision and dot product, for NormXLogit, LogAt, the norm
    factor alone and the random expectation, per layer (logit lens) for NormXLogit and
    LogAt. Accuracy takes one more batched pass for the bad words (and two for BLiMP's
    sentences). Keys::

        normx/evidence_ap/<method>, normx/evidence_dp/<method>   normxlogit, logat, norm,
            random (+ normxlogit_contrastive, logat_contrastive, random_contrastive)
        normx/evidence_ap_by_layer/<normxlogit|logat>/layer_NN     NN: 00 embeddings .. L
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
                 by_uid: bool = True, leading_space: bool = True):
        """
        pairs: minimal pairs, or the path of a probe file (`load_probe_file`).
        batch_size: pairs per forward pass. layers: "all", "last" or layer indices for the
            per-layer AP. seed: picks ``max_pairs`` of them (None: all) when there are more.
        max_length: the most positions a row may use (the model's context size).
        leading_space: tokenise probe text as running text (`files.encode_pairs`).
        """
        if isinstance(pairs, (str, Path)):
            pairs = load_probe_file(pairs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 (or None: all), got {max_pairs}")
        pairs = seeded_subset(pairs, max_pairs, seed)
        if not pairs:
            raise ValueError("no minimal pairs for the evidence probe")
        self.encoded, self.stats = _encode_prefixed([p for p in pairs if p.has_prefix],
                                                    tokenizer, max_length, leading_space)
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
        self.batch_size, self.layers, self.seed = batch_size, layers, seed
        self.contrastive, self.norm_factor, self.by_uid = contrastive, norm_factor, by_uid

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self._check_fits(model)
        out: dict[str, float] = dict(self.stats)
        with eval_mode(model), torch.no_grad():
            if self.encoded is not None:
                evidence, good_logp = self._evidence(model)
                out.update(evidence)
                out.update(self._pair_accuracy(model, good_logp))
            if self.sentences is not None:
                out.update(self._blimp_accuracy(model))
        return out

    def _check_fits(self, model: nn.Module) -> None:
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
    def _evidence(self, model: nn.Module) -> tuple[dict[str, float], np.ndarray]:
        """The alignment metrics, and the good words' log-probabilities (same passes)."""
        enc, main, contrast = self.encoded, _Alignment(), _Alignment()
        good_logp, n_scored, n_cue_at_t = [], 0, 0
        for start in range(0, len(enc), self.batch_size):
            batch = enc[start: start + self.batch_size]
            scores, stacks, layers, contrastive, logp = self._explain(model, batch)
            good_logp.append(logp)
            positions = np.arange(batch.input_ids.shape[1])[None, :]
            cue = batch.cue_mask.numpy()
            # The word read at t (t and its earlier pieces) is never ranked.
            ranked = positions < batch.word_start.numpy()[:, None]
            relevant = cue & ranked
            keep = relevant.any(axis=1)  # a cue in an earlier word: scored
            n_scored += int(keep.sum())
            n_cue_at_t += int((batch.has_cues.numpy() & ~keep).sum())
            main.add(scores, relevant, ranked, keep, "random")
            main.add_layers(stacks, layers, relevant, ranked, keep)
            if contrastive:
                ranked_c = positions < batch.contrast_word_start.numpy()[:, None]
                relevant_c = cue & ranked_c
                keep_c = relevant_c.any(axis=1) & batch.has_contrast.numpy()
                contrast.add(contrastive, relevant_c, ranked_c, keep_c, "random_contrastive")
        out = main.metrics(METHODS)
        out[EVIDENCE_N_PAIRS] = n_scored
        out[EVIDENCE_N_CUE_AT_PREDICTION] = n_cue_at_t
        if self.contrastive:
            out.update(contrast.metrics(CONTRASTIVE_METHODS))
            out[EVIDENCE_N_PAIRS_CONTRASTIVE] = len(contrast.ap.get("random_contrastive", []))
        return out, np.concatenate(good_logp)

    def _explain(self, model: nn.Module, batch: EncodedPairs):
        """Scores [B, T] per method (and [L, B, T] per layer) from one forward pass."""
        device = model_device(model)
        explain = [(batch.good_ids, None, batch.last)]
        if self.contrastive:  # pairs without a differing token get a dummy foil, unscored
            explain.append((batch.contrast_good, batch.contrast_bad.clamp(min=0),
                            batch.contrast_position))
        a, *c = attribute_many(model, batch.input_ids.to(device),
                               batch.attention_mask.to(device), explain, layers=self.layers,
                               norm_factor=self.norm_factor)
        scores, stacks, contrastive = score_arrays(a, c[0] if c else None)
        good_logp = logprobs_from_states(model, a.final_states, batch.input_ids,
                                         [len(ctx) for ctx in batch.context],
                                         [len(g) for g in batch.good_tokens])
        return scores, stacks, a.layers, contrastive, good_logp

    # ------------------------------------------------------------------ accuracy
    def _pair_accuracy(self, model: nn.Module, good_logp: np.ndarray) -> dict[str, float]:
        """Good wins when its whole-word log-probability (read from the evidence passes)
        beats the bad word's (one more pass)."""
        enc = self.encoded
        n = len(enc)
        bad_logp = continuation_logprobs(model, enc.context, enc.bad_tokens, self.batch_size,
                                         self.pad_id)
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

    def _by_uid(self, key: str, correct: np.ndarray, pairs: Sequence[MinimalPair]):
        return accuracy_by_uid(key, correct, pairs) if self.by_uid else {}


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
