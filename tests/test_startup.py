"""A run that cannot start changes nothing in its folder; bad input at start-up is one
`error:` line (exit 2); a sweep with a bad job names it, runs the others and sums up
(issue 20)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, subprocess_env
from normx_track.record.store import RecordLock, RecordLockedError, RunFolderError, check_run_folder

QUICK = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=1",
                                                                     "logger=none"]

# Each case is `python train.py <argv>` as a user would run it, all in one driver process
# (Hydra's main called once per case: the imports are paid once). `readonly` folders are
# made to look read-only (the tests run as root, whom chmod does not stop).
DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, runpy, sys
    from pathlib import Path
    readonly = set()
    real_access = os.access
    def access(path, mode, *a, **kw):
        if mode & os.W_OK and str(Path(path).absolute()) in readonly:
            return False
        return real_access(path, mode, *a, **kw)
    os.access = access
    results = {{}}
    for case in json.load(open({cases!r})):
        readonly.clear()
        readonly.update(case.get("readonly", []))
        sys.argv = ["train.py", *case["argv"]]
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                runpy.run_path({root!r} + "/train.py", run_name="__main__")
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:  # a traceback would reach the user
                import traceback
                traceback.print_exc()
                code = 1
        results[case["name"]] = {{"code": code, "stderr": err.getvalue(),
                                  "stdout": out.getvalue()}}
    json.dump(results, open({out!r}, "w"))
""")


def run_cases(tmp: Path, cache_dir: Path, cases: list[dict]) -> dict[str, dict]:
    (tmp / "cases.json").write_text(json.dumps(cases))
    script = tmp / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), cases=str(tmp / "cases.json"),
                                    out=str(tmp / "results.json")))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=subprocess_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, files with a hash of their bytes."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    return to


def last_line(result: dict) -> str:
    lines = result["stderr"].strip().splitlines()
    return lines[-1] if lines else ""


# -- the BAD cases: a failed start leaves the earlier run's folder exactly as it was ----------
@pytest.fixture(scope="module")
def failed_starts(tiny_run, cache_dir, tmp_path_factory):
    """A finished run copied once per case; each case's folder before and after."""
    tmp = tmp_path_factory.mktemp("failed_starts")
    folders = {name: copy_run(tiny_run, tmp / name)
               for name in ("betas", "gpu", "locked")}
    holder = subprocess.Popen(  # another live process holds the folder (a paused run's lock)
        [sys.executable, "-c", "import sys, time; from normx_track.record.store import "
         "RecordLock; RecordLock.acquire(sys.argv[1]); print('held', flush=True); "
         "time.sleep(600)", str(folders["locked"])], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {name: tree(folder) for name, folder in folders.items()}
        cases = [
            {"name": "betas", "argv": [*QUICK, "logger=csv", "optim.betas=[0.9,1.5]",
                                       "trainer.max_steps=2"]},
            {"name": "gpu", "argv": [*QUICK, "logger=csv", "trainer.accelerator=gpu"]},
            {"name": "locked", "argv": [*QUICK, "seed=2"]},
        ]
        for case in cases:
            case["argv"].append(f"hydra.run.dir={folders[case['name']]}")
        results = run_cases(tmp, cache_dir, cases)
        after = {name: tree(folder) for name, folder in folders.items()}
    finally:
        holder.kill()
        holder.wait()
    return results, before, after, folders, holder.pid


@pytest.mark.parametrize("case", ["betas", "gpu", "locked"])
def test_a_failed_start_changes_nothing(case, failed_starts):
    results, before, after, folders, holder_pid = failed_starts
    if case == "gpu" and torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    result = results[case]
    assert result["code"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    expected = {"betas": "optim.betas must be two numbers in [0, 1)",
                "gpu": "trainer.accelerator=gpu",
                "locked": f"in use by pid {holder_pid}"}[case]
    assert last_line(result).startswith("error: ") and expected in last_line(result)
    # Nothing moved, no .hydra/rerun-*, not a line more in the earlier run's train.log.
    assert after[case] == before[case]
    if case != "locked":  # (the holder's lock is its own)
        assert not (folders[case] / "normx.lock").exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    outer = RecordLock.acquire(tmp_path)
    inner = RecordLock.acquire(tmp_path)  # the tracker, inside train.py's hold
    inner.release()
    inner.release()  # a handle released twice counts once
    assert (tmp_path / "normx.lock").exists()
    outer.release()
    assert not (tmp_path / "normx.lock").exists()
    with RecordLock.acquire(tmp_path):  # taken afresh afterwards
        assert json.loads((tmp_path / "normx.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "normx.lock").exists()


def test_a_garbled_lock_is_called_unreadable(tmp_path):
    (tmp_path / "normx.lock").write_bytes(b"\x00garbage")
    start = time.monotonic()
    with pytest.raises(RecordLockedError) as err:
        RecordLock.acquire(tmp_path)
    assert "lock file is unreadable" in str(err.value) and f"delete {tmp_path}" in str(err.value)
    assert "pid None" not in str(err.value) and time.monotonic() - start < 2


def test_the_run_folder_checks(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="the run folder is a file"):
        check_run_folder(tmp_path / "file")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "normx").write_text("x")
    with pytest.raises(RunFolderError, match=r"run/normx: a file where the run keeps its record"):
        check_run_folder(run)
    (run / "normx").unlink()
    check_run_folder(run)
    check_run_folder(tmp_path / "new" / "deeper")  # not there yet: its parent is writable
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    with pytest.raises(RunFolderError, match=rf"{tmp_path}: cannot write there"):
        check_run_folder(tmp_path / "new")
