"""Probes run by `NormTracker` at each snapshot: evidence alignment on minimal pairs and
faithfulness on held-out text (DESIGN.md "Evidence alignment", "Faithfulness").

Both are `callback.Probe`s: ``probe(model) -> {"normx/...": float}``, called with the
unwrapped Hugging Face causal LM. They restore the model's train/eval flags, run without
gradients (Captum's baselines excepted, which leave no ``.grad`` behind) and are
deterministic for a given ``seed``.

    pairs = load_probe_file("probes.jsonl")
    tracker = NormTracker(gold, vocab, probes=[
        EvidenceProbe(pairs, tokenizer),
        FaithfulnessProbe(held_out_texts, tokenizer, captum=True),
    ])

Choices (documented here once)
------------------------------
* Words and targets. ``cue_word_indices`` index ``prefix.split()`` (whitespace words). A cue
  word the tokenizer splits into several pieces marks ALL its pieces as cue positions
  (characters -> tokens through the fast tokenizer's offsets mapping, a bare-space piece
  going with the word after it; a slow tokenizer is encoded word by word, " " + word after
  the first). The good/bad target of a pair is the
  FIRST token of the word as it continues the prefix (for byte-level BPE: the first token
  of " " + word): multi-token words are scored on their first piece. Pairs whose good and
  bad words share that first piece can never be "correct" (logit(good) > logit(bad) is
  strict); they are counted in ``normx/pair_n_shared_first_token``.
* Prefixes longer than ``max_length`` keep their last ``max_length`` tokens (the explained
  position is the last prefix token); cues cut off are dropped.
* Evidence importance is over positions 0..t, t the last prefix token (the next-word
  prediction point). Ties in average precision count as the expectation over the orderings
  of the tied positions (`metrics.average_precision`); the random baseline is the exact
  expectation under a uniformly random ranking (`metrics.random_average_precision`) and
  uniform softmax (`metrics.random_dot_product`), not a sampled ranking.
* Faithfulness "removal" REPLACES a position's token by a fixed baseline token id (the
  tokenizer's / model's EOS id unless given) - positions stay where they are, so position
  embeddings and the explained position t are unchanged. Comprehensiveness removes the
  top-k% positions of 0..t, sufficiency replaces all others (only top-k% kept); k% of
  n = t + 1 positions is ceil(k n), at least 1 (`metrics.topk_positions`, ties by position
  order). The explained token is the model's argmax at t on the intact input; p(y) is its
  softmax probability. All perturbed inputs (distinct rows only) go through as few batched
  forward passes as the memory budget allows; examples are right-padded, so these passes
  need no attention mask. The leave-one-out importance is a pass of its own, before the
  top-k passes (the "loo" method ranks by it).
* A diverged model (NaN scores) gives NaN for that pair / example, averaged out with
  nanmean; the probes never raise on it.
* The "random" faithfulness ranking draws fresh seeded scores at each call from ``seed``, so
  every snapshot uses the same random rankings.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .attribution import attribute, attribute_many, eval_mode
from .metrics import (
    DEFAULT_FRACTIONS,
    average_precision_rows,
    comprehensiveness,
    dot_product_alignment_rows,
    random_average_precision,
    random_dot_product,
    spearman,
    sufficiency,
    topk_positions,
)
from .probe_files import MinimalPair, encode_pairs, encode_text, load_probe_file

__all__ = ["EvidenceProbe", "FaithfulnessProbe"]

ATTRIBUTION_METHODS = ("normxlogit", "logat", "norm", "random")
FAITHFULNESS_METHODS = (*ATTRIBUTION_METHODS, "loo")
CAPTUM_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
_LOGITS_BUDGET_BYTES = 1 << 28  # ~256 MB of float32 logits per forward chunk


# ============================================================================= helpers
@contextlib.contextmanager
def _keep_grads(model: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the parameters' ``.grad`` as it found them."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).any():
        return math.nan
    return float(np.nanmean(arr))


def _key_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text) or "none"


# ======================================================================== evidence probe
class EvidenceProbe:
    """Evidence alignment and minimal-pair accuracy (DESIGN.md "Evidence alignment").

    One `attribute` pass per batch explains the good word at the last prefix token; the
    importance of prefix positions 0..t is compared with the cue positions by average
    precision and dot product, for NormXLogit, LogAt, the norm factor alone and the random
    expectation, per layer (logit lens) for NormXLogit and LogAt. With ``contrastive`` a
    second pass explains good minus bad (``foil``). Keys::

        normx/evidence_ap/<method>, normx/evidence_dp/<method>      method in normxlogit,
            logat, norm, random (+ normxlogit_contrastive, logat_contrastive)
        normx/evidence_ap_by_layer/<normxlogit|logat>/layer_NN      NN: 00 embeddings .. L
        normx/evidence_n_pairs       pairs with cues (the AP/DP averages)
        normx/pair_accuracy          logit(good) > logit(bad) at t, over ALL pairs
        normx/pair_n_pairs, normx/pair_n_shared_first_token
        normx/pair_accuracy_by_uid/<UID>   (when the pairs carry several UIDs)
    """

    def __init__(self, pairs: Sequence[MinimalPair] | str | Path, tokenizer, batch_size: int = 128,
                 layers: str | Sequence[int] = "all", seed: int = 0, *,
                 max_pairs: int | None = None, max_length: int | None = None,
                 contrastive: bool = True, norm_factor: str = "word_embedding",
                 by_uid: bool = True):
        """
        pairs: minimal pairs, or the path of a probe file (`load_probe_file`).
        batch_size: pairs per forward pass. layers: "all", "last" or layer indices for the
            per-layer AP. seed: picks ``max_pairs`` of them when there are more.
        """
        if isinstance(pairs, (str, Path)):
            pairs = load_probe_file(pairs)
        pairs = list(pairs)
        if max_pairs is not None and len(pairs) > max_pairs:
            keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs,
                                                              replace=False))
            pairs = [pairs[i] for i in keep]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoded = encode_pairs(pairs, tokenizer, max_length)
        self.batch_size, self.layers, self.seed = batch_size, layers, seed
        self.contrastive, self.norm_factor, self.by_uid = contrastive, norm_factor, by_uid

    def __call__(self, model: nn.Module) -> dict[str, float]:
        with eval_mode(model), torch.no_grad():
            return self._run(model)

    def _run(self, model: nn.Module) -> dict[str, float]:
        device, enc = _device(model), self.encoded
        ap: dict[str, list[float]] = {}
        dp: dict[str, list[float]] = {}
        by_layer: dict[str, list[float]] = {}
        correct: list[bool] = []
        for start in range(0, len(enc), self.batch_size):
            batch = enc[start: start + self.batch_size]
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            good, bad = batch.good_ids.to(device), batch.bad_ids.to(device)
            # One forward pass explains the good word, and good minus bad (contrastive).
            explain = [(good, None), (good, bad)] if self.contrastive else [(good, None)]
            a, *contrast = attribute_many(model, ids, mask, explain, layers=self.layers,
                                          norm_factor=self.norm_factor)
            if not torch.equal(a.position.cpu(), batch.last):
                raise RuntimeError("attribution explained another position than the prefix end")
            rows = torch.arange(len(batch), device=device)
            correct.extend((a.logits[rows, good] > a.logits[rows, bad]).tolist())
            scores = {"normxlogit": a.normxlogit, "logat": a.logat, "norm": a.norm}
            for c in contrast:
                scores["normxlogit_contrastive"] = c.normxlogit
                scores["logat_contrastive"] = c.logat
            scores = {k: v.cpu().numpy() for k, v in scores.items()}
            layer_scores = {}
            if a.layers:
                layer_scores = {"normxlogit": a.normxlogit_layers.cpu().numpy(),
                                "logat": a.logat_layers.cpu().numpy()}
            valid = np.arange(ids.shape[1])[None, :] <= batch.last.numpy()[:, None]
            relevant = batch.cue_mask.numpy().astype(bool) & valid
            cued = relevant.any(axis=1)  # pairs without cues do not enter the averages
            for name, s in scores.items():
                ap.setdefault(name, []).extend(average_precision_rows(s, relevant, valid)[cued])
                dp.setdefault(name, []).extend(
                    dot_product_alignment_rows(s, relevant, valid)[cued])
            for b in np.flatnonzero(cued):
                prefix = relevant[b, : int(batch.last[b]) + 1]
                ap.setdefault("random", []).append(random_average_precision(prefix))
                dp.setdefault("random", []).append(random_dot_product(prefix))
            for name, stack in layer_scores.items():
                per_layer = average_precision_rows(stack, relevant, valid)[:, cued]
                for layer, values in zip(a.layers, per_layer):
                    by_layer.setdefault(f"{name}/layer_{layer:02d}", []).extend(values)

        n_cued = int(enc.has_cues.sum())
        out: dict[str, float] = {}
        methods = ["normxlogit", "logat", "norm", "random"]
        if self.contrastive:
            methods += ["normxlogit_contrastive", "logat_contrastive"]
        for name in methods:
            out[f"normx/evidence_ap/{name}"] = _nanmean(ap.get(name, []))
            out[f"normx/evidence_dp/{name}"] = _nanmean(dp.get(name, []))
        for key, values in sorted(by_layer.items()):
            out[f"normx/evidence_ap_by_layer/{key}"] = _nanmean(values)
        out["normx/evidence_n_pairs"] = n_cued
        out["normx/pair_accuracy"] = float(np.mean(correct))
        out["normx/pair_n_pairs"] = len(correct)
        out["normx/pair_n_shared_first_token"] = int((enc.good_ids == enc.bad_ids).sum())
        uids = sorted({p.uid for p in enc.pairs})
        if self.by_uid and len(uids) > 1:
            for uid in uids:
                hits = [c for c, p in zip(correct, enc.pairs) if p.uid == uid]
                out[f"normx/pair_accuracy_by_uid/{_key_part(uid)}"] = float(np.mean(hits))
        return out


# ==================================================================== faithfulness probe
def _blocks(items, tokenizer, length: int) -> list[list[int]]:
    """Non-overlapping windows of ``length`` tokens. Texts are tokenised (no special
    tokens) and joined by EOS into one stream, as the training data is packed; each token
    block is cut on its own (a block shorter than ``length`` is kept whole)."""
    items = list(items) if not isinstance(items, (Tensor, np.ndarray)) else items
    if len(items) and isinstance(items[0], str):
        if tokenizer is None:
            raise ValueError("texts need a tokenizer")
        eos = getattr(tokenizer, "eos_token_id", None)
        stream: list[int] = []
        for text in items:
            stream.extend(encode_text(tokenizer, text)["input_ids"])
            if eos is not None:
                stream.append(int(eos))
        sources = [stream]
    else:
        sources = [[int(x) for x in (b.tolist() if hasattr(b, "tolist") else b)] for b in items]
    blocks = []
    for src in sources:
        if len(src) < length:
            if len(src) >= 2:
                blocks.append(src)
            continue
        blocks.extend(src[i: i + length] for i in range(0, len(src) - length + 1, length))
    return blocks


def _supports_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _logits_at(model: nn.Module, t: Tensor, keep: bool, **inputs) -> Tensor:
    """The model's logits at position t of each row [B, V] (float32).

    Rows are right-padded, so no attention mask is passed: in a causal LM, positions <= t
    never see the pads after t, and the default position ids 0.. are the right ones (and
    the mask-free path is several times faster in transformers' attention)."""
    if keep:  # only the needed positions go through the head
        positions = torch.unique(t)
        logits = model(**inputs, logits_to_keep=positions).logits
        return logits[torch.arange(len(t), device=t.device),
                      torch.searchsorted(positions, t)].float()
    return model(**inputs).logits[torch.arange(len(t), device=t.device), t].float()


class FaithfulnessProbe:
    """Comprehensiveness, sufficiency and leave-one-out rank agreement of attributions
    explaining the model's own argmax prediction at the last position of held-out
    examples (DESIGN.md "Faithfulness"). See the module docstring for the removal rule.

    Keys, per method::

        normx/comprehensiveness/<method>   mean_k [p_full(y) - p(y | top-k% replaced)]
        normx/sufficiency/<method>         mean_k [p_full(y) - p(y | only top-k% kept)]
        normx/loo_spearman/<method>        mean over examples of Spearman(scores, LOO)
        normx/faithfulness_n_examples, normx/faithfulness_mean_p_full

    where LOO importance_i = p_full(y) - p(y | position i replaced by the baseline token).
    Methods: normxlogit, logat, norm, random (seeded scores), loo (the erasure ranking
    itself: an oracle-like reference) and, with ``captum=True``, saliency
    (|gradient| summed over the hidden dim), input_x_gradient (embedding x gradient, summed)
    and integrated_gradients (LayerIntegratedGradients on the input embedding, from the
    all-baseline-token input, ``ig_steps`` steps, summed), all of the logit of y at t.
    """

    def __init__(self, texts_or_token_blocks, tokenizer=None, n_examples: int = 32,
                 length: int = 32, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 methods: Sequence[str] = ATTRIBUTION_METHODS, captum: bool = False,
                 seed: int = 0, *, baseline_token_id: int | None = None, ig_steps: int = 20,
                 batch_size: int | None = None, norm_factor: str = "word_embedding"):
        """
        texts_or_token_blocks: strings (tokenised with ``tokenizer``), or token-id
            sequences / a 2-D array of them (e.g. validation blocks).
        n_examples: how many windows of ``length`` tokens to explain (a seeded choice
            when more are available). fractions: the k of top-k%, in (0, 1].
        baseline_token_id: the replacement token; default the tokenizer's EOS id, else
            the model config's eos/pad id at call time, else 0.
        batch_size: rows per forward pass; default from a ~256 MB logits budget.
        """
        methods = list(methods)
        if captum:
            methods += [m for m in CAPTUM_METHODS if m not in methods]
        unknown = [m for m in methods if m not in (*FAITHFULNESS_METHODS, *CAPTUM_METHODS)]
        if unknown:
            raise ValueError(f"unknown faithfulness methods {unknown}; choose from "
                             f"{[*FAITHFULNESS_METHODS, *CAPTUM_METHODS]}")
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        blocks = _blocks(texts_or_token_blocks, tokenizer, length)
        if not blocks:
            raise ValueError("no example of at least 2 tokens in the faithfulness data")
        if len(blocks) > n_examples:
            keep = np.sort(np.random.default_rng(seed).choice(len(blocks), n_examples,
                                                              replace=False))
            blocks = [blocks[i] for i in keep]
        width = max(map(len, blocks))
        self.input_ids = torch.zeros((len(blocks), width), dtype=torch.long)
        self.attention_mask = torch.zeros((len(blocks), width), dtype=torch.long)
        for b, block in enumerate(blocks):  # right padding: pads never precede t
            self.input_ids[b, : len(block)] = torch.tensor(block)
            self.attention_mask[b, : len(block)] = 1
        self.last = self.attention_mask.sum(1) - 1
        if baseline_token_id is None and tokenizer is not None:
            baseline_token_id = getattr(tokenizer, "eos_token_id", None)
        self.baseline_token_id = baseline_token_id
        self.methods, self.fractions = methods, tuple(fractions)
        self.seed, self.ig_steps, self.batch_size = seed, ig_steps, batch_size
        self.norm_factor = norm_factor

    # ------------------------------------------------------------------ plumbing
    def _baseline(self, model: nn.Module) -> int:
        if self.baseline_token_id is not None:
            return int(self.baseline_token_id)
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(model.config, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return 0

    def _chunk(self, model: nn.Module, width: int, keep: bool) -> int:
        if self.batch_size is not None:
            return self.batch_size
        vocab = model.get_output_embeddings().weight.shape[0]
        per_row = (1 if keep else width) * vocab * 4
        return max(1, _LOGITS_BUDGET_BYTES // per_row)

    def _probs(self, model, ids: Tensor, t: Tensor, y: Tensor) -> np.ndarray:
        """p(y | ids) at t for every row, in chunks; ids etc. on the model's device."""
        keep = _supports_logits_to_keep(model)
        chunk = self._chunk(model, ids.shape[1], keep)
        out = []
        for s in range(0, ids.shape[0], chunk):
            logits = _logits_at(model, t[s: s + chunk], keep, input_ids=ids[s: s + chunk])
            probs = logits.log_softmax(-1).exp()
            out.append(probs.gather(1, y[s: s + chunk, None]).squeeze(1))
        return torch.cat(out).cpu().double().numpy()

    # ------------------------------------------------------------------ the call
    def __call__(self, model: nn.Module) -> dict[str, float]:
        with eval_mode(model):
            with torch.no_grad():
                base = self._intact(model)
                scores = self._scores_no_grad(model, base)
            if any(m in CAPTUM_METHODS for m in self.methods):
                with _keep_grads(model), torch.enable_grad():
                    scores.update(self._captum_scores(model, base))
            with torch.no_grad():
                return self._measure(model, base, scores)

    def _intact(self, model: nn.Module) -> dict[str, Any]:
        """The intact examples on the model's device, y = argmax at t and p_full = p(y)."""
        device = _device(model)
        ids, mask = self.input_ids.to(device), self.attention_mask.to(device)
        t = self.last.to(device)
        keep = _supports_logits_to_keep(model)
        chunk = self._chunk(model, ids.shape[1], keep)
        logits = torch.cat([_logits_at(model, t[s: s + chunk], keep, input_ids=ids[s: s + chunk])
                            for s in range(0, len(ids), chunk)])
        y = logits.argmax(-1)
        p_full = logits.log_softmax(-1).exp().gather(1, y[:, None]).squeeze(1)
        return dict(ids=ids, mask=mask, t=t, y=y, p_full=p_full.cpu().double().numpy(),
                    baseline=self._baseline(model))

    def _scores_no_grad(self, model: nn.Module, base: dict) -> dict[str, list[np.ndarray]]:
        """Per method, per example: scores over positions 0..t."""
        want = [m for m in self.methods if m in ("normxlogit", "logat", "norm")]
        scores: dict[str, list[np.ndarray]] = {}
        last = self.last.tolist()
        if want:
            a = attribute(model, base["ids"], base["mask"], target=base["y"],
                          norm_factor=self.norm_factor)
            if not torch.equal(a.position, base["t"]):
                raise RuntimeError("attribution explained another position than the last")
            for m in want:
                s = getattr(a, m).cpu().double().numpy()
                scores[m] = [s[b, : t + 1] for b, t in enumerate(last)]
        if "random" in self.methods:
            rng = np.random.default_rng(self.seed)
            scores["random"] = [rng.random(t + 1) for t in last]
        return scores

    def _captum_scores(self, model: nn.Module, base: dict) -> dict[str, list[np.ndarray]]:
        from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

        ids, t, y = base["ids"], base["t"], base["y"]
        keep = _supports_logits_to_keep(model)
        embedding = model.get_input_embeddings()

        def from_embeds(embeds, t_):
            return _logits_at(model, t_, keep, inputs_embeds=embeds)

        def from_ids(input_ids, t_):
            return _logits_at(model, t_, keep, input_ids=input_ids)

        out: dict[str, np.ndarray] = {}
        if "saliency" in self.methods or "input_x_gradient" in self.methods:
            embeds = embedding(ids).detach().requires_grad_(True)
            if "saliency" in self.methods:
                grad = Saliency(from_embeds).attribute(embeds, target=y,
                                                       additional_forward_args=(t,))
                out["saliency"] = grad.sum(-1)
            if "input_x_gradient" in self.methods:
                ixg = InputXGradient(from_embeds).attribute(embeds, target=y,
                                                            additional_forward_args=(t,))
                out["input_x_gradient"] = ixg.sum(-1)
        if "integrated_gradients" in self.methods:
            lig = LayerIntegratedGradients(from_ids, embedding)
            ig = lig.attribute(ids, baselines=torch.full_like(ids, base["baseline"]), target=y,
                               additional_forward_args=(t,), n_steps=self.ig_steps,
                               internal_batch_size=max(len(ids), 1))
            out["integrated_gradients"] = ig.sum(-1)
        last = self.last.tolist()
        return {m: [s.detach().cpu().double().numpy()[b, : tt + 1] for b, tt in enumerate(last)]
                for m, s in out.items()}

    def _perturbed_probs(self, model, base: dict, rows: list[Tensor],
                         owners: list[int]) -> np.ndarray:
        """p(y) for perturbed copies ``rows`` of the examples ``owners``: one batched pass
        over the distinct rows (methods often agree on a top-k set)."""
        if not rows:
            return np.zeros(0)
        owner = torch.tensor(owners, device=base["ids"].device)
        keyed = torch.cat([owner[:, None], torch.stack(rows)], dim=1)
        distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
        who = distinct[:, 0]
        probs = self._probs(model, distinct[:, 1:], base["t"][who], base["y"][who])
        return probs[inverse.cpu().numpy()]

    def _loo(self, model: nn.Module, base: dict) -> list[np.ndarray]:
        """Leave-one-out importance p_full - p(y | position i replaced), i in 0..t."""
        ids, last = base["ids"], self.last.tolist()
        rows, owners = [], []
        for b, tb in enumerate(last):
            for i in range(tb + 1):
                r = ids[b].clone()
                r[i] = base["baseline"]
                rows.append(r)
                owners.append(b)
        probs = self._perturbed_probs(model, base, rows, owners)
        out, start = [], 0
        for b, tb in enumerate(last):
            out.append(base["p_full"][b] - probs[start: start + tb + 1])
            start += tb + 1
        return out

    def _measure(self, model: nn.Module, base: dict,
                 scores: dict[str, list[np.ndarray]]) -> dict[str, float]:
        ids, baseline, last = base["ids"], base["baseline"], self.last.tolist()
        n, n_frac, p_full = len(last), len(self.fractions), base["p_full"]
        loo = self._loo(model, base)
        scores = {**scores, "loo": loo}
        # Row 2j: top-k removed; row 2j+1: only top-k kept, for (method, k, example) j.
        rows, owners = [], []
        for m in self.methods:
            for k, frac in enumerate(self.fractions):
                for b, tb in enumerate(last):
                    top = torch.as_tensor(topk_positions(scores[m][b], frac), device=ids.device)
                    removed = ids[b].clone()
                    removed[top] = baseline
                    kept = ids[b].clone()
                    others = torch.ones(tb + 1, dtype=torch.bool, device=ids.device)
                    others[top] = False
                    kept[: tb + 1][others] = baseline
                    rows.extend([removed, kept])
                    owners.extend([b, b])
        probs = self._perturbed_probs(model, base, rows, owners)
        probs = probs.reshape(len(self.methods), n_frac, n, 2)

        out: dict[str, float] = {}
        for j, m in enumerate(self.methods):
            out[f"normx/comprehensiveness/{m}"] = _nanmean(
                comprehensiveness(p_full, probs[j, :, :, 0]))
            out[f"normx/sufficiency/{m}"] = _nanmean(sufficiency(p_full, probs[j, :, :, 1]))
            out[f"normx/loo_spearman/{m}"] = _nanmean(
                spearman(scores[m][b], loo[b]) for b in range(n))
        out["normx/faithfulness_n_examples"] = n
        out["normx/faithfulness_mean_p_full"] = float(np.mean(p_full))
        return out
