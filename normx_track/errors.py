"""The one base class for bad input: a config value, a data, probe, lexicon or word-list
file, a checkpoint. Its message names the key, file or line; `train.py` prints it as one
line and exits with status 2, never a traceback."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user; the message names the config key, file or line."""
