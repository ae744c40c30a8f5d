"""The faithfulness probe: comprehensiveness and sufficiency of attributions, and their
rank agreement with leave-one-out erasure (DESIGN.md "Faithfulness", the authors'
Experiment 1).

Choices (documented here once)
------------------------------
* "Removal" REPLACES a position's token by a fixed baseline token id (the tokenizer's /
  model's EOS id unless given): positions stay where they are, so position embeddings and
  the explained position t are unchanged. Comprehensiveness replaces the top-k% positions
  of 0..t, sufficiency all the others (only the top-k% kept); k% of n = t + 1 positions is
  floor(k n) (`metrics.topk_positions`, ties by position order). The fractions default to
  the authors' 0, 10, ..., 100 % (`metrics.AUTHORS_FRACTIONS`); ERASER's 1, 5, 10, 20,
  50 % (`metrics.ERASER_FRACTIONS`) are the documented alternative.
* The explained token is the model's argmax at t on the intact input; p(y) is its softmax
  probability. All perturbed inputs (distinct rows only) go through as few batched
  forward passes as the memory budget allows; examples are right-padded, so these passes
  need no attention mask. The leave-one-out importance is a pass of its own.
* Gradient baselines (Captum), set up as the authors ran them: Saliency, InputXGradient
  and IntegratedGradients of the logit of y at t with respect to the input word
  embeddings, each reduced to one score per position by the L1 norm over the embedding
  dimension (``gradient_reduction="sum"``: the signed sum instead); IntegratedGradients
  from an all-zero embedding baseline in ``ig_steps`` = 50 steps (Gauss-Legendre).
* A diverged model (NaN scores) gives NaN for that example, averaged out with nanmean.
* The "random" ranking draws fresh seeded scores at each call from ``seed``, so every
  snapshot uses the same random rankings.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.normxlogit import attribute, eval_mode, model_device
from normx_track.probes.evidence import nanmean, seeded_subset
from normx_track.gold.metrics import AUTHORS_FRACTIONS, comprehensiveness, spearman, sufficiency, topk_positions
from normx_track.probes.files import encode_text

__all__ = ["FaithfulnessProbe", "CAPTUM_METHODS", "FAITHFULNESS_METHODS", "gradient_attributions"]

GRADIENT_REDUCTIONS = ("l1", "sum")
_LOGITS_BUDGET_BYTES = 1 << 28  # ~256 MB of float32 logits per forward chunk

from normx_track.keys import (  # noqa: E402,F401 - the names this probe writes
    ATTRIBUTION_METHODS, CAPTUM_METHODS, COMPREHENSIVENESS, FAITHFULNESS_MEAN_P_FULL,
    FAITHFULNESS_METHODS, FAITHFULNESS_N_EXAMPLES, IG_COMPLETENESS_ERROR, LOO_SPEARMAN,
    SUFFICIENCY)


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
    """The model's logits at position t of each row [B, V] (float32). Rows are
    right-padded, so they need no attention mask (`padding_inputs`)."""
    if keep:  # only the needed positions go through the head
        positions = torch.unique(t)
        logits = model(**inputs, logits_to_keep=positions).logits
        return logits[torch.arange(len(t), device=t.device),
                      torch.searchsorted(positions, t)].float()
    return model(**inputs).logits[torch.arange(len(t), device=t.device), t].float()


def gradient_attributions(model: nn.Module, input_ids: Tensor, t: Tensor, y: Tensor,
                          methods: Sequence[str] = CAPTUM_METHODS, *, ig_steps: int = 50,
                          reduction: str | None = "l1",
                          deltas: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Captum's gradient baselines for the logit of ``y`` at position ``t`` of each
    (right-padded) row, w.r.t. the input word embeddings, as the authors ran them:
    Saliency, InputXGradient, IntegratedGradients from an all-zero embedding baseline in
    ``ig_steps`` steps. ``reduction``: "l1" over the embedding dimension ([B, T]), "sum"
    (signed, [B, T]) or None (the per-dimension attributions, [B, T, d]). ``deltas``: a
    dict that receives Captum's convergence delta of IG per row,
    sum(IG) - (F(x) - F(baseline))."""
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    keep = _supports_logits_to_keep(model)

    def logits(embeds, t_):
        return _logits_at(model, t_, keep, inputs_embeds=embeds)

    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    kw = dict(target=y, additional_forward_args=(t,))
    out: dict[str, Tensor] = {}
    if "saliency" in methods:  # |gradient| (Captum's default), so L1 is its sum
        out["saliency"] = Saliency(logits).attribute(embeds, abs=reduction == "l1", **kw)
    if "input_x_gradient" in methods:
        out["input_x_gradient"] = InputXGradient(logits).attribute(embeds, **kw)
    if "integrated_gradients" in methods:
        out["integrated_gradients"], delta = IntegratedGradients(logits).attribute(
            embeds, baselines=torch.zeros_like(embeds), n_steps=ig_steps,
            internal_batch_size=max(len(input_ids), 1), return_convergence_delta=True, **kw)
        if deltas is not None:
            deltas["integrated_gradients"] = delta.detach()
    if reduction is None:
        return {m: a.detach() for m, a in out.items()}
    return {m: per_position(a, reduction).detach() for m, a in out.items()}


