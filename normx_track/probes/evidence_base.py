"""What the causal and the masked evidence probes share (DESIGN.md "Evidence alignment"):
the checks, the seeded choice of pairs, the batch loop, the metric names, one way of
counting the scored pairs, and accuracy by UID. A subclass says how its pairs are laid
out, explained and ranked for its kind of model, and how it measures accuracy.

Ranking, in both: per row, the positions that are ranked (``ranked``) and the cue
positions among them (``relevant``); a row with no relevant position gives no evidence
score. AP and DP per method over the ranked positions (`normx_track.gold.metrics`), the
random expectation over the same positions, per layer for the methods with layer stacks.

Layer-wise methods plug in as `LayerwiseMethod`s (``layerwise=[...]``): per batch, the
base calls each with the batch's inputs and each row's explained position and token, and ranks
its scores layer by layer with the same rules (``normx/evidence_ap_by_layer/<name>/...`` and
``normx/evidence_dp_by_layer/<name>/...``; the last layer also as ``normx/evidence_ap/<name>``
and ``.../evidence_dp/<name>``). A context-mixing method is named by its string
(``layerwise=["alti", "rollout"]``, `keys.CONTEXT_MIXING_METHODS`): `ContextMixingMethod`
ranks row t of each layer's matrix (how much the explained position draws on each input
position after layer l: ``layer_01`` .. ``layer_L``), all layers from one call per batch.
An architecture a method cannot read is refused when the probe is built with ``model=``
(or when first called), in one line naming the method and the architecture.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normx_track.attribution.mixing import context_mixing, method_class
from normx_track.attribution.scores import AttributionScores, check_norm_factor
from normx_track.gold.metrics import (average_precision_rows, dot_product_alignment_rows,
                                      random_baselines_rows)
from normx_track.keys import (CONTEXT_MIXING_METHODS, CONTRASTIVE_METHODS, EVIDENCE_AP,
                              EVIDENCE_AP_BY_LAYER, EVIDENCE_DP, EVIDENCE_DP_BY_LAYER,
                              EVIDENCE_N_PAIRS, EVIDENCE_N_PAIRS_CONTRASTIVE, METHODS)
from normx_track.modeling import eval_mode, model_device
from normx_track.probes.common import accuracy_by_uid, nanmean, seeded_subset
from normx_track.probes.files import MinimalPair, load_probe_file

__all__ = ["Alignment", "ContextMixingMethod", "EvidenceBase", "ExplainedBatch",
           "LayerwiseInputs", "LayerwiseMethod", "Ranking", "layerwise_methods", "score_arrays"]


@dataclass
class Ranking:
    """One explained prediction per row of a batch: what is ranked and what is a cue."""

    ranked: np.ndarray  # [B, T] bool: positions in the ranking and the softmax
    relevant: np.ndarray  # [B, T] bool: cue positions among them
    keep: np.ndarray  # [B] bool: rows that are scored (a cue is ranked; contrast exists)

    @classmethod
    def of(cls, cue: np.ndarray, ranked: np.ndarray, keep: np.ndarray | None = None):
        relevant = cue & ranked
        scored = relevant.any(axis=1)
        return cls(ranked, relevant, scored if keep is None else scored & keep)


@dataclass
class ExplainedBatch:
    """A subclass's explanation of one batch: scores per method [B, T], layer stacks per
    method [L, B, T] at ``layers``, the contrastive variants', and what it carries to its
    own metrics (e.g. log-probabilities read from the same pass)."""

    ranking: Ranking
    scores: dict[str, np.ndarray]
    stacks: dict[str, np.ndarray] = field(default_factory=dict)
    layers: Sequence[int] = ()
    contrast: Ranking | None = None
    contrastive: dict[str, np.ndarray] = field(default_factory=dict)
    carry: Any = None


@dataclass
class LayerwiseInputs:
    """A batch as a layer-wise method sees it, on the model's device."""

    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    position: Tensor  # [B] the explained position t of each row
    target: Tensor  # [B] the token explained there (the good word's); target-free may ignore


