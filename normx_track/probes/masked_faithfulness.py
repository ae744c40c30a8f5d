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

The checks, the Captum block and the top-k replacement loop are the faithfulness base's
(`normx_track.probes.faithfulness_base`), shared with the causal probe.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.masked import attribute_masked, encoder_head
from normx_track.gold.metrics import AUTHORS_FRACTIONS
from normx_track.keys import METHODS
from normx_track.modeling import model_device
from normx_track.probes.common import seeded_subset, token_blocks
from normx_track.probes.faithfulness_base import Examples, FaithfulnessBase

__all__ = ["MaskedFaithfulnessProbe"]


class MaskedFaithfulnessProbe(FaithfulnessBase):
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
                 methods: Sequence[str] = METHODS, captum: bool = False,
                 seed: int = 0, *, ig_steps: int = 50, batch_size: int = 256,
                 norm_factor: str = "word_embedding", gradient_reduction: str = "l1"):
        """As `FaithfulnessProbe`; ``length`` counts the [CLS] and [SEP] too."""
        super().__init__(methods=methods, captum=captum, fractions=fractions, seed=seed,
                         ig_steps=ig_steps, batch_size=batch_size, norm_factor=norm_factor,
                         gradient_reduction=gradient_reduction)
        if length < 4:
            raise ValueError(f"length must be >= 4 ([CLS], two tokens, [SEP]), got {length}")
        for name in ("mask_token_id", "cls_token_id", "sep_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"the tokenizer has no {name[:-9]} token: a masked LM's "
                                 f"faithfulness probe needs [MASK], [CLS] and [SEP]")
        blocks = [b for b in token_blocks(texts_or_token_blocks, tokenizer, length - 2)
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

    @property
    def candidates(self) -> list[np.ndarray]:
        """Per example, the positions that can be ranked and masked (not t, not specials)."""
        inner = np.arange(1, self.input_ids.shape[1] - 1)
        return [inner[inner != t] for t in self.t.tolist()]

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

    def _intact(self, model: nn.Module) -> Examples:
        device = model_device(model)
        ids, t = self.input_ids.to(device), self.t.to(device)
        y, p_full = self._probs(model, ids, t)
        return Examples(ids, t, y, p_full, self.candidates, self.mask_id)

    def _attribute(self, model: nn.Module, ex: Examples):
        return attribute_masked(model, ex.ids, target=ex.y, norm_factor=self.norm_factor,
                                position=ex.t)
