"""normx-track: embedding-norm and NormXLogit instrumentation for LM pre-training."""
__version__ = "0.1.0"

from .callback import NormTracker  # noqa: E402
from .gold import GoldStatistics, compute_gold  # noqa: E402

__all__ = ["NormTracker", "GoldStatistics", "compute_gold", "__version__"]