class LayerwiseMethod(Protocol):
    """A method giving, per layer, scores over the input positions for the prediction at
    each row's t (e.g. row t of a context-mixing matrix): ``(layers, [L, B, T])``."""

    name: str

    def __call__(self, model: nn.Module, inputs: LayerwiseInputs
                 ) -> tuple[Sequence[int], Tensor | np.ndarray]: ...


class ContextMixingMethod:
    """A context-mixing method (`normx_track.attribution.mixing`) as a `LayerwiseMethod`:
    the scores of row b at layer l are row t_b of layer l's matrix, ``M_l[t_b, :]`` (how
    much the explained position draws on each input position after layer l; layer l is the
    mixing matrix's index l - 1, so the keys run ``layer_01`` .. ``layer_L``, as the
    logit lens's ``layer_NN`` is the hidden state after layer NN). One `context_mixing`
    call per batch gives every layer.

    ``layers``: "all", "last", or layer numbers (1..L; 0, the embeddings, has no mixing
    matrix and is skipped), as the probe's; the last one listed is the headline
    ``evidence_ap/<name>``. ``options`` go to the method's class (``max_tokens``, ``p``,
    ``rolled_out``)."""

    def __init__(self, name: str, layers: str | Sequence[int] = "all", **options):
        if name not in CONTEXT_MIXING_METHODS:
            raise ValueError(f"unknown layer-wise method {name!r}: one of "
                             f"{list(CONTEXT_MIXING_METHODS)}")
        if isinstance(layers, str) and layers not in ("all", "last"):
            raise ValueError(f"layers must be 'all', 'last' or layer numbers, got {layers!r}")
        self.name, self.layers, self.options = name, layers, options

    def check(self, model: nn.Module) -> None:
        """`UnsupportedModel` (one line naming the method and the architecture) when the
        method cannot read ``model``; nothing is computed."""
        method_class(self.name)(model, **self.options)

    def _selected(self, n_layers: int) -> list[int]:
        if self.layers == "all":
            return list(range(1, n_layers + 1))
        if self.layers == "last":
            return [n_layers]
        chosen = sorted({int(l) for l in self.layers if int(l) != 0})
        bad = [l for l in chosen if not 1 <= l <= n_layers]
        if bad:
            raise ValueError(f"{self.name}: layers {bad} out of range (the model has "
                             f"{n_layers}: 1..{n_layers})")
        return chosen or [n_layers]

    def __call__(self, model: nn.Module, inputs: LayerwiseInputs
                 ) -> tuple[list[int], Tensor]:
        m = context_mixing(model, inputs.input_ids, self.name, inputs.attention_mask,
                           **self.options)  # [B, L, T, T]
        rows = torch.arange(m.shape[0], device=m.device)
        at_t = m[rows, :, inputs.position.to(m.device)]  # [B, L, T]: row t_b of each layer
        layers = self._selected(m.shape[1])
        index = torch.tensor([l - 1 for l in layers], device=m.device)
        return layers, at_t.transpose(0, 1)[index]  # [L', B, T]


def layerwise_methods(methods: Sequence[LayerwiseMethod | str],
                      layers: str | Sequence[int] = "all") -> tuple[LayerwiseMethod, ...]:
    """``methods`` with each name (`keys.CONTEXT_MIXING_METHODS`) made a
    `ContextMixingMethod` over ``layers``; an unknown name is a ValueError naming the
    choices."""
    return tuple(ContextMixingMethod(m, layers) if isinstance(m, str) else m for m in methods)


def score_arrays(a: AttributionScores, contrast: AttributionScores | None = None
                 ) -> tuple[dict, dict, dict]:
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


def _kept_ap_dp(stack: np.ndarray, r: Ranking) -> tuple[np.ndarray, np.ndarray]:
    """AP and DP of every [B, T] score array in ``stack`` [N, B, T] at once, kept rows only."""
    ap = average_precision_rows(stack, r.relevant, r.ranked)
    with np.errstate(invalid="ignore"):  # rows with nothing ranked: NaN, not kept
        dp = dot_product_alignment_rows(stack, r.relevant, r.ranked)
    return ap[:, r.keep], dp[:, r.keep]


