"""Probes run at each snapshot: evidence alignment, minimal-pair likelihoods, faithfulness,
probe files and BLiMP, and the function-word lists. `normx_track.probes.protocol` holds
the `Probe` protocol and `run_probes` (re-exported by `probes.base`); each family's
shared skeleton is its base (`evidence_base`, `faithfulness_base`)."""
