"""Pre-train a small GPT-2 style model under Hydra configs, with the normx tracker attached.

    python train.py                                   # embedded synthetic corpus, CPU, W&B offline
    python train.py model=gpt2_micro trainer.max_steps=2000 seed=1
    python train.py -m seed=0,1 model=gpt2_nano,gpt2_micro
    python train.py hydra.run.dir=outputs/my_run ckpt_path=last   # resume

This file is the only Hydra entry point: the config becomes the plain dataclasses of
`normx_track.training.config` (so the library, and the tracker callback, work in any
Lightning script) and `normx_track.training.run.run` trains: data -> model -> callbacks ->
Trainer -> fit. The launch guards (a run that cannot start changes nothing in its folder;
bad input is one `error:` line; a sweep sums up its jobs) are in normx_launch.py beside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # normx_launch.py (the Hydra callback's module) sits beside this file
    sys.path.insert(0, HERE)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from normx_launch import run_job, save_emergence  # noqa: E402 (also registers the schema)
from normx_track.training.config import validate  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dict_cfg: DictConfig) -> float | None:
    def train(on_start):
        cfg = validate(OmegaConf.to_object(dict_cfg))
        from normx_track.training.run import run  # heavy imports after validation: errors come fast

        return run(cfg, on_start=on_start, after_fit=save_emergence)

    return run_job(train)


if __name__ == "__main__":
    main()
