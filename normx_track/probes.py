"""Probes run by `NormTracker` at each snapshot: ``probe(model) -> {"normx/...": float}``,
called with the unwrapped Hugging Face causal LM. They restore the model's train/eval
flags, run without gradients (Captum's baselines excepted, which leave no ``.grad``
behind) and are deterministic for a given ``seed``.

    tracker = NormTracker(gold, vocab, probes=[
        EvidenceProbe(load_probe_file("probes.jsonl"), tokenizer),   # normx_track.evidence
        FaithfulnessProbe(held_out_texts, tokenizer, captum=True),   # normx_track.faithfulness
    ])
"""
from .evidence import EvidenceProbe
from .faithfulness import FaithfulnessProbe

__all__ = ["EvidenceProbe", "FaithfulnessProbe"]
