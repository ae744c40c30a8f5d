"""Pre-train a small GPT-2 style model under Hydra configs, with the normx tracker attached.

    python train.py                                   # embedded synthetic corpus, CPU, W&B offline
    python train.py model=gpt2_micro trainer.max_steps=2000 seed=1
    python train.py -m seed=0,1 model=gpt2_nano,gpt2_micro
    python train.py hydra.run.dir=outputs/my_run ckpt_path=last   # resume

This file is the only Hydra glue: configs become the plain dataclasses of
`normx_track.training.config`, so the library (and the tracker callback) work in any Lightning script.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from normx_track.training.config import Config, validate
from normx_track.errors import InputError
from normx_track.record.store import aside_name

ConfigStore.instance().store(name="config_schema", node=Config)


_JOB_FILES_DIRS: dict[tuple, str] = {}  # decided once a job: Hydra reads the key again later


def job_files_dir(ckpt_path: str | None, now: str, run_dir: str) -> str:
    """Where Hydra writes this job's files, relative to the run folder. A resumed run, or a
    fresh one in a folder that already holds a run, writes them beside the first run's,
    never over them: .hydra/overrides.yaml keeps saying what the run was started with.
    (A plain function with a dict, not lru_cache: the joblib launcher pickles it by value.)"""
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

USAGE_ERROR = 2  # bad input: one line on stderr, no traceback


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


def job_files() -> list[Path]:
    """This job's Hydra config file (for W&B), where Hydra saved one. A fresh run in a
    folder that held another (its files went to .hydra/rerun-<time>) takes over .hydra/:
    the earlier run's files move to .hydra.replaced-<time>, as its record and checkpoints
    do, so the folder's job files always describe the run its record holds."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None:
        return []
    run_dir, subdir = Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.output_subdir)
    if subdir.parent == Path(".hydra") and subdir.name.startswith("rerun-"):
        hydra_dir = run_dir / ".hydra"
        aside = aside_name(hydra_dir, "replaced")
        aside.mkdir()
        for earlier in hydra_dir.iterdir():
            if earlier.name != subdir.name:
                earlier.rename(aside / earlier.name)
        for mine in (run_dir / subdir).iterdir():
            mine.rename(hydra_dir / mine.name)
        (run_dir / subdir).rmdir()
        subdir = Path(".hydra")
    return [run_dir / subdir / "config.yaml"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dict_cfg: DictConfig) -> float | None:
    from normx_track.record.store import RecordLock, RecordLockedError, RecordWriteError

    try:
        cfg = validate(OmegaConf.to_object(dict_cfg))
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank == 0:  # (other DDP ranks' job files go to .pl_hydra_rank_N)
            RecordLock.check_free(cfg.output_dir)  # a live run's folder: refuse, touch nothing
        from normx_track.training.run import run  # heavy imports after validation: errors come fast
        return run(cfg, job_files=job_files)
    except Exception as err:
        cause = user_facing(err, (InputError, RecordLockedError, RecordWriteError))
        if cause is None:
            raise
        fail(str(cause))


if __name__ == "__main__":
    main()
