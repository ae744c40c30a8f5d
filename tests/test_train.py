"""The foundation end to end: train.py under Hydra, W&B offline, checkpoints, resume,
multirun, and config errors that name the key."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import TINY, train_here, train_in_one_process


def test_tiny_run_writes_wandb_offline_run_and_checkpoints(tiny_run: Path):
    runs = list((tiny_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected one W&B offline run directory"
    assert list(runs[0].glob("*.wandb")), "the offline run holds no .wandb data file"
    assert (runs[0] / "files" / ".hydra" / "config.yaml").exists(), "Hydra config not saved to W&B"
    ckpts = sorted(p.name for p in (tiny_run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_00000004.ckpt", "step_00000008.ckpt"]
    state = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8
    assert (tiny_run / ".hydra" / "config.yaml").exists()


def test_resume_continues_the_step_count(tiny_run: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "resumed"
    ckpt = tiny_run / "checkpoints" / "step_00000004.ckpt"
    train_here(out, cache_dir, "trainer.max_steps=12", "logger=csv", f"ckpt_path={ckpt}")
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*.ckpt"))
    assert steps == ["step_00000008.ckpt", "step_00000012.ckpt"]  # none redone before step 4
    with open(next((out / "csv").rglob("metrics.csv"))) as f:
        logged = {int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert min(logged) >= 4, f"resumed run logged steps from {min(logged)}"


# The train.py runs whose process is not the point (a sweep, the config errors): one driver
# process runs them all, for the tests below to read (on one xdist worker: conftest.py).


@pytest.fixture(scope="module")
def driven(cache_dir: Path, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    sweep = tmp_path_factory.mktemp("multirun") / "sweep"
    runs = {"typo": ["trainer.max_stepz=5"], "group option": ["model=gpt2_huge"],
            "negative steps": ["trainer.max_steps=-5"], "wrong type": ["data.batch_size=lots"],
            "sweep": ["-m", *TINY, "trainer.max_steps=2", "tracker=off", "logger=wandb",
                      "seed=0,1", f"hydra.sweep.dir={sweep}"]}
    return sweep, train_in_one_process(cache_dir, runs)


def test_multirun_jobs_get_their_own_folders_configs_and_wandb_runs(driven):
    """Two jobs of a local (basic launcher: one process) sweep: each its folder, checkpoint,
    Hydra job files and W&B run."""
    sweep, results = driven
    assert results["sweep"]["code"] == 0, results["sweep"]["stderr"][-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").exists()
        assert f"seed={job.name}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert f"seed: {job.name}" in (job / ".hydra" / "config.yaml").read_text()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job.name} has W&B runs {runs}"
        config = (runs[0] / "files" / ".hydra" / "config.yaml").read_text()
        assert f"seed: {job.name}" in config


@pytest.fixture
def config_errors(driven) -> dict[str, dict]:
    return driven[1]


def test_typo_in_key_names_the_key(config_errors):
    proc = config_errors["typo"]
    assert proc["code"] != 0
    assert "max_stepz" in proc["stderr"]


def test_unknown_group_option_lists_the_choices(config_errors):
    proc = config_errors["group option"]
    assert proc["code"] != 0
    assert "model/gpt2_huge" in proc["stderr"] and "gpt2_nano" in proc["stderr"]


def test_negative_step_count_names_the_key(config_errors):
    proc = config_errors["negative steps"]
    assert proc["code"] != 0
    assert "trainer.max_steps must be > 0, got -5" in proc["stderr"]


def test_wrong_type_names_the_key(config_errors):
    proc = config_errors["wrong type"]
    assert proc["code"] != 0
    assert "batch_size" in proc["stderr"]
