"""normx-track: embedding-norm and NormXLogit instrumentation for LM pre-training."""
