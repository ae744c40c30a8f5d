"""The foundation end to end: train.py under Hydra, W&B offline, checkpoints, resume,
multirun, and config errors that name the key."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from conftest import TINY, run_train


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
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    run_train(cache_dir, *overrides, "trainer.max_steps=12", "logger=csv",
              f"ckpt_path={ckpt}", f"hydra.run.dir={out}")
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*.ckpt"))
    assert steps == ["step_00000008.ckpt", "step_00000012.ckpt"]  # none redone before step 4
    with open(next((out / "csv").rglob("metrics.csv"))) as f:
        logged = {int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert min(logged) >= 4, f"resumed run logged steps from {min(logged)}"


def test_multirun_two_jobs(cache_dir: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    run_train(cache_dir, "-m", *TINY, "trainer.max_steps=2", "tracker=off", "logger=csv",
              "seed=0,1", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").exists()
        assert f"seed={job.name}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert f"seed: {job.name}" in (job / ".hydra" / "config.yaml").read_text()


def test_each_job_of_a_local_sweep_gets_its_own_wandb_run(cache_dir: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    run_train(cache_dir, "-m", *TINY, "trainer.max_steps=2", "tracker=off", "logger=wandb",
              "seed=0,1", f"hydra.sweep.dir={sweep}")
    for job in ("0", "1"):
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job} has W&B runs {runs}"
        config = (runs[0] / "files" / ".hydra" / "config.yaml").read_text()
        assert f"seed: {job}" in config


def test_typo_in_key_names_the_key(cache_dir: Path):
    proc = run_train(cache_dir, "trainer.max_stepz=5", check=False)
    assert proc.returncode != 0
    assert "max_stepz" in proc.stderr


def test_unknown_group_option_lists_the_choices(cache_dir: Path):
    proc = run_train(cache_dir, "model=gpt2_huge", check=False)
    assert proc.returncode != 0
    assert "model/gpt2_huge" in proc.stderr and "gpt2_nano" in proc.stderr


def test_negative_step_count_names_the_key(cache_dir: Path):
    proc = run_train(cache_dir, "trainer.max_steps=-5", check=False)
    assert proc.returncode != 0
    assert "trainer.max_steps must be > 0, got -5" in proc.stderr


def test_wrong_type_names_the_key(cache_dir: Path):
    proc = run_train(cache_dir, "data.batch_size=lots", check=False)
    assert proc.returncode != 0
    assert "batch_size" in proc.stderr
