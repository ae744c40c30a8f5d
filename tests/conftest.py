"""Shared fixtures: tiny training runs through the real `train.py` (Hydra, Lightning, W&B
offline), sized to take seconds on 2 CPU cores."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A few hundred synthetic documents, a 512-token BPE and a 1-layer model, 8 steps: the
# `debug=tiny` preset (conf/debug/tiny.yaml). Later overrides on the command line win.
TINY = ["debug=tiny"]


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", NORMX_CACHE_DIR=str(cache_dir),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_train(cache_dir: Path, *overrides: str, check: bool = True, cwd: Path | None = None
              ) -> subprocess.CompletedProcess:
    """`python train.py <overrides>` in a subprocess, as a user would run it. Without an
    output folder among the overrides, Hydra's goes to a temporary one, not the checkout."""
    key = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    if not any(o.startswith(key) for o in overrides):
        overrides += (f"{key}={tempfile.mkdtemp(prefix='normx_test_')}",)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides],
                          cwd=cwd or ROOT, env=subprocess_env(cache_dir), capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def tiny_config(out: Path, cache_dir: Path, *overrides: str):
    """The `debug=tiny` run's `Config`, composed by Hydra as train.py would, for `run()` in
    the test process (where a test needs to reach inside the run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from normx_track.training.config import Config, validate

    ConfigStore.instance().store(name="config_schema", node=Config)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"output_dir={out}",
                                           f"data.cache_dir={cache_dir}", *overrides])
    return validate(OmegaConf.to_object(cfg))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("normx_cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """One tiny W&B-offline run with the tracker, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_train(cache_dir, *TINY, f"hydra.run.dir={out}")
    return out


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, cache_dir) -> Path:
    """A 2 x 2 multirun: tied/untied embeddings x seeds 0, 1."""
    out = tmp_path_factory.mktemp("sweeps") / "tied_untied"
    run_train(cache_dir, "-m", *TINY, "seed=0,1", "model.tie_word_embeddings=true,false",
              "logger=none", f"hydra.sweep.dir={out}")
    return out
