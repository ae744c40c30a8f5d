"""What the causal and the masked faithfulness probes share (DESIGN.md "Faithfulness"):
the checks, the scores of every method on each example's candidate positions (NormXLogit,
LogAt, the norm, seeded random, and Captum's gradient baselines), the leave-one-out
importance, and the top-k replacement loop that gives comprehensiveness and sufficiency.

A subclass builds the examples and says, per model, what the intact examples are
(`Examples`: ids, t, y = argmax at t, p(y), the candidate positions, the replacement
token), how p(y) is read at t, and how its attribution is called.

* Candidates: the positions that can be ranked and replaced (causal: 0..t; masked: every
  position but t and the specials). k% of n candidates is floor(k n)
  (`metrics.topk_positions`, ties by position order); comprehensiveness replaces the top
  k%, sufficiency all the others.
* Perturbed copies that coincide (methods often agree on a top-k set) go through the
  model once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.scores import AttributionScores, check_norm_factor
from normx_track.gold.metrics import (AUTHORS_FRACTIONS, comprehensiveness, spearman,
                                      sufficiency, topk_positions)
from normx_track.keys import (CAPTUM_METHODS, COMPREHENSIVENESS, FAITHFULNESS_MEAN_P_FULL,
                              FAITHFULNESS_METHODS, FAITHFULNESS_N_EXAMPLES,
                              IG_COMPLETENESS_ERROR, LOO_SPEARMAN, METHODS, SUFFICIENCY)
from normx_track.modeling import eval_mode
from normx_track.probes.common import keep_grads, nanmean
from normx_track.probes.gradients import (GRADIENT_REDUCTIONS, completeness_error,
                                          gradient_attributions, per_position)

__all__ = ["Examples", "FaithfulnessBase", "faithfulness_row"]


@dataclass
class Examples:
    """The intact examples on the model's device."""

    ids: Tensor  # [B, T]
    t: Tensor  # [B] explained position
    y: Tensor  # [B] the model's argmax at t
    p_full: np.ndarray  # [B] p(y | intact example)
    candidates: list[np.ndarray]  # per example, the positions ranked and replaced
    replacement: int  # the token id a removed position gets


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


