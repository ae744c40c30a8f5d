"""The LightningModule: any HF causal LM, or a BERT/RoBERTa masked LM, built from a
config (no weights downloaded), AdamW with linear warm-up and cosine decay."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          PretrainedConfig)

from normx_track.tracker.core import LOSS_TOKENS
from normx_track.training.config import ModelConfig, OptimConfig, is_masked


def build_hf_config(cfg: ModelConfig, vocab_size: int, eos_token_id: int,
                    pad_token_id: int | None = None, bos_token_id: int | None = None
                    ) -> PretrainedConfig:
    """Translate our GPT-2-style size names into the chosen architecture's config. Masked
    LMs take the tokenizer's pad ([PAD]/<pad>) and bos ([CLS]/<s>) ids."""
    inner = cfg.n_inner or 4 * cfg.n_embd
    bos = eos_token_id if bos_token_id is None else bos_token_id
    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos_token_id,
                  tie_word_embeddings=cfg.tie_word_embeddings)
    if is_masked(cfg.arch):
        pad = 0 if pad_token_id is None else pad_token_id
        # RoBERTa's position ids start after the pad id: n_positions real ones need more rows.
        positions = cfg.n_positions + (pad + 1 if cfg.arch == "roberta" else 0)
        sizes = dict(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd,
                     num_attention_heads=cfg.n_head, intermediate_size=inner,
                     max_position_embeddings=positions, pad_token_id=pad,
                     hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                     type_vocab_size=1 if cfg.arch == "roberta" else 2)
    elif cfg.arch == "gpt2":
        sizes = dict(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_inner=inner,
                     n_positions=cfg.n_positions, resid_pdrop=cfg.dropout,
                     embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                     # GPT-2's tanh-approximate GELU as torch's one kernel: HF's default
                     # "gelu_new" is the same formula in five ops, ~14 % of a CPU step.
                     activation_function="gelu_pytorch_tanh")
    else:  # GPT-NeoX and Llama share the modern field names
        sizes = dict(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd,
                     num_attention_heads=cfg.n_head, intermediate_size=inner,
                     max_position_embeddings=cfg.n_positions)
        if cfg.arch == "llama":
            sizes["num_key_value_heads"] = cfg.n_head
    return AutoConfig.for_model(cfg.arch, **sizes, **common)  # our arch names are HF model types


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the weights (forward and backward) plus 12 L d T for
    the attention scores and their weighted sum over a T-token context (the PaLM paper's
    appendix B estimate). Used for the FLOP/s and MFU that run.py logs."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * seq_len


def chunked_loss_available() -> bool:
    return hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


