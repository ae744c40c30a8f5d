"""Hydra launchers and model presets: the SLURM config composes, joblib runs a 2-job
sweep locally, every model preset builds and trains a step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT, TINY, run_train
from normx_track.training.config import Config, validate
from normx_track.training.model import LanguageModel

import train  # noqa: F401  (registers the config schema with Hydra's ConfigStore)


def test_slurm_launcher_config_composes():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240
    assert cfg.trainer.precision == "bf16-mixed"


def test_joblib_launcher_runs_a_two_job_sweep(cache_dir: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run_train(cache_dir, "-m", "hydra/launcher=local_joblib", *TINY,
                     "trainer.max_steps=2", "tracker=off", "logger=none", "seed=0,1",
                     f"hydra.sweep.dir={sweep}")
    assert "Joblib" in proc.stdout + proc.stderr
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("preset", ["gpt2_nano", "gpt2_micro", "neox_tiny", "llama_tiny"])
def test_model_presets_build_and_train_a_step(preset: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={preset}", "output_dir=/tmp/unused"])
    config: Config = validate(OmegaConf.to_object(cfg))
    module = LanguageModel.from_configs(config.model, config.optim, vocab_size=97,
                                        eos_token_id=0, max_steps=10)
    hf = module.model
    assert hf.config.model_type == config.model.arch
    assert hf.get_input_embeddings().weight.shape == (97, config.model.n_embd)
    tied = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    assert tied == config.model.tie_word_embeddings
    batch = {"input_ids": torch.randint(0, 97, (2, 16))}
    loss = module._loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(torch.log(torch.tensor(97.)).item(), rel=0.2)
    # nanoGPT's rule, by shape: matrices (embeddings included) decay, vectors do not.
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == config.optim.weight_decay > 0 == no_decay["weight_decay"]
    assert {id(p) for p in decay["params"]} == {id(p) for p in hf.parameters() if p.ndim == 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in hf.parameters() if p.ndim == 1}
