"""Every command answers `--help` and a bad option before importing torch, transformers,
Lightning, matplotlib or pandas (issue 30 §6): each runs in a subprocess under
`python -X importtime`, whose stderr names every module imported. The modules are checked,
not the seconds (a loaded CI machine says little about seconds: benchmarks/bench_startup.py
times them and writes the budget down)."""
from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

HEAVY = ("torch", "transformers", "lightning", "pytorch_lightning", "matplotlib", "pandas")

# name: (argv after `python`, the positionals a run needs: a bad option comes after them)
COMMANDS = {
    "analysis.curves": (["-m", "analysis.curves"], ["run"]),
    "analysis.report": (["-m", "analysis.report"], ["run"]),
    "analysis.sweep": (["-m", "analysis.sweep"], ["multirun"]),
    "analysis.replay": (["-m", "analysis.replay"], ["suite", "--out", "out"]),
    "analysis.emergence": (["-m", "analysis.emergence"], ["run"]),
    "analysis.wandb_layout": (["-m", "analysis.wandb_layout"], ["--entity", "me"]),
    "normx_track.gold": (["-m", "normx_track.gold"], ["gpt2", "corpus.txt", "--out", "g.npz"]),
    "normx_track.export": (["-m", "normx_track.export"], ["run.ckpt", "out"]),
    "examples/plain_loop.py": (["examples/plain_loop.py"], ["out"]),
    "examples/hf_trainer.py": (["examples/hf_trainer.py"], ["out"]),
    "normx_track.attribution.explain": (["-m", "normx_track.attribution.explain"],
                                        ["model", "some text"]),
    "train.py": (["train.py"], []),
}
# Not yet parsed first (other modules' owners' work): checked all the same, an expected
# failure while they import a heavy module, asserted once they do not.
NOT_YET: dict[str, str] = {}
BAD = "--no-such-option"


def heavy_imports(importtime: str) -> list[str]:
    """The heavy modules `-X importtime` reports (`import time: self | cumulative | name`)."""
    found = set()
    for line in importtime.splitlines():
        match = re.match(r"import time:\s*\d+ \|\s*\d+ \|\s*(\S+)", line)
        if match and match[1].split(".")[0] in HEAVY:
            found.add(match[1].split(".")[0])
    return sorted(found)


def run(argv: list[str], tmp: Path) -> dict:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=tmp,
                          capture_output=True, text=True, timeout=300,
                          env={**subprocess_env(tmp / "cache"), "PYTHONPATH": str(ROOT)})
    err = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    return {"code": proc.returncode, "stdout": proc.stdout, "stderr": err,
            "heavy": heavy_imports(proc.stderr)}


def absolute(argv: list[str]) -> list[str]:
    return [str(ROOT / a) if a.endswith(".py") else a for a in argv]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Each command's `--help` and a bad option, run at once, in a scratch folder (nothing a
    command might write lands in the checkout). A command not yet parsing first gets its bad
    option only once its --help is light (its start-up is seconds)."""
    tmp = tmp_path_factory.mktemp("cli_startup")

    def run_all(cases: dict) -> dict:
        with ThreadPoolExecutor(4) as pool:
            return dict(zip(cases, pool.map(lambda argv: run(argv, tmp), cases.values())))

    def bad(name: str) -> list[str]:
        argv, positionals = COMMANDS[name]
        return [*absolute(argv), *positionals, BAD]

    done = run_all({**{(n, "help"): [*absolute(a), "--help"] for n, (a, _) in COMMANDS.items()},
                    **{(n, "bad option"): bad(n) for n in COMMANDS if n not in NOT_YET}})
    done.update(run_all({(n, "bad option"): bad(n) for n in NOT_YET
                         if not done[n, "help"]["heavy"]}))
    return done


def expect_light(name: str, result: dict) -> None:
    if result["heavy"] and name in NOT_YET:
        pytest.xfail(f"{name}: {NOT_YET[name]} ({', '.join(result['heavy'])})")
    assert not result["heavy"], f"{name} imported {result['heavy']} before parsing"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_answers_without_importing_the_heavy_modules(name, results):
    result = results[name, "help"]
    assert result["code"] == 0, result["stderr"][-20:]
    assert result["stdout"].strip(), result["stderr"][-20:]  # the help (Hydra's: no "usage:")
    assert not any("Traceback" in line for line in result["stderr"]), result["stderr"][-20:]
    expect_light(name, result)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_option_is_one_error_line_and_status_2_without_the_heavy_modules(name, results):
    if (name, "bad option") not in results:
        pytest.xfail(f"{name}: {NOT_YET[name]} (its --help imports "
                     f"{', '.join(results[name, 'help']['heavy'])})")
    result = results[name, "bad option"]
    errors = [line for line in result["stderr"] if "error:" in line]
    assert result["code"] == 2, result["stderr"][-20:]
    # One error line (argparse's usage lines may come before it), naming the option.
    assert len(errors) == 1 and BAD in errors[0], result["stderr"]
    assert result["stderr"][-1] == errors[0], result["stderr"]
    assert not any("Traceback" in line for line in result["stderr"])
    expect_light(name, result)


def test_the_emergence_parser_states_the_library_defaults():
    """analysis.emergence's parser writes down normx_track.gold.emergence's defaults (so
    --help need not import scipy): they must agree."""
    from analysis import emergence
    from normx_track.gold import emergence as E

    args = emergence.parser().parse_args(["run"])
    assert (args.band, args.n_perm) == (E.DEFAULT_BAND, E.DEFAULT_N_PERM)
