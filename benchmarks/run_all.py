"""Run every benchmark, each in its own process, and print one table of the headline
ratios: tracker overhead, snapshot cost, gold statistics throughput, attribution versus
Captum.

    python benchmarks/run_all.py            # a few minutes on 2 CPU cores
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_tracker.py", "bench_gold.py", "bench_attribution.py", "bench_loss.py",
              "bench_cpu_step.py"]


def run(script: str) -> list[dict]:
    """Stream the benchmark's output; return its SUMMARY rows."""
    rows = []
    proc = subprocess.Popen([sys.executable, str(HERE / script)], stdout=subprocess.PIPE,
                            text=True, cwd=HERE.parent)
    for line in proc.stdout:
        if line.startswith("SUMMARY "):
            rows.append(json.loads(line[len("SUMMARY "):]))
        else:
            print(f"  {line}", end="", flush=True)
    if proc.wait() != 0:
        rows.append({"name": f"{script} FAILED (exit {proc.returncode})", "value": float("nan"),
                     "unit": "", "target": "", "met": False})
    return rows


def main() -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"
    rows = []
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        rows += run(script)
    print(f"\nnormx-track benchmarks on {machine}")
    print(f"{'figure':<48}{'value':>12}  {'unit':<12}{'target':<16}met")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['name']:<48}{r['value']:>12.3g}  {r['unit']:<12}{r['target']:<16}{met}")


if __name__ == "__main__":
    main()
