"""The launch guards of `train.py` (a top-level module beside it, outside the library: the
library never imports Hydra). A run that cannot start changes nothing in its folder:

- `StartGuard`, a Hydra callback (conf/config.yaml: hydra.callbacks), refuses an unusable
  run folder and takes its record lock before Hydra writes there; for a sweep it refuses
  an unusable sweep folder and ends with one line counting finished, failed and skipped
  jobs (`sweep_summary`; the jobs report through `report_job`).
- `run_job(train)` runs one job: its log lines are held back (`JobStart`, `HeldRecords`)
  and its Hydra job files removed if it stops before the run starts; bad input ends in
  one `error:` line with exit status 2, a failed sweep job is named and the sweep goes on.
- `job_files_dir`, the `normx_job_files` resolver of conf/config.yaml: a resumed run's
  Hydra files go beside the first run's, never over them.
- `save_emergence`: after training, the emergence summary to W&B.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normx_track.errors import InputError
from normx_track.record.store import (RecordLock, RecordLockedError, AtomicWriteError,
                                      aside_name, check_run_folder)
from normx_track.training.config import Config

try:  # a SLURM job (submitit) unpickles this code by value, as it did when it was train.py's:
    import cloudpickle  # it need not find the checkout on its path

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
except (ImportError, AttributeError):  # (cloudpickle < 2)
    pass

ConfigStore.instance().store(name="config_schema", node=Config)
log = logging.getLogger(__name__)
USAGE_ERROR = 2  # bad input: one line on stderr, no traceback
USER_FACING = (InputError, RecordLockedError, AtomicWriteError)
SWEEP_STATUS = "NORMX_SWEEP_STATUS"  # where a sweep's jobs report how they ended

# Decided once a job (Hydra reads the key again later); StartGuard forgets the decisions
# as a run or sweep starts, so one process's next run in the same folder decides afresh.
_JOB_FILES_DIRS: dict[tuple, str] = {}
_START_LOCKS: list[RecordLock] = []  # the run folder's lock, taken by StartGuard


def job_files_dir(ckpt_path: str | None, now: str, run_dir: str) -> str:
    """Where Hydra writes this job's files, relative to the run folder. A resumed run, or a
    fresh one in a folder that already holds a run, writes them beside the first run's,
    never over them: .hydra/overrides.yaml keeps saying what the run was started with.
    (A plain function with a dict, not lru_cache: a launcher may pickle it by value.)"""
    key = (ckpt_path, now, run_dir)
    if key not in _JOB_FILES_DIRS:
        if ckpt_path not in (None, "None", "null"):
            _JOB_FILES_DIRS[key] = f".hydra/resume-{now}"
        elif (Path(run_dir) / ".hydra" / "config.yaml").exists():
            _JOB_FILES_DIRS[key] = f".hydra/rerun-{now}"
        else:
            _JOB_FILES_DIRS[key] = ".hydra"
    return _JOB_FILES_DIRS[key]


OmegaConf.register_new_resolver("normx_job_files", job_files_dir, replace=True)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def user_facing(err: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first error of `kinds` in `err`'s chain: a full disk that stops a snapshot can
    make a logger fail too while Lightning shuts down, and that later error must not bury
    the one that names the file."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def release_start_lock() -> None:
    """Let go of the run folder (at the run's end, or as it stops: also in-process callers
    such as a test driver must not find the lock left behind)."""
    while _START_LOCKS:
        _START_LOCKS.pop().release()


def process_rank() -> int:
    """This process's global rank, from the environment as Lightning reads it (0 outside
    DDP): only rank zero guards the folder; the other ranks' processes re-run this script."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


