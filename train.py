"""Pre-train a small GPT-2 style model under Hydra configs, with the normx tracker attached.

    python train.py                                   # embedded synthetic corpus, CPU, W&B offline
    python train.py model=gpt2_micro trainer.max_steps=2000 seed=1
    python train.py -m seed=0,1 model=gpt2_nano,gpt2_micro
    python train.py hydra.run.dir=outputs/my_run ckpt_path=last   # resume

This file is the only Hydra glue: configs become the plain dataclasses of
`normx_track.config`, so the library (and the tracker callback) work in any Lightning script.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from normx_track.config import Config, validate
from normx_track.errors import InputError

ConfigStore.instance().store(name="config_schema", node=Config)
# A resumed run writes its Hydra job files beside the first run's, never over them, so
# .hydra/overrides.yaml keeps saying what the run was started with.
OmegaConf.register_new_resolver(
    "normx_job_files", lambda ckpt_path, now: ".hydra" if ckpt_path in (None, "None", "null")
    else f".hydra/resume-{now}", replace=True)

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
    """This job's Hydra config file (for W&B), where Hydra saved one."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None:
        return []
    return [Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dict_cfg: DictConfig) -> float | None:
    from normx_track.records import RecordLockedError, RecordWriteError

    try:
        cfg = validate(OmegaConf.to_object(dict_cfg))
        from normx_track.run import run  # heavy imports after validation: errors come fast
        return run(cfg, config_files=job_files())
    except Exception as err:
        cause = user_facing(err, (InputError, RecordLockedError, RecordWriteError))
        if cause is None:
            raise
        fail(str(cause))


if __name__ == "__main__":
    main()
