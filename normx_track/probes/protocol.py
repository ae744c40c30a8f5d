"""What a probe is to the tracker: ``probe(model) -> {"normx/...": float}``, called with the
unwrapped Hugging Face model at each snapshot. Probes restore the model's train/eval
flags, run without gradients (Captum's baselines excepted, which leave no ``.grad``
behind) and are deterministic for a given ``seed``. Imports no probe, so the
framework-free tracker core pulls in none.

    tracker = Tracker(gold, vocab, probes=[
        EvidenceProbe(load_probe_file("probes.jsonl"), tokenizer),   # probes.evidence
        FaithfulnessProbe(held_out_texts, tokenizer, captum=True),   # probes.faithfulness
    ])
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from normx_track.modeling import eval_mode

__all__ = ["Probe", "run_probes"]


class Probe(Protocol):
    """Extra measurements at each snapshot (e.g. evidence alignment); recorded by rank zero."""

    def __call__(self, model: torch.nn.Module) -> dict[str, float]: ...


def run_probes(probes: Sequence[Probe], model: torch.nn.Module) -> dict[str, float]:
    """All probes' metrics, with the model in eval mode for the duration (also what replay
    runs on a saved checkpoint)."""
    if not probes:
        return {}
    with eval_mode(model):
        return {k: v for probe in probes for k, v in probe(model).items()}
