"""normx-track: embedding-norm and NormXLogit instrumentation for LM pre-training."""
from __future__ import annotations

import importlib

from normx_track.version import __version__

# Lazy exports: `import normx_track.training.config` (Hydra start-up) and
# `import normx_track.keys` (analysis) must not pull in torch or Lightning.
_EXPORTS = {
    "Tracker": "tracker.core",
    "tracker_inputs": "tracker.from_corpus",
    "TrackerUsageError": "tracker.core",
    "RankMissingError": "tracker.distributed",
    "NormTracker": "tracker.lightning",
    "GoldStatistics": "gold.statistics",
    "compute_gold": "gold.statistics",
    "attribute": "attribution.normxlogit",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