class FaithfulnessBase:
    """The faithfulness probes' skeleton; a subclass supplies `_intact`, `_probs` and
    `_attribute`. Keys, per method: ``normx/comprehensiveness/<method>``,
    ``normx/sufficiency/<method>``, ``normx/loo_spearman/<method>``; and
    ``normx/faithfulness_n_examples``, ``normx/faithfulness_mean_p_full``,
    ``normx/ig_completeness_error`` (with IG)."""

    def __init__(self, *, methods: Sequence[str] = METHODS, captum: bool = False,
                 fractions: Sequence[float] = AUTHORS_FRACTIONS, seed: int = 0,
                 ig_steps: int = 50, batch_size: int | None = None,
                 norm_factor: str = "word_embedding", gradient_reduction: str = "l1"):
        methods = list(methods)
        if captum:
            methods += [m for m in CAPTUM_METHODS if m not in methods]
        choices = [*FAITHFULNESS_METHODS, *CAPTUM_METHODS]
        unknown = [m for m in methods if m not in choices]
        if unknown:
            raise ValueError(f"unknown faithfulness methods {unknown}; choose from {choices}")
        if not fractions or not all(0 <= f <= 1 for f in fractions):
            raise ValueError(f"fractions must be in [0, 1], got {list(fractions)}")
        if gradient_reduction not in GRADIENT_REDUCTIONS:
            raise ValueError(f"gradient_reduction must be one of {GRADIENT_REDUCTIONS}, "
                             f"got {gradient_reduction!r}")
        if ig_steps < 1:
            raise ValueError(f"ig_steps must be >= 1, got {ig_steps}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None), got {batch_size}")
        check_norm_factor(norm_factor)
        self.methods, self.fractions = methods, tuple(fractions)
        self.seed, self.ig_steps, self.batch_size = seed, ig_steps, batch_size
        self.norm_factor, self.gradient_reduction = norm_factor, gradient_reduction

    # ------------------------------------------------------------------ subclass parts
    def _intact(self, model: nn.Module) -> Examples:
        raise NotImplementedError

    def _probs(self, model: nn.Module, ids: Tensor, t: Tensor, y: Tensor | None = None
               ) -> tuple[Tensor, np.ndarray]:
        """(y, p(y | ids) at t) per row; y None: the model's argmax at t."""
        raise NotImplementedError

    def _attribute(self, model: nn.Module, ex: Examples) -> AttributionScores:
        raise NotImplementedError

    # ------------------------------------------------------------------ the call
    def __call__(self, model: nn.Module) -> dict[str, float]:
        extra: dict[str, float] = {}
        with eval_mode(model):
            with torch.no_grad():
                ex = self._intact(model)
                scores = self._scores(model, ex)
            grads = [m for m in CAPTUM_METHODS if m in self.methods]
            if grads:
                deltas: dict[str, Tensor] = {}
                with keep_grads(model), torch.enable_grad():
                    per_dim = gradient_attributions(model, ex.ids, ex.t, ex.y, grads,
                                                    ig_steps=self.ig_steps, reduction=None,
                                                    deltas=deltas)
                for m, a in per_dim.items():
                    scores[m] = _on_candidates(per_position(a, self.gradient_reduction), ex)
                if "integrated_gradients" in per_dim:
                    extra[IG_COMPLETENESS_ERROR] = completeness_error(
                        per_dim["integrated_gradients"], deltas["integrated_gradients"])
            with torch.no_grad():
                return {**self._measure(model, ex, scores), **extra}

    def _scores(self, model: nn.Module, ex: Examples) -> dict[str, list[np.ndarray]]:
        """Per method, per example: scores over the candidates (gradients aside)."""
        scores: dict[str, list[np.ndarray]] = {}
        want = [m for m in self.methods if m in ("normxlogit", "logat", "norm")]
        if want:
            a = self._attribute(model, ex)
            for m in want:
                scores[m] = _on_candidates(getattr(a, m), ex)
        if "random" in self.methods:  # the same draws at every call
            rng = np.random.default_rng(self.seed)
            scores["random"] = [rng.random(len(c)) for c in ex.candidates]
        return scores

    def _replaced_probs(self, model: nn.Module, ex: Examples, owners: list[int],
                        hidden: list[np.ndarray]) -> np.ndarray:
        """p(y) at t for copies of examples ``owners`` with positions ``hidden`` replaced;
        coinciding copies go through once."""
        if not owners:
            return np.zeros(0)
        owner = torch.tensor(owners, device=ex.ids.device)
        hide = np.zeros((len(owners), ex.ids.shape[1]), dtype=bool)
        for r, positions in enumerate(hidden):
            hide[r, positions] = True
        rows = torch.where(torch.from_numpy(hide).to(ex.ids.device), ex.replacement,
                           ex.ids[owner])
        keyed = torch.cat([owner[:, None], rows], dim=1)
        distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
        who = distinct[:, 0]
        _, probs = self._probs(model, distinct[:, 1:], ex.t[who], ex.y[who])
        return probs[inverse.cpu().numpy()]

    def _measure(self, model: nn.Module, ex: Examples,
                 scores: dict[str, list[np.ndarray]]) -> dict[str, float]:
        cands, n = ex.candidates, len(ex.candidates)
        # Leave-one-out importance_i = p_full - p(y | candidate i replaced).
        loo_p = self._replaced_probs(model, ex, [b for b, c in enumerate(cands) for _ in c],
                                     [[i] for c in cands for i in c])
        bounds = np.cumsum([len(c) for c in cands])[:-1]
        loo = [ex.p_full[b] - p for b, p in enumerate(np.split(loo_p, bounds))]
        scores = {**scores, "loo": loo}
        owners, hidden = [], []  # per (method, k, example): top-k replaced, then the others
        for m in self.methods:
            for frac in self.fractions:
                for b, c in enumerate(cands):
                    top = topk_positions(scores[m][b], frac)
                    owners += [b, b]
                    hidden += [c[top], np.delete(c, top)]
        probs = self._replaced_probs(model, ex, owners, hidden)
        probs = probs.reshape(len(self.methods), len(self.fractions), n, 2)
        return faithfulness_row(self.methods, ex.p_full, probs, scores, loo)


def _on_candidates(scores: Tensor, ex: Examples) -> list[np.ndarray]:
    """[B, T] scores -> per example, its candidates' scores (float64)."""
    s = scores.cpu().double().numpy()
    return [s[b, c] for b, c in enumerate(ex.candidates)]
