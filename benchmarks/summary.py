"""One line per headline figure, `SUMMARY {...}`, that `run_all.py` collects into its table."""
from __future__ import annotations

import json


def emit(name: str, value: float, unit: str, target: str, met: bool | None) -> None:
    print("SUMMARY " + json.dumps({"name": name, "value": float(value), "unit": unit,
                                   "target": target,
                                   "met": None if met is None else bool(met)}), flush=True)
