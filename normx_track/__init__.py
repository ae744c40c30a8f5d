"""normx-track: embedding-norm and NormXLogit instrumentation for LM pre-training."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Lazy exports: `import normx_track.config` (Hydra start-up) must not pull in Lightning.
_EXPORTS = {"NormTracker": "callback", "GoldStatistics": "gold", "compute_gold": "gold"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