class Alignment:
    """Per-row AP and DP of each method, accumulated over batches; ``n`` the rows scored."""

    def __init__(self):
        self.ap: dict[str, list[float]] = {}
        self.dp: dict[str, list[float]] = {}
        self.by_layer: dict[tuple[str, int], list[float]] = {}
        self.by_layer_dp: dict[tuple[str, int], list[float]] = {}
        self.n = 0

    def add(self, scores: dict[str, np.ndarray], r: Ranking, random_name: str) -> None:
        """The kept rows of [B, T] ``scores``, and the random expectation as ``random_name``."""
        self.n += int(r.keep.sum())
        if scores:
            ap, dp = _kept_ap_dp(np.stack(list(scores.values())), r)
            for name, a, d in zip(scores, ap, dp):
                self.ap.setdefault(name, []).extend(a)
                self.dp.setdefault(name, []).extend(d)
        random_ap, random_dp = random_baselines_rows(r.relevant, r.ranked)
        self.ap.setdefault(random_name, []).extend(random_ap[r.keep])
        self.dp.setdefault(random_name, []).extend(random_dp[r.keep])

    def add_layers(self, stacks: dict[str, np.ndarray], layers: Sequence[int],
                   r: Ranking) -> None:
        if not stacks:
            return
        ap, dp = _kept_ap_dp(np.concatenate(list(stacks.values())), r)  # [M x L, kept]
        for i, (name, layer) in enumerate((n, l) for n in stacks for l in layers):
            self.by_layer.setdefault((name, layer), []).extend(ap[i])
            self.by_layer_dp.setdefault((name, layer), []).extend(dp[i])

    def metrics(self, methods: Sequence[str]) -> dict[str, float]:
        out = {}
        for name in methods:
            out[EVIDENCE_AP.format(method=name)] = nanmean(self.ap.get(name, []))
            out[EVIDENCE_DP.format(method=name)] = nanmean(self.dp.get(name, []))
        for (name, layer), values in sorted(self.by_layer.items()):
            out[EVIDENCE_AP_BY_LAYER.format(method=name, layer=layer)] = nanmean(values)
        for (name, layer), values in sorted(self.by_layer_dp.items()):
            out[EVIDENCE_DP_BY_LAYER.format(method=name, layer=layer)] = nanmean(values)
        return out