# -- this job's start in its folder ------------------------------------------------------
class HeldRecords(logging.Handler):
    """Keeps the log records meant for the run folder's log file until the run starts."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class JobStart:
    """Hydra has written this job's files (.hydra/...) and opened its log file in the run
    folder before `main` runs. Until the run is sure to start, the log lines wait in memory;
    a run that never starts drops them and removes the job files it had: an earlier run's
    train.log and .hydra/ stay exactly as they were."""

    _HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

    def __init__(self) -> None:
        hydra_cfg = HydraConfig.get()
        self.run_dir = Path(hydra_cfg.runtime.output_dir)
        self.subdir = None if hydra_cfg.output_subdir is None else Path(hydra_cfg.output_subdir)
        self.started = process_rank() != 0  # other ranks leave their folder as Hydra made it
        root = logging.getLogger()
        self.files = [] if self.started else [
            h for h in root.handlers if isinstance(h, logging.FileHandler)]
        self.held = HeldRecords()
        if self.files:
            self.held.setLevel(min(h.level for h in self.files))
            for handler in self.files:
                root.removeHandler(handler)
            root.addHandler(self.held)

    def start(self) -> list[Path]:
        """The run's `on_start`: the folder is this run's now. Writes the held log lines,
        takes over .hydra/ for a fresh run in a used folder, and returns this job's Hydra
        config file (for W&B)."""
        self.started = True
        root = logging.getLogger()
        root.removeHandler(self.held)
        for handler in self.files:
            root.addHandler(handler)
            for record in self.held.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.held.records.clear()
        return self._claim_job_files()

    def _claim_job_files(self) -> list[Path]:
        """A fresh run in a folder that held another (its files went to .hydra/rerun-<time>)
        takes over .hydra/: the earlier run's files move to .hydra.replaced-<time>, as its
        record and checkpoints do, so the folder's job files describe the run its record
        holds."""
        if self.subdir is None:
            return []
        subdir = self.subdir
        if subdir.parent == Path(".hydra") and subdir.name.startswith("rerun-"):
            hydra_dir = self.run_dir / ".hydra"
            aside = aside_name(hydra_dir, "replaced")
            aside.mkdir()
            for earlier in hydra_dir.iterdir():
                if earlier.name != subdir.name:
                    earlier.rename(aside / earlier.name)
            for mine in (self.run_dir / subdir).iterdir():
                mine.rename(hydra_dir / mine.name)
            (self.run_dir / subdir).rmdir()
            subdir = Path(".hydra")
        return [self.run_dir / subdir / "config.yaml"]

    def abandon(self) -> None:
        """The run stopped before it started: forget its log lines and job files."""
        if self.started:
            return
        self.started = True
        root = logging.getLogger()
        root.removeHandler(self.held)
        for handler in self.files:
            handler.close()
        if self.subdir is not None:
            folder = self.run_dir / self.subdir
            for name in self._HYDRA_FILES:
                (folder / name).unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


# -- sweeps --------------------------------------------------------------------------------
def report_job(status: str, message: str = "", input_error: bool = False) -> None:
    """One line for the sweep's summary (a sweep's jobs may run in other processes)."""
    path = os.environ.get(SWEEP_STATUS)
    if not path or process_rank() != 0:  # a DDP job's other ranks inherit the variable
        return
    job = HydraConfig.get().job
    line = json.dumps({"num": job.num, "status": status, "message": message,
                       "input_error": input_error})
    with open(path, "a", encoding="utf-8") as handle:  # one short append: atomic
        handle.write(line + "\n")


def job_failed(err: BaseException) -> None:
    """A sweep job that failed: say which job and why, and let the sweep go on."""
    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task)
    cause = user_facing(err, USER_FACING)
    if cause is None:  # a bug, not bad input: the traceback helps
        traceback.print_exception(err)
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
    else:
        message = str(cause)
    print(f"error: job {hydra_cfg.job.num} ({overrides}): {message}", file=sys.stderr)
    report_job("failed", message, input_error=cause is not None)


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper launches (None for other sweepers)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return None
        # The sweeper's own params (e.g. an experiment's) first; the command line's win.
        task = list(config.hydra.overrides.task)
        given = {o.split("=", 1)[0].lstrip("+~") for o in task}
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()
                  if k not in given]
        parsed = OverridesParser.create().parse_overrides(params + task)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - the count is for the summary only
        return None


def sweep_summary(status_file: Path, planned: int | None) -> tuple[str, int]:
    """The sweep's closing line and exit status (0 all finished, 2 bad input, 1 else)."""
    rows = []
    if status_file.exists():
        rows = [json.loads(line) for line in status_file.read_text().splitlines() if line]
    failed = sorted((r for r in rows if r["status"] == "failed"), key=lambda r: r["num"])
    finished = sum(r["status"] == "finished" for r in rows)
    skipped = max(0, planned - len(rows)) if planned is not None else 0
    total = max(planned, len(rows)) if planned is not None else len(rows)
    text = f"sweep: {total} jobs: {finished} finished, {len(failed)} failed"
    if failed:
        text += " (" + ", ".join(f"job {r['num']}" for r in failed) + ")"
    text += f", {skipped} skipped"
    if not failed and not skipped:
        return text, 0
    return text, USAGE_ERROR if all(r["input_error"] for r in failed) and not skipped else 1


