"""The old home of the `Probe` protocol and `run_probes` (now `probes.protocol`), where the
tracker imports them. ``EvidenceProbe`` and ``FaithfulnessProbe`` still import from here,
loaded on first use, so importing this module loads no probe."""
from __future__ import annotations

import importlib

from normx_track.probes.protocol import Probe, run_probes

__all__ = ["EvidenceProbe", "FaithfulnessProbe", "Probe", "run_probes"]

_LAZY = {"EvidenceProbe": "normx_track.probes.evidence",
         "FaithfulnessProbe": "normx_track.probes.faithfulness"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
