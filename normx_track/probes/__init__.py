"""Probes run at each snapshot: evidence alignment, minimal-pair likelihoods, faithfulness,
probe files and BLiMP, and the function-word lists. `normx_track.probes.base` holds the
`Probe` protocol and `run_probes`."""