class StartGuard(Callback):
    """Hydra callback (conf/config.yaml: hydra.callbacks). A single run: before Hydra writes
    anything into the run folder, refuse a folder that is a file or read-only, and take the
    record lock, held until the process exits. A sweep: refuse an unusable sweep folder,
    and end with one line saying how many jobs finished, failed and were skipped."""

    def __init__(self) -> None:
        self._status: Path | None = None
        self._planned: int | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _JOB_FILES_DIRS.clear()
        if process_rank() != 0:
            return
        run_dir = Path(str(config.hydra.run.dir))
        try:
            check_run_folder(run_dir)
            lock = RecordLock.acquire(run_dir)
        except (InputError, RecordLockedError) as err:
            fail(str(err))
        _START_LOCKS.append(lock)
        atexit.register(lock.release)  # whatever way the process ends (idempotent)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_start_lock()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _JOB_FILES_DIRS.clear()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            check_run_folder(sweep_dir, parts={})
        except InputError as err:
            fail(str(err).replace("hydra.run.dir", "hydra.sweep.dir"))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._status = sweep_dir / f".normx_sweep-{os.getpid()}.jsonl"
        self._status.unlink(missing_ok=True)
        os.environ[SWEEP_STATUS] = str(self._status)  # the jobs (and launcher workers) see it
        self._planned = planned_jobs(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._status is None:
            return
        text, code = sweep_summary(self._status, self._planned)
        self._status.unlink(missing_ok=True)
        os.environ.pop(SWEEP_STATUS, None)
        print(text, file=sys.stderr)
        if code:
            sys.exit(code)


# -- after training ------------------------------------------------------------------------
def save_emergence(loggers: list, out: Path) -> None:
    """Once, after training: the per-token emergence table and figures (analysis.emergence)
    go to <out>/figures and, as files, to the W&B run. Never mid-run, and never fatal: the
    record is complete whatever happens here."""
    from normx_track.training.loggers import ResilientWandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, ResilientWandbLogger)
                     and not lg.failed]
    if not wandb_loggers or not (out / "normx" / "metrics.jsonl").exists():
        return
    try:
        try:  # the installed copy of analysis/ (any working directory: a SLURM job's too)
            from normx_track_analysis import emergence
            from normx_track_analysis.load import load_run
        except ImportError:  # an install from before it was packaged: the checkout's
            from analysis import emergence
            from analysis.load import load_run

        tables, figures = emergence.build(load_run(out))
        emergence.write(tables, figures, out / "figures", formats=("png",))
        for logger in wandb_loggers:  # one glob: the tables and figures just written
            logger.experiment.save(str(out / "figures" / "emergence*"), base_path=str(out),
                                   policy="now")
    except Exception as err:  # noqa: BLE001 - an extra at the end must not fail the run
        log.warning("emergence summary not saved to W&B (%s: %s); run "
                    "`python -m analysis.emergence %s`", type(err).__name__, err, out)


def run_job(train: Callable[[Callable[[], list[Path]]], float | None]) -> float | None:
    """This Hydra job: `train(on_start)` (train.py validates the config and calls
    `normx_track.training.run.run`, whose `on_start` says the folder is the run's). A job
    that stops before that drops its held log lines and Hydra files and lets go of the
    folder; bad input is one `error:` line (exit 2); in a sweep the failure is reported
    and the sweep goes on."""
    job = JobStart()
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = train(job.start)
    except Exception as err:
        job.abandon()
        release_start_lock()
        if in_sweep:  # the sweep's other jobs go on; its summary counts this one
            job_failed(err)
            return None
        cause = user_facing(err, USER_FACING)
        if cause is None:
            raise
        fail(str(cause))
    except BaseException:
        job.abandon()
        release_start_lock()
        raise
    if in_sweep:
        report_job("finished")
    return result
