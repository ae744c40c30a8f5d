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

The checks, the Captum block and the top-k replacement loop are the faithfulness base's
(`normx_track.probes.faithfulness_base`), shared with the masked LM's probe; the gradient
baselines are `normx_track.probes.gradients`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.normxlogit import attribute
from normx_track.gold.metrics import AUTHORS_FRACTIONS
from normx_track.keys import (  # noqa: F401 - the names this probe writes (old import paths)
    ATTRIBUTION_METHODS, CAPTUM_METHODS, COMPREHENSIVENESS, FAITHFULNESS_MEAN_P_FULL,
    FAITHFULNESS_METHODS, FAITHFULNESS_N_EXAMPLES, IG_COMPLETENESS_ERROR, LOO_SPEARMAN,
    SUFFICIENCY)
from normx_track.modeling import model_device
from normx_track.probes.common import seeded_subset, token_blocks
from normx_track.probes.faithfulness_base import (Examples, FaithfulnessBase,  # noqa: F401
                                                  faithfulness_row)
from normx_track.probes.gradients import (GRADIENT_REDUCTIONS, completeness_error,  # noqa: F401
                                          gradient_attributions, logits_at, per_position,
                                          supports_logits_to_keep)

__all__ = ["FaithfulnessProbe", "CAPTUM_METHODS", "FAITHFULNESS_METHODS", "gradient_attributions"]

_LOGITS_BUDGET_BYTES = 1 << 28  # ~256 MB of float32 logits per forward chunk


class FaithfulnessProbe(FaithfulnessBase):
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
        super().__init__(methods=methods, captum=captum, fractions=fractions, seed=seed,
                         ig_steps=ig_steps, batch_size=batch_size, norm_factor=norm_factor,
                         gradient_reduction=gradient_reduction)
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        blocks = token_blocks(texts_or_token_blocks, tokenizer, length)
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
        keep = supports_logits_to_keep(model)
        chunk = self._chunk(model, ids.shape[1], keep)
        ys, ps = [], []
        for s in range(0, ids.shape[0], chunk):
            logp = logits_at(model, t[s: s + chunk], keep,
                             input_ids=ids[s: s + chunk]).log_softmax(-1)
            picked = logp.argmax(-1) if y is None else y[s: s + chunk]
            ys.append(picked)
            ps.append(logp.gather(1, picked[:, None]).squeeze(1).exp())
        return torch.cat(ys), torch.cat(ps).cpu().double().numpy()

    def _intact(self, model: nn.Module) -> Examples:
        """The intact examples on the model's device, y = argmax at t and p_full = p(y);
        the candidates of an example are its positions 0..t."""
        device = model_device(model)
        ids, t = self.input_ids.to(device), self.last.to(device)
        y, p_full = self._probs(model, ids, t)
        return Examples(ids, t, y, p_full, [np.arange(tb + 1) for tb in self.last.tolist()],
                        self._baseline(model))

    def _attribute(self, model: nn.Module, ex: Examples):
        a = attribute(model, ex.ids, self.attention_mask.to(ex.ids.device), target=ex.y,
                      norm_factor=self.norm_factor)
        if not torch.equal(a.position, ex.t):
            raise RuntimeError("attribution explained another position than the last")
        return a
