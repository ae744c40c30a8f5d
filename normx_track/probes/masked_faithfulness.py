"""The faithfulness probe for masked LMs (DESIGN.md "Masked language models": the authors'
Experiment 1 with [MASK] as the replacement), writing the causal `FaithfulnessProbe`'s
metric names.

Choices (documented here once)
------------------------------
* Examples: held-out windows of ``length`` - 2 stream tokens wrapped as the model trains,
  ``[CLS] ... [SEP]``; in each, one seeded position t (not a special token) is replaced by
  [MASK] and the model's argmax y there is explained. Windows all have the same length,
  so no row is padded (a bidirectional model would attend to pads).
* Candidate positions: every position but t and the two special tokens. Removal REPLACES
  a candidate's token by [MASK]: comprehensiveness the top-k% candidates, sufficiency
  all the others; k% of n candidates is floor(k n) (`metrics.topk_positions`). Fractions
  as the causal probe (the authors' 0, 10, ..., 100 % by default).
* Leave-one-out importance_i = p_full(y) - p(y | candidate i masked); ``loo_spearman`` is
  each method's rank agreement with it. "random": seeded scores, the same at every call.
* Gradient baselines (``captum=True``): `faithfulness.gradient_attributions` of the logit
  of y at t, as the causal probe runs them.
* Only position t goes through the MLM head in the perturbed passes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.masked import attribute_masked, encoder_head
from normx_track.attribution.normxlogit import eval_mode, model_device
from normx_track.gold.metrics import AUTHORS_FRACTIONS, topk_positions
from normx_track.keys import (ATTRIBUTION_METHODS, CAPTUM_METHODS, FAITHFULNESS_METHODS,
                              IG_COMPLETENESS_ERROR)
from normx_track.probes.evidence import seeded_subset
from normx_track.probes.faithfulness import (_blocks, _keep_grads, completeness_error,
                                             faithfulness_row, gradient_attributions,
                                             per_position)

__all__ = ["MaskedFaithfulnessProbe"]


class MaskedFaithfulnessProbe:
    """Comprehensiveness, sufficiency and leave-one-out agreement of attributions of a
    masked LM's prediction at one [MASK] of held-out windows (module docstring). Keys as
    `FaithfulnessProbe`'s: ``normx/comprehensiveness/<method>``,
    ``normx/sufficiency/<method>``, ``normx/loo_spearman/<method>``,
    ``normx/faithfulness_n_examples``, ``normx/faithfulness_mean_p_full`` (and
    ``normx/ig_completeness_error`` with ``captum``).

        probe = MaskedFaithfulnessProbe(held_out_tokens, tokenizer)
        row = probe(bert_for_masked_lm)
    """

    def __init__(self, texts_or_token_blocks, tokenizer, n_examples: int = 32,
                 length: int = 32, fractions: Sequence[float] = AUTHORS_FRACTIONS,
                 methods: Sequence[str] = ATTRIBUTION_METHODS, captum: bool = False,
                 seed: int = 0, *, ig_steps: int = 50, batch_size: int = 256,
                 norm_factor: str = "word_embedding", gradient_reduction: str = "l1"):
        """As `FaithfulnessProbe`; ``length`` counts the [CLS] and [SEP] too."""
        methods = list(methods) + [m for m in CAPTUM_METHODS if captum and m not in methods]
        unknown = [m for m in methods if m not in (*FAITHFULNESS_METHODS, *CAPTUM_METHODS)]
        if unknown:
            raise ValueError(f"unknown faithfulness methods {unknown}")
        if not fractions or not all(0 <= f <= 1 for f in fractions):
            raise ValueError(f"fractions must be in [0, 1], got {list(fractions)}")
        if length < 4:
            raise ValueError(f"length must be >= 4 ([CLS], two tokens, [SEP]), got {length}")
        for name in ("mask_token_id", "cls_token_id", "sep_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"the tokenizer has no {name[:-9]} token: a masked LM's "
                                 f"faithfulness probe needs [MASK], [CLS] and [SEP]")
        blocks = [b for b in _blocks(texts_or_token_blocks, tokenizer, length - 2)
                  if len(b) == length - 2]
        if not blocks:
            raise ValueError(f"no held-out window of {length - 2} tokens for the masked "
                             f"faithfulness probe")
        blocks = seeded_subset(blocks, n_examples, seed)
        rng = np.random.default_rng(seed)
        self.mask_id = int(tokenizer.mask_token_id)
        rows = [[int(tokenizer.cls_token_id), *b, int(tokenizer.sep_token_id)] for b in blocks]
        self.input_ids = torch.tensor(rows)
        self.t = torch.from_numpy(rng.integers(1, length - 1, len(rows)))
        self.input_ids[torch.arange(len(rows)), self.t] = self.mask_id
        self.methods, self.fractions = methods, tuple(fractions)
        self.seed, self.ig_steps, self.batch_size = seed, ig_steps, batch_size
        self.norm_factor, self.gradient_reduction = norm_factor, gradient_reduction

    @property
    def candidates(self) -> list[np.ndarray]:
        """Per example, the positions that can be ranked and masked (not t, not specials)."""
        inner = np.arange(1, self.input_ids.shape[1] - 1)
        return [inner[inner != t] for t in self.t.tolist()]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        device = model_device(model)
        ids, t = self.input_ids.to(device), self.t.to(device)
        extra: dict[str, float] = {}
        with eval_mode(model):
            with torch.no_grad():
                y, p_full = self._probs(model, ids, t)
                scores = self._scores(model, ids, t, y)
            grads = [m for m in CAPTUM_METHODS if m in self.methods]
            if grads:
                deltas: dict[str, Tensor] = {}
                with _keep_grads(model), torch.enable_grad():
                    per_dim = gradient_attributions(model, ids, t, y, grads,
                                                    ig_steps=self.ig_steps, reduction=None,
                                                    deltas=deltas)
                for m, a in per_dim.items():
                    s = per_position(a, self.gradient_reduction).cpu().double().numpy()
                    scores[m] = [s[b, c] for b, c in enumerate(self.candidates)]
                if "integrated_gradients" in per_dim:
                    extra[IG_COMPLETENESS_ERROR] = completeness_error(
                        per_dim["integrated_gradients"], deltas["integrated_gradients"])
            with torch.no_grad():
                return {**self._measure(model, ids, t, y, p_full, scores), **extra}

    def _probs(self, model: nn.Module, ids: Tensor, t: Tensor, y: Tensor | None = None
               ) -> tuple[Tensor, np.ndarray]:
        """(y, p(y) at t) per row, ``batch_size`` rows a pass; y None: the argmax."""
        _, U, transform = encoder_head(model)
        ys, ps = [], []
        for s in range(0, len(ids), self.batch_size):
            rows = slice(s, s + self.batch_size)
            states = model.base_model(input_ids=ids[rows]).last_hidden_state
            at = states[torch.arange(states.shape[0], device=ids.device), t[rows]]
            logp = U(transform(at)).float().log_softmax(-1)
            picked = logp.argmax(-1) if y is None else y[rows]
            ys.append(picked)
            ps.append(logp.gather(1, picked[:, None]).squeeze(1).exp())
        return torch.cat(ys), torch.cat(ps).double().cpu().numpy()

    def _scores(self, model, ids, t, y) -> dict[str, list[np.ndarray]]:
        want = [m for m in self.methods if m in ("normxlogit", "logat", "norm")]
        scores: dict[str, list[np.ndarray]] = {}
        if want:
            a = attribute_masked(model, ids, t, target=y, norm_factor=self.norm_factor)
            for m in want:
                s = getattr(a, m).cpu().double().numpy()
                scores[m] = [s[b, c] for b, c in enumerate(self.candidates)]
        if "random" in self.methods:
            rng = np.random.default_rng(self.seed)
            scores["random"] = [rng.random(len(c)) for c in self.candidates]
        return scores

    def _masked_probs(self, model, ids, t, y, owners: list[int],
                      hidden: list[np.ndarray]) -> np.ndarray:
        """p(y) at t for copies of examples ``owners`` with positions ``hidden`` masked."""
        if not owners:
            return np.zeros(0)
        owner = torch.tensor(owners, device=ids.device)
        rows = ids[owner].clone()
        for r, positions in enumerate(hidden):
            rows[r, torch.as_tensor(positions, dtype=torch.long)] = self.mask_id
        return self._probs(model, rows, t[owner], y[owner])[1]

    def _measure(self, model, ids, t, y, p_full: np.ndarray,
                 scores: dict[str, list[np.ndarray]]) -> dict[str, float]:
        cands, n = self.candidates, len(self.candidates)
        loo_owners = [b for b, c in enumerate(cands) for _ in c]
        loo_p = self._masked_probs(model, ids, t, y, loo_owners,
                                   [[i] for c in cands for i in c])
        bounds = np.cumsum([len(c) for c in cands])[:-1]
        loo = [p_full[b] - p for b, p in enumerate(np.split(loo_p, bounds))]
        scores = {**scores, "loo": loo}
        owners, hidden = [], []  # per (method, k, example): top-k masked, then the others
        for m in self.methods:
            for frac in self.fractions:
                for b, c in enumerate(cands):
                    top = topk_positions(scores[m][b], frac)
                    owners += [b, b]
                    hidden += [c[top], np.delete(c, top)]
        probs = self._masked_probs(model, ids, t, y, owners, hidden)
        probs = probs.reshape(len(self.methods), len(self.fractions), n, 2)
        return faithfulness_row(self.methods, p_full, probs, scores, loo)
