"""The Hugging Face `Trainer` front end: ``from normx_track.hf import NormTrackerCallback``
(defined in `normx_track.tracker.hf`)."""
from normx_track.tracker.hf import STATE_FILE, NormTrackerCallback

__all__ = ["NormTrackerCallback", "STATE_FILE"]
