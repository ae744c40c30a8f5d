"""Faults of long runs: kill -9 mid-training; W&B unreachable at start, its server gone
mid-run, its service dying mid-run. Nothing already written is lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY, subprocess_env, train_here
from normx_track.record.store import list_snapshots, read_metrics
from fake_wandb_server import FakeWandbServer
from wandb_log import history

STEPS = 60  # long enough to stop a run at step 30 and see it go on
LONG = [*TINY, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_n_steps=10",
        "logger=none"]


# LONG's snapshots: every 4 steps (log-spaced before) and at every checkpoint (every 10).
LONG_SNAPSHOTS = sorted({0, 1, 2} | set(range(4, STEPS + 1, 4)) | set(range(10, STEPS + 1, 10)))


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int = 30) -> bool:
    """Wait until the run has written its checkpoint at `step`; False if it exited first."""
    target = run_dir / "checkpoints" / f"step_{step:08d}.ckpt"
    deadline = time.time() + 300
    while not target.exists():
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def rows_close(a: list[dict], b: list[dict], ignore: tuple[str, ...] = ()) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ra.keys() - set(ignore):
            np.testing.assert_allclose(ra[key], rb[key], rtol=1e-6, atol=1e-9, err_msg=key)


# Lightning validates at a step after that step's checkpoint: a kill in between loses that
# validation loss (the resume does not validate at its checkpoint's step again).
VAL_LOSS = ("val/loss", "val/loss_step")


@pytest.mark.timeout(400)
def test_kill_9_then_resume_continues_the_record(cache_dir: Path, tmp_path: Path):
    """Killed after its step-20 checkpoint of 40 (a process, as a user's is); the clean run
    and the resume run in this process: the kill is what is tested."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    kill = ["trainer.max_steps=40", "trainer.checkpoint_every_n_steps=10", "logger=none"]
    train_here(clean, cache_dir, *kill)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, *kill,
                             f"hydra.run.dir={killed}"], cwd=ROOT, env=subprocess_env(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(proc, killed, step=20)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_metrics(killed)
    assert before and before[-1]["step"] < 40, "the run finished before it could be killed"
    last = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)  # intact
    train_here(killed, cache_dir, *kill, "ckpt_path=last")
    after = read_metrics(killed)
    kept = [r for r in before if r["step"] <= last["global_step"]]
    rows_close(after[: len(kept)], kept)  # nothing recorded up to the checkpoint was lost
    rows_close(after, read_metrics(clean), ignore=VAL_LOSS)  # no gaps, no duplicates
    assert sorted(list_snapshots(killed)) == [r["step"] for r in after]


@pytest.mark.timeout(300)
def test_unreachable_wandb_falls_back_to_csv_and_keeps_the_record(cache_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    env_overrides = dict(WANDB_MODE="online", WANDB_API_KEY="a" * 40,
                         WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="5")
    env = {**subprocess_env(cache_dir), **env_overrides}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "logger=wandb",
                           f"hydra.run.dir={out}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B could not start" in proc.stderr + proc.stdout
    assert list((out / "csv").rglob("metrics.csv")), "no CSV fallback log"
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 4, 8]


def wandb_service_of(pid: int) -> int | None:
    """The pid of the wandb-core process serving the Python process `pid`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"wandb-core") and str(pid).encode() in args:
            return int(cmdline.parent.name)
    return None


@pytest.mark.timeout(400)
def test_wandb_dying_mid_run_loses_nothing(cache_dir: Path, tmp_path: Path):
    """The W&B service is killed after step 30: training and the record go on, the local
    W&B run file keeps every row logged before (for `wandb sync`), CSV takes the rest."""
    out = tmp_path / "run"
    args = [o for o in LONG if o != "logger=none"] + ["logger=wandb", f"hydra.run.dir={out}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env=subprocess_env(cache_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for_checkpoint(proc, out), proc.stderr.read()[-3000:]
    service = wandb_service_of(proc.pid)
    assert service is not None, "no wandb-core process found"
    os.kill(service, signal.SIGKILL)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, stderr[-3000:]
    logged = (out / "train.log").read_text()  # Hydra's job log
    assert "W&B failed mid-run" in logged and "wandb sync" in logged
    assert [r["step"] for r in read_metrics(out)] == LONG_SNAPSHOTS

    kept = history(next((out / "wandb").glob("offline-run-*/run-*.wandb")))
    synced = sorted({r["trainer/global_step"] for r in kept if "train/loss" in r})
    csv = pd.read_csv(next((out / "csv").rglob("metrics.csv")))
    fallback = sorted(set(csv["step"][csv["train/loss"].notna()]))
    assert synced == list(range(len(synced))) and len(synced) >= 20  # a gap-free prefix
    assert fallback == list(range(fallback[0], STEPS))  # and a gap-free rest
    # Rows in flight when the service died went to the CSV too: none is in neither.
    assert fallback[0] <= len(synced) <= 30


@pytest.mark.slow  # 35 s: a W&B stand-in server stopped mid-run
@pytest.mark.timeout(400)
def test_wandb_server_gone_mid_run_neither_hangs_nor_loses_rows(cache_dir: Path, tmp_path: Path):
    """An online run whose server disappears after step 30: training goes on, the job ends
    once `logger.finish_timeout_s` is spent (not when the uploads give up: hours), and the
    local W&B run holds every row for `wandb sync`."""
    out, server = tmp_path / "run", FakeWandbServer()
    env = {**subprocess_env(cache_dir), "WANDB_MODE": "online", "WANDB_API_KEY": "a" * 40,
           "WANDB_BASE_URL": server.url}
    args = [o for o in LONG if o != "logger=none"] + [
        "logger=wandb", "logger.finish_timeout_s=5", f"hydra.run.dir={out}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_checkpoint(proc, out), proc.stderr.read()[-3000:]
    finally:
        server.stop()
    stopped = time.time()
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, stderr[-3000:]
    assert time.time() - stopped < 120, "the job waited on W&B uploads"
    assert "wandb sync" in (out / "train.log").read_text()
    assert [r["step"] for r in read_metrics(out)] == LONG_SNAPSHOTS
    kept = history(next((out / "wandb").glob("run-*/run-*.wandb")))
    assert sorted({r["trainer/global_step"] for r in kept if "train/loss" in r}) == list(range(STEPS))
    tracked = sorted({r["trainer/global_step"] for r in kept if "normx/spearman/information_gain" in r})
    assert tracked == LONG_SNAPSHOTS