def completeness_error(ig: Tensor, delta: Tensor) -> float:
    """Mean |sum(IG) - (F(x) - F(0))| / |F(x) - F(0)| over rows, F the logit of y at t:
    how far the 50-step integral is from exact (large where the path from an all-zero
    embedding crosses a norm's singularity, as in models without position embeddings).
    Captum's convergence delta is the numerator, so F(x) - F(0) = sum(IG) - delta."""
    delta = delta.double()
    change = ig.double().sum(tuple(range(1, ig.dim()))) - delta
    return nanmean((delta.abs() / change.abs()).cpu().numpy())


def faithfulness_row(methods: Sequence[str], p_full: np.ndarray, probs: np.ndarray,
                     scores: dict[str, list[np.ndarray]], loo: list[np.ndarray]) -> dict[str, float]:
    """The probe's keys from p(y) of the intact examples [n], of the perturbed ones
    [methods, fractions, n, (top-k removed, only top-k kept)], the methods' scores and
    the leave-one-out drops, per example."""
    n = len(p_full)
    out: dict[str, float] = {}
    for j, m in enumerate(methods):
        out[COMPREHENSIVENESS.format(method=m)] = nanmean(
            comprehensiveness(p_full, probs[j, :, :, 0]))
        out[SUFFICIENCY.format(method=m)] = nanmean(sufficiency(p_full, probs[j, :, :, 1]))
        out[LOO_SPEARMAN.format(method=m)] = nanmean(
            spearman(scores[m][b], loo[b]) for b in range(n))
    out[FAITHFULNESS_N_EXAMPLES] = n
    out[FAITHFULNESS_MEAN_P_FULL] = float(np.mean(p_full))
    return out


