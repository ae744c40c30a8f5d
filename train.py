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
from omegaconf import DictConfig, OmegaConf

from normx_track.config import Config, ConfigError, validate

ConfigStore.instance().store(name="config_schema", node=Config)


def to_config(cfg: DictConfig) -> Config:
    """Hydra's typed DictConfig -> our dataclasses, with range checks that name the key."""
    try:
        return validate(OmegaConf.to_object(cfg))
    except ConfigError as err:
        sys.exit(f"config error: {err}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dict_cfg: DictConfig) -> float | None:
    cfg = to_config(dict_cfg)
    from normx_track.run import run  # heavy imports after validation: errors come fast
    hydra_config = Path(cfg.output_dir) / ".hydra" / "config.yaml"
    return run(cfg, config_files=[hydra_config])


if __name__ == "__main__":
    main()
