"""What both examples share: this project's configs (composed with Hydra, as train.py does),
the synthetic corpus they name, and the tiny GPT-2 they size, so that a plain loop, an HF
Trainer run and `train.py` start from the same weights and data. Your own script would
build these its own way; the tracker needs only the model, a step count and gold."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from normx_track.training.config import Config, validate
from normx_track.training.data.datamodule import TextDataModule
from normx_track.training.model import build_hf_config
from normx_track.training.tracker_factory import tracker_arguments

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]) -> Config:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="config_schema", node=Config)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["output_dir=unused", *overrides])
    return validate(OmegaConf.to_object(cfg))


def data_model_and_tracker_args(cfg: Config, out: Path):
    """The corpus (tokenised and cached), the freshly initialised HF model (seeded as
    train.py seeds it) and the tracker's arguments (gold, vocab, probes, schedule)."""
    torch.manual_seed(cfg.seed)
    data = TextDataModule(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup()
    config = build_hf_config(cfg.model, data.vocab_size, data.eos_token_id)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    return data, model, tracker_arguments(cfg, data, out)