def per_position(attributions: Tensor, reduction: str) -> Tensor:
    """[..., d] attributions -> one score per position: the L1 norm over the embedding
    dimension ("l1", the authors' choice) or the signed sum ("sum")."""
    return (attributions.abs() if reduction == "l1" else attributions).sum(-1)


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
    itself: an oracle-like reference) and, with ``captum=True``, saliency,
    input_x_gradient and integrated_gradients (module docstring), all of the logit of y
    at t.

        probe = FaithfulnessProbe(held_out_texts, tokenizer, captum=True)
        row = probe(hf_model)   # {"normx/comprehensiveness/normxlogit": 0.21, ...}
    """

    def __init__(self, texts_or_token_blocks, tokenizer=None, n_examples: int = 32,
                 length: int = 32, fractions: Sequence[float] = AUTHORS_FRACTIONS,
                 methods: Sequence[str] = ATTRIBUTION_METHODS, captum: bool = False,
                 seed: int = 0, *, baseline_token_id: int | None = None, ig_steps: int = 50,
                 batch_size: int | None = None, norm_factor: str = "word_embedding",
                 gradient_reduction: str = "l1"):
        """
        texts_or_token_blocks: strings (tokenised with ``tokenizer``), or token-id
            sequences / a 2-D array of them (e.g. validation blocks).
        n_examples: how many windows of ``length`` tokens to explain (a seeded choice
            when more are available). fractions: the k of top-k%, in [0, 1].
        gradient_reduction: "l1" (the authors' choice) or "sum" (signed) over the
            embedding dimension, for the Captum baselines.
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
        if not fractions or not all(0 <= f <= 1 for f in fractions):
            raise ValueError(f"fractions must be in [0, 1], got {list(fractions)}")
        if gradient_reduction not in GRADIENT_REDUCTIONS:
            raise ValueError(f"gradient_reduction must be one of {GRADIENT_REDUCTIONS}, "
                             f"got {gradient_reduction!r}")
        if ig_steps < 1:
            raise ValueError(f"ig_steps must be >= 1, got {ig_steps}")
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        blocks = _blocks(texts_or_token_blocks, tokenizer, length)
        if not blocks:
            raise ValueError("no example of at least 2 tokens in the faithfulness data")
        blocks = seeded_subset(blocks, n_examples, seed)
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
        self.norm_factor, self.gradient_reduction = norm_factor, gradient_reduction

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

    def _probs(self, model, ids: Tensor, t: Tensor, y: Tensor | None = None
               ) -> tuple[Tensor, np.ndarray]:
        """(y, p(y | ids) at t) for every row, a memory budget's worth of rows at a time;
        y None: the model's argmax at t. ids etc. on the model's device."""
        keep = _supports_logits_to_keep(model)
        chunk = self._chunk(model, ids.shape[1], keep)
        ys, ps = [], []
        for s in range(0, ids.shape[0], chunk):
            logp = _logits_at(model, t[s: s + chunk], keep,
                              input_ids=ids[s: s + chunk]).log_softmax(-1)
            picked = logp.argmax(-1) if y is None else y[s: s + chunk]
            ys.append(picked)
            ps.append(logp.gather(1, picked[:, None]).squeeze(1).exp())
        return torch.cat(ys), torch.cat(ps).cpu().double().numpy()

    # ------------------------------------------------------------------ the call
    def __call__(self, model: nn.Module) -> dict[str, float]:
        extra: dict[str, float] = {}
        with eval_mode(model):
            with torch.no_grad():
                base = self._intact(model)
                scores = self._scores_no_grad(model, base)
            if any(m in CAPTUM_METHODS for m in self.methods):
                deltas: dict[str, Tensor] = {}
                with _keep_grads(model), torch.enable_grad():
                    per_dim = gradient_attributions(
                        model, base["ids"], base["t"], base["y"],
                        [m for m in CAPTUM_METHODS if m in self.methods],
                        ig_steps=self.ig_steps, reduction=None, deltas=deltas)
                scores.update(self._reduce(per_dim))
                if "integrated_gradients" in per_dim:
                    extra[IG_COMPLETENESS_ERROR] = completeness_error(
                        per_dim["integrated_gradients"], deltas["integrated_gradients"])
            with torch.no_grad():
                return {**self._measure(model, base, scores), **extra}

    def _intact(self, model: nn.Module) -> dict[str, Any]:
        """The intact examples on the model's device, y = argmax at t and p_full = p(y)."""
        device = model_device(model)
        ids, mask = self.input_ids.to(device), self.attention_mask.to(device)
        t = self.last.to(device)
        y, p_full = self._probs(model, ids, t)
        return dict(ids=ids, mask=mask, t=t, y=y, p_full=p_full, baseline=self._baseline(model))

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

    def _reduce(self, per_dim: dict[str, Tensor]) -> dict[str, list[np.ndarray]]:
        """[B, T, d] attributions -> per example, one score per position 0..t."""
        last = self.last.tolist()
        out = {}
        for m, a in per_dim.items():
            reduced = per_position(a, self.gradient_reduction).cpu().double().numpy()
            out[m] = [reduced[b, : tt + 1] for b, tt in enumerate(last)]
        return out


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
        _, probs = self._probs(model, distinct[:, 1:], base["t"][who], base["y"][who])
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

        return faithfulness_row(self.methods, p_full, probs, scores, loo)
