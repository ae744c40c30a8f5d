"""Start-up of the commands: how long `--help` takes (best of 3), and what `import
normx_track` and the default run's `python train.py` start-up import (`-X importtime`'s
top cumulative imports) — the budget of issue 30 §6.

    python benchmarks/bench_startup.py              # under a minute on 2 CPU cores
    python benchmarks/bench_startup.py --repeat 1   # a quicker look

The budget, best of 3 on the 2-core development machine, issue 30 §6 (before: argparse
after the heavy imports, measured with others' jobs running; after: the arguments parsed
first, measured idle):

  python ... --help                       before   after   target
  -m analysis.curves                      1.55 s   0.04 s  < 1 s
  -m analysis.report                      1.62 s   0.05 s  < 1 s
  -m analysis.sweep                       1.59 s   0.04 s  < 1 s
  -m analysis.replay                      4.89 s   0.10 s  < 1 s
  -m analysis.emergence                   1.48 s   0.07 s  < 1 s
  -m analysis.wandb_layout                5.42 s   0.05 s  < 1 s
  -m normx_track.gold                     0.04 s   0.05 s  < 1 s
  -m normx_track.export                   0.12 s   0.12 s  < 1 s
  examples/plain_loop.py                  7.54 s   0.30 s  < 1 s  (numpy: the record store)
  examples/hf_trainer.py                  6.99 s   0.30 s  < 1 s
  -m normx_track.attribution.explain      5.02 s   5.66 s  < 1 s  (not parsed first yet)
  train.py (Hydra's help)                 2.31 s   1.18 s  < 1 s  (Hydra's start-up; not yet)

  import normx_track                      0.002 s          < 0.1 s  (its exports are lazy)
  python train.py start-up imports        7.1 s (idle) to 10 s (loaded)   < 12 s
      (`import train, normx_track.training.run`: Lightning ~6 s of it, with torch,
      torchmetrics, scipy, transformers; a guard against growth, not yet a goal)

`--help` and a bad option never import torch, transformers, lightning, matplotlib or pandas
(tests/test_cli_startup.py checks the modules, not the seconds: seconds on a loaded CI
machine say little). Each command prints a SUMMARY line (benchmarks/summary.py).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.summary import emit  # noqa: E402

HELP_TARGET_S = 1.0
IMPORT_TARGET_S = {"import normx_track": 0.1, "python train.py start-up": 12.0}

COMMANDS = {  # name: argv after `python`
    "analysis.curves": ["-m", "analysis.curves"],
    "analysis.report": ["-m", "analysis.report"],
    "analysis.sweep": ["-m", "analysis.sweep"],
    "analysis.replay": ["-m", "analysis.replay"],
    "analysis.emergence": ["-m", "analysis.emergence"],
    "analysis.wandb_layout": ["-m", "analysis.wandb_layout"],
    "normx_track.gold": ["-m", "normx_track.gold"],
    "normx_track.export": ["-m", "normx_track.export"],
    "normx_track.attribution.explain": ["-m", "normx_track.attribution.explain"],
    "examples/plain_loop.py": ["examples/plain_loop.py"],
    "examples/hf_trainer.py": ["examples/hf_trainer.py"],
    "train.py": ["train.py"],
}

# What a run's start-up imports: train.py's module (Hydra) and what its main imports once
# the config is validated (normx_track.training.run: Lightning, transformers, the probes).
IMPORTS = {"import normx_track": "import normx_track",
           "python train.py start-up": "import train, normx_track.training.run"}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def best_help_seconds(argv: list[str], repeat: int) -> tuple[float, int]:
    """The fastest of `repeat` runs of `python ARGV --help`, and its exit status."""
    best, code = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, env=env(),
                              capture_output=True, timeout=300)
        best, code = min(best, time.perf_counter() - start), proc.returncode
    return best, code


def importtime_rows(code: str) -> list[tuple[float, str]]:
    """`-X importtime` of `python -c CODE`: every module's cumulative seconds and its name,
    indented by its depth as importtime prints it."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"{code!r} failed: {proc.stderr[-2000:]}")
    rows = []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s*\d+ \|\s*(\d+) \|(.*)$", line)
        if match:
            rows.append((int(match[1]) / 1e6, match[2].rstrip()))
    return rows


def import_times(code: str) -> tuple[float, list[tuple[float, str]]]:
    """What CODE imports beyond the interpreter's own start-up (`site` and what `-c pass`
    imports): the total seconds (of the outermost imports) and, per top-level package, its
    cumulative seconds where it was first imported, largest first."""
    baseline = {name.strip() for _, name in importtime_rows("pass")}
    rows = [(s, name) for s, name in importtime_rows(code) if name.strip() not in baseline]
    total = sum(s for s, name in rows if not name.startswith("  "))  # depth 0: one space
    per_package: dict[str, float] = {}
    for seconds, name in rows:
        package = name.strip().split(".")[0]
        per_package[package] = max(per_package.get(package, 0.0), seconds)
    return total, sorted(((s, p) for p, s in per_package.items()), reverse=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per command (the best counts)")
    p.add_argument("--top", type=int, default=12, help="imports listed per start-up")
    args = p.parse_args(argv)

    print(f"`python ... --help`, best of {args.repeat} (target < {HELP_TARGET_S:g} s)")
    for name, command in COMMANDS.items():
        seconds, code = best_help_seconds(command, args.repeat)
        met = code == 0 and seconds < HELP_TARGET_S
        print(f"  {name:<36}{seconds:8.2f} s   exit {code}   {'ok' if met else 'OVER'}",
              flush=True)
        emit(f"--help: {name}", seconds, "s", f"< {HELP_TARGET_S:g} s", met)

    for name, code in IMPORTS.items():
        total, rows = import_times(code)
        target = IMPORT_TARGET_S[name]
        print(f"\n{name} ({code!r}): {total:.2f} s of imports (target < {target:g} s); "
              f"top {args.top} packages, cumulative (a package's includes what it imports):")
        for seconds, package in rows[:args.top]:
            print(f"  {seconds:8.3f} s  {package}")
        emit(f"imports: {name}", total, "s", f"< {target:g} s", total < target)


if __name__ == "__main__":
    main()
