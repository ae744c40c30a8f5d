"""What the analysis commands' parsers need, and nothing heavy: `--help` and a bad option
answer before matplotlib, pandas, scipy or torch are imported (issue 30 §6).

Each command module (`analysis.curves`, `.report`, `.sweep`, `.replay`, `.emergence`)
defines its `parser()` above its heavy imports and, run as a command, parses once there:

    if __name__ == "__main__":  # --help and a bad option answer before the imports below
        parser().parse_args()

then `main()` parses again (the same arguments, in microseconds) once the module is loaded,
so `main(argv)` called from Python works as before. This module holds the argument types
those parsers share; it imports only the standard library.
"""
from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    """argparse type: a count such as --min-count."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a count of at least one, such as --workers."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
