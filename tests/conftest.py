"""Shared fixtures: tiny training runs through the real `train.py` (Hydra, Lightning, W&B
offline), sized to take seconds on 2 CPU cores.

Speed (the default suite runs under pytest-xdist, `scripts/test.sh`): one torch thread a
worker and a subprocess; session runs built once for all workers (`shared_dir`); train.py
called in the test process (`tiny_config` + `run`) or several times in one driver process
(`train_in_one_process`) wherever a fresh process is not what a test checks."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Callable

# Before torch is imported: with a worker per core, more threads only contend. Subprocesses
# inherit it, so rows computed here and in a train.py subprocess use the same kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A few hundred synthetic documents, a 512-token BPE and a 1-layer model, 8 steps: the
# `debug=tiny` preset (conf/debug/tiny.yaml). Later overrides on the command line win.
TINY = ["debug=tiny"]


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", NORMX_CACHE_DIR=str(cache_dir),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def with_run_dir(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """Without an output folder among the overrides, Hydra's goes to a temporary one, not
    the checkout."""
    key = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    if not any(o.startswith(key) for o in overrides):
        overrides += (f"{key}={tempfile.mkdtemp(prefix='normx_test_')}",)
    return overrides


def run_train(cache_dir: Path, *overrides: str, check: bool = True, cwd: Path | None = None
              ) -> subprocess.CompletedProcess:
    """`python train.py <overrides>` in a subprocess, as a user would run it."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *with_run_dir(overrides)],
                          cwd=cwd or ROOT, env=subprocess_env(cache_dir), capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


# Each run is `python train.py <argv>` as a user would type it, Hydra's main called once a
# run in one process (as a multirun's jobs are): the imports, seconds each, are paid once.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, runpy, shutil, sys, traceback
    root, runs, results_file = sys.argv[1:]
    results = {}
    for name, argv in json.load(open(runs)).items():
        if argv[0] == "--copy":  # a folder as it is between two runs, for a test to read
            if os.path.isdir(argv[1]):  # (else the run before failed: its test says so)
                shutil.copytree(argv[1], argv[2])
            continue
        sys.argv = ["train.py", *argv]
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(root + "/train.py", run_name="__main__")
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:  # a traceback would reach the user
                traceback.print_exc()
                code = 1
        results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    json.dump(results, open(results_file, "w"))
""")


def train_in_one_process(cache_dir: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """`python train.py <argv>` for each of `runs`, in order, in one driver process: for each
    name its exit code, stdout and stderr (what the shell would show). A run given as
    `["--copy", src, dst]` copies the folder src to dst at that point instead."""
    work = Path(tempfile.mkdtemp(prefix="normx_driver_"))
    (work / "runs.json").write_text(json.dumps(
        {name: argv if argv[0] == "--copy" else list(with_run_dir(tuple(argv)))
         for name, argv in runs.items()}))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), str(work / "runs.json"),
                           str(work / "results.json")], cwd=ROOT, env=subprocess_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


def tiny_config(out: Path, cache_dir: Path, *overrides: str):
    """The `debug=tiny` run's `Config`, composed by Hydra as train.py would, for `run()` in
    the test process (where a test needs to reach inside the run, or where the process is
    not what it checks: the imports are already paid)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from normx_track.training.config import Config, validate

    ConfigStore.instance().store(name="config_schema", node=Config)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"output_dir={out}",
                                           f"data.cache_dir={cache_dir}", *overrides])
    return validate(OmegaConf.to_object(cfg))


def train_here(out: Path, cache_dir: Path, *overrides: str) -> float | None:
    """The `debug=tiny` run with `overrides` (Hydra's syntax), trained in the test process:
    for a test that reads the run's record, not the process or Hydra's job files."""
    from normx_track.training.run import run

    return run(tiny_config(out, cache_dir, *overrides))


def shared_dir(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once a session for all xdist workers: the first worker to ask builds
    it under a lock, the others wait and read it (so a run is not trained once a worker)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above the workers' own
    out, built = root / "shared" / name, root / "shared" / f"{name}.built"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not built.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker's failed build
            build(out)
            built.touch()
    return out


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook
def pytest_collection_modifyitems(config, items):
    # Multi-process (DDP, FSDP) tests one at a time: two at once on 2 cores would start
    # four ranks, and gloo's rendezvous can time out.
    for item in items:
        if re.search(r"ddp|fsdp", item.name):
            item.add_marker(pytest.mark.xdist_group("distributed"))
        elif uses_a_module_fixture(item) and not item.get_closest_marker("xdist_group"):
            # A module fixture (a driver process, a trained model) is built once: its users
            # share a worker, else each worker would build it again.
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    if getattr(config.option, "loadgroup", False):  # (set on xdist workers only)
        for item in items:
            mark_group_in_node_id(item)


def uses_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs[-1].scope == "module"
                                    for defs in info.name2fixturedefs.values() if defs)


def mark_group_in_node_id(item) -> None:
    """`--dist loadgroup` schedules by a `@group` suffix on the node id, which pytest-xdist
    3.8 sets through `item._nodeid`: pytest 9 reads `item._id`, so without this the groups
    are ignored and a group's module fixture (a driver process) runs once a worker."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    suffix = "@" + "_".join(names)
    if not names or item.nodeid.endswith(suffix):
        return
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId
        item._id = NodeId.parse(item.nodeid + suffix)
    else:
        item._nodeid = item.nodeid + suffix


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("normx_cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """One tiny W&B-offline run with the tracker, shared by the tests that only read it."""
    return shared_dir(tmp_path_factory, "tiny_run", lambda out: run_train(
        cache_dir, *TINY, f"hydra.run.dir={out}"))


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, cache_dir) -> Path:
    """A 2 x 2 multirun: tied/untied embeddings x seeds 0, 1."""
    return shared_dir(tmp_path_factory, "tiny_sweep", lambda out: run_train(
        cache_dir, "-m", *TINY, "seed=0,1", "model.tie_word_embeddings=true,false",
        "logger=none", f"hydra.sweep.dir={out}"))


def load_example(name: str):
    """examples/<name>.py as a module (the examples are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