class EvidenceBase:
    """The evidence probes' skeleton. A subclass sets ``rows`` (its laid-out pairs:
    ``len`` and slicing) in `_encode` and supplies `_explain`, `_inputs`, `_check_model`,
    `_evidence_metrics` and `_accuracy`. Keys written here::

        normx/evidence_ap/<method>, normx/evidence_dp/<method>, normx/evidence_n_pairs
        normx/evidence_ap_by_layer/<method>/layer_NN, normx/evidence_dp_by_layer/<method>/layer_NN
        (contrastive) .../<method>_contrastive, normx/evidence_n_pairs_contrastive
    """

    what = "evidence probe"  # in messages

    def __init__(self, pairs: Sequence[MinimalPair] | str | Path, tokenizer,
                 batch_size: int = 128, layers: str | Sequence[int] = "all", seed: int = 0, *,
                 max_pairs: int | None = None, max_length: int | None = None,
                 contrastive: bool = True, norm_factor: str = "word_embedding",
                 by_uid: bool = True, leading_space: bool = True,
                 layerwise: Sequence[LayerwiseMethod | str] = (),
                 model: nn.Module | None = None):
        if isinstance(pairs, (str, Path)):
            pairs = load_probe_file(pairs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 (or None: all), got {max_pairs}")
        check_norm_factor(norm_factor)
        layerwise = layerwise_methods(layerwise, layers)
        names = [m.name for m in layerwise]
        clash = [n for n in names if n in (*METHODS, *CONTRASTIVE_METHODS)]
        if clash or len(set(names)) < len(names):
            raise ValueError(f"layer-wise method names must be new and distinct, got {names}")
        pairs = seeded_subset(pairs, max_pairs, seed)
        if not pairs:
            raise ValueError(f"no minimal pairs for the {self.what}")
        self.batch_size, self.layers, self.seed = batch_size, layers, seed
        self.contrastive, self.norm_factor, self.by_uid = contrastive, norm_factor, by_uid
        self.layerwise = tuple(layerwise)
        self.rows = None
        self.stats: dict[str, float] = {}
        self._encode(pairs, tokenizer, max_length, leading_space)
        if model is not None:
            self.check_layerwise(model)

    def check_layerwise(self, model: nn.Module) -> None:
        """Refuse, before anything runs, a layer-wise method that cannot read ``model``
        (`mixing.UnsupportedModel`, one line naming the method and the architecture)."""
        for method in self.layerwise:
            check = getattr(method, "check", None)
            if check is not None:
                check(model)

    # ------------------------------------------------------------------ subclass parts
    def _encode(self, pairs, tokenizer, max_length, leading_space) -> None:
        raise NotImplementedError

    def _check_model(self, model: nn.Module) -> None:
        """Raise when the probe cannot run on ``model`` (kind, context size)."""

    def _explain(self, model: nn.Module, batch) -> ExplainedBatch:
        raise NotImplementedError

    def _inputs(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(input_ids, attention_mask, explained position, explained token) of a batch,
        for `layerwise`."""
        raise NotImplementedError

    def _has_evidence(self) -> bool:
        """Whether this probe writes the evidence keys (it has one-prefix pairs)."""
        return self.rows is not None

    def _evidence_metrics(self, carried: list) -> dict[str, float]:
        """The subclass's own keys from what its batches carried."""
        return {}

    def _accuracy(self, model: nn.Module, carried: list) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the call
    def __call__(self, model: nn.Module) -> dict[str, float]:
        self._check_model(model)
        self.check_layerwise(model)
        out: dict[str, float] = dict(self.stats)
        carried: list = []
        with eval_mode(model), torch.no_grad():
            if self._has_evidence():
                out.update(self._evidence(model, carried))
            out.update(self._accuracy(model, carried))
        return out

    def _evidence(self, model: nn.Module, carried: list) -> dict[str, float]:
        main, contrast = Alignment(), Alignment()
        n = len(self.rows) if self.rows is not None else 0
        for start in range(0, n, self.batch_size):
            batch = self.rows[start: start + self.batch_size]
            e = self._explain(model, batch)
            carried.append(e.carry)
            main.add(e.scores, e.ranking, "random")
            main.add_layers(e.stacks, e.layers, e.ranking)
            if self.layerwise:
                self._add_layerwise(model, batch, e.ranking, main)
            if self.contrastive and e.contrast is not None:
                contrast.add(e.contrastive, e.contrast, "random_contrastive")
        out = main.metrics([*METHODS, *(m.name for m in self.layerwise)])
        out[EVIDENCE_N_PAIRS] = main.n
        if self.contrastive:
            out.update(contrast.metrics(CONTRASTIVE_METHODS))
            out[EVIDENCE_N_PAIRS_CONTRASTIVE] = contrast.n
        out.update(self._evidence_metrics(carried))
        return out

    def _add_layerwise(self, model: nn.Module, batch, ranking: Ranking,
                       main: Alignment) -> None:
        device = model_device(model)
        inputs = LayerwiseInputs(*(x.to(device) for x in self._inputs(batch)))
        for method in self.layerwise:
            layers, stack = method(model, inputs)
            stack = torch.as_tensor(stack).float().cpu().numpy()
            main.add_layers({method.name: stack}, layers, ranking)
            # The last layer as the method's headline AP / DP (random already counted).
            (ap,), (dp,) = _kept_ap_dp(stack[-1:], ranking)
            main.ap.setdefault(method.name, []).extend(ap)
            main.dp.setdefault(method.name, []).extend(dp)

    def _by_uid(self, key: str, correct: np.ndarray, pairs: Sequence[MinimalPair]) -> dict:
        return accuracy_by_uid(key, correct, pairs) if self.by_uid else {}