def next_token_loss(hidden: torch.Tensor, head: torch.nn.Linear, input_ids: torch.Tensor,
                    chunk_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of each next token under `head(hidden)`, as HF's causal-LM loss,
    computed `chunk_tokens` rows at a time by `torch.nn.functional.linear_cross_entropy`:
    the (tokens x vocabulary) logits, and their fp32 copy, never exist at once."""
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    weight, bias = head.weight, head.bias
    device = rows.device.type
    if torch.is_autocast_enabled(device):  # the head's matmul in the autocast dtype, as HF's
        dtype = torch.get_autocast_dtype(device)
        rows, weight = rows.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(device, enabled=False):  # the op accumulates in fp32 itself
        # Per-token losses, averaged in fp32: the op returns its mean in the input dtype,
        # which in bf16 would round the logged loss to 8 bits (steps of 1/64 at a loss of 3).
        # Chunks of a set size: torch's default sizes them like the input, which for a 50k
        # vocabulary means ~100 chunks, each adding into the whole weight gradient.
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_tokens,
                                                     chunking_method=None)
        losses = F.linear_cross_entropy(rows, weight, targets, linear_bias=bias,
                                        reduction="none", options=options)
    return losses.float().mean()


def _distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def masked_token_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[2]: the summed cross-entropy over the masked tokens (labels != -100), and their
    count (float32)."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
    return torch.stack([total, (labels != -100).sum().to(total.dtype)])


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens of the GLOBAL batch (see
    `masked_token_mean`)."""
    return masked_token_mean(logits, labels)[0]


def masked_token_mean(logits: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, masked tokens in the global batch). Ranks mask different numbers of tokens,
    so a rank's own mean would weight them unequally: each rank's loss is its sum over the
    count on all ranks, times the world size (DDP averages the ranks' gradients), and its
    value is the global mean (what a rank logs), so N ranks train and log as one process
    does. A batch with no masked token has a zero gradient; its count says to leave it out
    of the logged loss (its mean would read 0.0)."""
    sums = masked_token_sums(logits, labels)
    if not _distributed():
        return sums[0] / sums[1].clamp(min=1), sums[1].detach()
    world = torch.distributed.get_world_size()
    both = sums.detach().clone()
    torch.distributed.all_reduce(both)  # one collective: the global sum and count
    share = sums[0] * world / both[1].clamp(min=1)  # this rank's part of the gradient
    return share + (both[0] / both[1].clamp(min=1) - share).detach(), both[1]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LanguageModel(L.LightningModule):
    """Wraps `self.model`, a `transformers` causal LM or masked LM (``self.masked``);
    batches are dicts with `input_ids` (and, for a masked LM, the collator's `labels`)."""

    def __init__(self, hf_config: dict[str, Any], optim: dict[str, Any], max_steps: int,
                 compile_model: bool = False, loss_chunk_tokens: int | None = None):
        super().__init__()
        # Plain dicts: checkpoints load with weights_only=True. `compile_model` and
        # `loss_chunk_tokens` are how this process trains, not what it learned: a
        # checkpoint resumes with any setting of them.
        self.save_hyperparameters(ignore=["compile_model", "loss_chunk_tokens"])
        config = AutoConfig.for_model(**hf_config)
        self.masked = is_masked(config.model_type)
        if self.masked:  # its loss covers the masked tokens only: HF's logits, not chunked
            loss_chunk_tokens = None
        if loss_chunk_tokens and not chunked_loss_available():  # the same loss, unchunked
            rank_zero_warn(f"trainer.loss_chunk_tokens={loss_chunk_tokens} needs torch's "
                           f"chunked linear_cross_entropy (torch 2.13 has it); torch "
                           f"{torch.__version__} computes the loss over all logits at once")
            loss_chunk_tokens = None
        auto = AutoModelForMaskedLM if self.masked else AutoModelForCausalLM
        self.model = auto.from_config(config)
        self._val_sums: torch.Tensor | None = None  # a masked LM's validation sums
        self.compile_model, self.loss_chunk_tokens = compile_model, loss_chunk_tokens
        self._compiled: torch.nn.Module | None = None  # see on_fit_start
        self.optim = OptimConfig(**{**optim, "betas": tuple(optim["betas"])})
        self.max_steps = max_steps
        # Matrices (embeddings included) decay; biases and norm gains do not (nanoGPT's rule).
        self._matrix_names = {n for n, p in self.named_parameters() if p.dim() >= 2}

    @classmethod
    def from_configs(cls, model: ModelConfig, optim: OptimConfig, vocab_size: int,
                     eos_token_id: int, max_steps: int, compile_model: bool = False,
                     loss_chunk_tokens: int | None = None, pad_token_id: int | None = None,
                     bos_token_id: int | None = None) -> "LanguageModel":
        hf_config = build_hf_config(model, vocab_size, eos_token_id, pad_token_id,
                                    bos_token_id).to_dict()
        optim_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(optim).items()}
        return cls(hf_config, optim_dict, max_steps, compile_model, loss_chunk_tokens)

    def on_fit_start(self) -> None:
        # Compiled once, after the strategy has placed (and, under FSDP, wrapped) the model.
        # Kept out of the module tree (object.__setattr__): the tracker, the probes, explain
        # and checkpoints see `self.model` itself, so state-dict keys never gain `_orig_mod.`.
        # With the chunked loss only the transformer body is compiled: the loss op runs eager.
        if self.compile_model and self._compiled is None:
            target = self.model.base_model if self.loss_chunk_tokens else self.model
            object.__setattr__(self, "_compiled", torch.compile(target))

    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        return self.model(input_ids=input_ids, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss_and_count(batch)[0]

    def _loss_and_count(self, batch: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss, and for a masked LM the global batch's masked tokens (else None)."""
        ids = batch["input_ids"]
        # Training steps run the compiled module; evaluation the plain one (no recompiles).
        # No use_cache=False: without a cache HF checks the positions for packed sequences,
        # a read back from the GPU at every step (tests/test_host_sync.py).
        compiled = self._compiled is not None and self.training
        if self.masked:  # the masked-token loss, on the collator's labels (-100 elsewhere)
            model = self._compiled if compiled else self.model
            return masked_token_mean(model(input_ids=ids).logits, batch["labels"])
        if not self.loss_chunk_tokens:
            model = self._compiled if compiled else self.model
            return model(input_ids=ids, labels=ids).loss, None
        body = self._compiled if compiled else self.model.base_model
        hidden = body(input_ids=ids).last_hidden_state
        return next_token_loss(hidden, self.model.get_output_embeddings(), ids,
                               self.loss_chunk_tokens), None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        loss, count = self._loss_and_count(batch)
        # Not prog_bar: Lightning would read it back from the GPU after every batch
        # (run.py's LossProgressBar reads it when it refreshes).
        logged = loss.detach() if count is None else \
            torch.where(count > 0, loss.detach(), torch.nan)  # no masked token: no point
        self.log("train/loss", logged)
        self.log("train/perplexity", torch.exp(logged))
        if count is None:
            return loss
        # The tracker leaves a batch with no masked token out of its rows (LOSS_TOKENS).
        return {"loss": loss, LOSS_TOKENS: count}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.masked:  # summed over the whole validation run (on_validation_epoch_end)
            logits = self.model(input_ids=batch["input_ids"]).logits
            sums = masked_token_sums(logits, batch["labels"])
            self._val_sums = sums if self._val_sums is None else self._val_sums + sums
            return
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/perplexity", torch.exp(loss), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = None

    def on_validation_epoch_end(self) -> None:
        """A masked LM's validation loss: all masked tokens of the run (every rank's) over
        their count, not a mean of batch means (batches mask different numbers)."""
        if not self.masked or self._val_sums is None:
            return
        sums = self._val_sums.detach().clone()
        if _distributed():
            torch.distributed.all_reduce(sums)
        if not sums[1] > 0:  # no masked token in the whole validation set: no loss, not 0.0
            return
        loss = sums[0] / sums[1]
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss))

    def configure_optimizers(self):
        # Shapes were read at construction: FSDP hands us flat 1-D shards with the same names.
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if n in self._matrix_names]
        no_decay = [p for n, p in params if n not in self._matrix_names]
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # Fused AdamW (one kernel for all parameters) where every parameter is on a GPU.
        fused = bool(params) and all(p.is_cuda for _, p in params)
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=self.optim.betas,
                                      fused=fused or None)
        o = self.optim
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, o.warmup_steps, self.max_steps, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        by_norm = gradient_clip_algorithm in (None, "norm")
        if gradient_clip_val and by_norm and isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDP precision cannot clip by norm; FSDP's own method takes the
            # norm over all shards, as one device would.
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
