"""The training loss: the chunked LM head + cross-entropy (`trainer.loss_chunk_tokens`) is HF's
causal-LM loss, value and gradients, and trains the same run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import train_here
from normx_track.training.config import ModelConfig, OptimConfig
from normx_track.training.model import LanguageModel, next_token_loss
from test_tracker import assert_rows_close, rows_of

ARCHS = [("gpt2", True), ("gpt2", False), ("gpt_neox", False), ("llama", True)]


def tiny_module(arch: str, tie: bool, chunk: int | None = None) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layer=2, n_embd=32, n_head=2, n_positions=32,
                      tie_word_embeddings=tie)
    return LanguageModel.from_configs(cfg, OptimConfig(), 300, 0, 10, loss_chunk_tokens=chunk)


def hf_loss_and_chunked_loss(module: LanguageModel, ids: torch.Tensor):
    params = list(module.parameters())
    reference = module.model(input_ids=ids, labels=ids).loss
    hidden = module.model.base_model(input_ids=ids).last_hidden_state
    # 25 tokens a chunk: uneven chunks, the last one short
    chunked = next_token_loss(hidden, module.model.get_output_embeddings(), ids, 25)
    return (reference, torch.autograd.grad(reference, params),
            chunked, torch.autograd.grad(chunked, params))


@pytest.mark.parametrize("arch, tie", ARCHS)
def test_chunked_loss_is_hf_causal_lm_loss_with_its_gradients(arch, tie):
    module = tiny_module(arch, tie)
    ids = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(1))
    reference, ref_grads, chunked, grads = hf_loss_and_chunked_loss(module, ids)
    torch.testing.assert_close(chunked, reference, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_is_hf_loss_to_bf16_rounding():
    module = tiny_module("gpt2", True)
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, ref_grads, chunked, grads = hf_loss_and_chunked_loss(module, ids)
    # The per-token losses come back in bf16 (a relative 2^-9 each); their mean is fp32,
    # so the logged loss is not rounded to bf16's steps of 1/32 near 5.7.
    assert chunked.dtype == torch.float32
    assert abs(chunked.item() - reference.item()) < 2e-3
    scale = max(g.abs().max() for g in ref_grads)
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() < 0.02 * scale


def test_the_module_trains_on_the_same_loss_either_way():
    ids = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(3))
    plain, chunked = tiny_module("gpt2", True), tiny_module("gpt2", True, chunk=16)
    torch.testing.assert_close(chunked._loss({"input_ids": ids}),
                               plain._loss({"input_ids": ids}), rtol=1e-6, atol=1e-6)


def test_a_plain_loss_run_records_the_chunked_runs_rows(tiny_run: Path, cache_dir, tmp_path):
    """tiny_run takes trainer=cpu's chunked loss (512 tokens a chunk, 40 here: several a
    batch); HF's loss over all logits records the same rows."""
    for chunk in ("null", "40"):
        out = tmp_path / chunk
        train_here(out, cache_dir, "logger=none", f"trainer.loss_chunk_tokens={chunk}")
        assert_rows_close(rows_of(out), rows_of(tiny_run), rtol=1e-4, atol=1e-6)


def test_a_torch_without_the_chunked_op_warns_and_computes_the_same_loss(monkeypatch):
    import normx_track.training.model as model_module

    ids = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(3))
    plain = tiny_module("gpt2", True)
    monkeypatch.setattr(model_module, "chunked_loss_available", lambda: False)
    with pytest.warns(UserWarning, match=r"trainer.loss_chunk_tokens=16 needs torch's chunked"):
        old_torch = tiny_module("gpt2", True, chunk=16)
    assert old_torch.loss_chunk_tokens is None
    torch.testing.assert_close(old_torch._loss({"input_ids": ids}),
                               plain._loss({"input_ids": ids}), rtol=0, atol=0)


def test_gpt2_takes_the_one_kernel_tanh_gelu_which_is_gpt2s_formula():
    """GPT-2 models are built with torch's tanh-approximate GELU (one kernel), which must be
    the formula of GPT-2's own (HF's "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    import math
    from transformers.activations import ACT2FN
    from normx_track.training.model import build_hf_config
    config = build_hf_config(ModelConfig(arch="gpt2"), vocab_size=64, eos_token_id=0)
    assert config.activation_function == "gelu_pytorch_tanh"
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    by_hand = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(ACT2FN[config.activation_function](x), by_hand)
