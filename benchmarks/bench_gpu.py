"""GPU pre-training speed, measured side by side in one run (under 5 minutes on one GPU).

GPT-2 small (12 x 768, vocabulary 50,257), 16 x 1024 tokens a step, bf16-mixed, our
`LanguageModel` under a Lightning Trainer (the `trainer=gpu` path):
1. tokens/s, MFU (model FLOPs, attention included, against the device's peak from
   Lightning's table) and peak GPU memory with `trainer.compile` off, on, and on with
   `trainer.loss_chunk_tokens` (the LM head and cross-entropy 2,048 tokens at a time);
2. host reads per training step between logged steps, counted by the PyTorch profiler
   (device-to-host copies and synchronisations: each one stalls the GPU's queue);
3. the tracker's share of training at one snapshot every 100 and every 500 steps, default
   probes (norms + metrics + the evidence probe on 100 synthetic pairs);
4. FSDP on one device against the plain strategy: the same step-0 norms.
No network: random tokens, synthetic probes, a BPE trained here.

    python benchmarks/bench_gpu.py [--steps 40] [--batch 16] [--seq 1024]
    python benchmarks/bench_gpu.py --smoke     # tiny sizes on CPU: checks the script itself
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from normx_track.training.config import ModelConfig, OptimConfig
from normx_track.training.data.synthetic import SyntheticConfig, generate_corpus
from normx_track.training.data.tokenizer import train_bpe
from normx_track.probes.evidence import EvidenceProbe
from normx_track.gold.statistics import compute_gold
from normx_track.training.model import LanguageModel, chunked_loss_available, flops_per_token
from normx_track.probes.files import pair_from_record
from normx_track.tracker.snapshot import NormMetrics, norm_arrays
from summary import emit  # benchmarks/ is on sys.path when run as a script

GPT2_VOCAB = 50_257


class WindowTimer(L.Callback):
    """Seconds per optimizer step over the steps after `skip` warm-up ones (compilation
    happens there), timed as one window: no synchronisation between the steps, so the host
    queues ahead as in a real run."""

    def __init__(self, skip: int):
        self.skip, self.step_s = skip, float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.skip:
            _sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync()
        self.step_s = (time.perf_counter() - self.start) / (trainer.global_step - self.skip)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_config(args) -> ModelConfig:
    if args.smoke:
        return ModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=args.seq)
    return ModelConfig(n_layer=12, n_embd=768, n_head=12, n_positions=args.seq)


def random_batches(vocab: int, args) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, vocab, (args.batch, args.seq), generator=g)}
            for _ in range(8)]


def trainer_kwargs(args, **extra):
    gpu = torch.cuda.is_available() and not args.smoke
    return dict(accelerator="gpu" if gpu else "cpu", devices=1,
                precision="bf16-mixed" if gpu else "32-true", logger=False,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, **extra)


def throughput(args, vocab: int, compile_model: bool, loss_chunk_tokens: int | None
               ) -> tuple[float, float, float, LanguageModel]:
    """(tokens/s, MFU, peak GPU memory in GiB) at steady state."""
    L.seed_everything(0, verbose=False)
    module = LanguageModel.from_configs(model_config(args), OptimConfig(warmup_steps=5), vocab,
                                        0, args.steps, compile_model=compile_model,
                                        loss_chunk_tokens=loss_chunk_tokens)
    timer = WindowTimer(skip=args.warmup)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    L.Trainer(max_steps=args.steps, callbacks=[timer], **trainer_kwargs(args)).fit(
        module, loader(vocab, args))
    step_s = timer.step_s
    tokens_s = args.batch * args.seq / step_s
    mcfg = model_config(args)
    n_params = sum(p.numel() for p in module.model.parameters())
    flops = flops_per_token(n_params, mcfg.n_layer, mcfg.n_embd, args.seq) * tokens_s
    device = torch.device("cuda") if torch.cuda.is_available() and not args.smoke else None
    peak = get_available_flops(device, torch.bfloat16) if device is not None else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if device is not None else float("nan")
    return tokens_s, (flops / peak if peak else float("nan")), memory, module


def loader(vocab: int, args) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(random_batches(vocab, args) * args.steps, batch_size=None,
                                       pin_memory=torch.cuda.is_available())


# A host read on a GPU: .item() / int(tensor) copy and then synchronise the stream, or an
# explicit synchronisation. On CPU the reads themselves (which there include AdamW's step
# counters: fused AdamW on a GPU keeps those on the device).
_GPU_READS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_CPU_READS = ("aten::_local_scalar_dense",)


def host_reads_per_step(args, vocab: int) -> float:
    """Host reads per step over steps that neither log nor snapshot, with run.py's
    progress bar and throughput logger, counted by the PyTorch profiler."""
    from torch.profiler import ProfilerActivity, profile

    from normx_track.training.monitors import LogStepThroughput, LossProgressBar

    class Profiled(L.Callback):  # steps 11..19 of log_every_n_steps=10
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                self.prof = profile(activities=activities)
                self.prof.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 19:
                self.prof.__exit__(None, None, None)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if torch.cuda.is_available() else [])
    module = LanguageModel.from_configs(model_config(args), OptimConfig(), vocab, 0, 21)
    profiled = Profiled()
    kwargs = {**trainer_kwargs(args), "enable_progress_bar": True, "log_every_n_steps": 10}
    L.Trainer(max_steps=21, callbacks=[profiled, LossProgressBar(refresh_rate=10),
                                       LogStepThroughput(1.0)], **kwargs).fit(
        module, loader(vocab, args))
    names = [e.name for e in profiled.prof.events()]
    reads = _GPU_READS if torch.cuda.is_available() else _CPU_READS
    return sum(names.count(n) for n in reads) / 9


def synthetic_probe(vocab_size: int):
    """100 synthetic agreement pairs and a BPE trained on the synthetic corpus (offline)."""
    corpus = generate_corpus(SyntheticConfig(n_documents=400, n_probes=100))
    folder = Path(tempfile.mkdtemp())
    tokenizer = train_bpe(corpus.documents, min(vocab_size, 4096), folder)
    pairs = [pair_from_record(p) for p in corpus.probes]
    return EvidenceProbe(pairs, tokenizer, max_pairs=100)


def tracker_share(args, vocab: int, step_s: float, module: LanguageModel) -> dict[int, float]:
    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, vocab + 1) ** 1.1
    stream = rng.choice(vocab, size=200_000, p=zipf / zipf.sum())
    gold = compute_gold(np.split(stream, 400), vocab, shuffle_correction=True)
    metrics = NormMetrics({n: getattr(gold, n) for n in gold.names()}, gold.counts, 10)
    hf = module.model.to("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    probe = synthetic_probe(vocab)
    probe(hf)  # warm-up

    def snapshot() -> None:
        metrics(norm_arrays(hf))
        probe(hf)

    times = []
    for _ in range(5):
        _sync()
        start = time.perf_counter()
        snapshot()
        _sync()
        times.append(time.perf_counter() - start)
    snap_s = float(np.median(times))
    print(f"  snapshot (norms + metrics + evidence probe, 100 pairs): {1000 * snap_s:.1f} ms")
    return {every: snap_s / (every * step_s) for every in (100, 500)}


def fsdp_matches(args, vocab: int) -> bool:
    """Step-0 norms under FSDP on one device equal the plain strategy's."""
    from normx_track.training.strategies import CPUFSDPStrategy
    from lightning.pytorch.strategies import FSDPStrategy

    norms = []
    for strategy in ("auto", "fsdp"):
        L.seed_everything(0, verbose=False)
        module = LanguageModel.from_configs(model_config(args), OptimConfig(), vocab, 0, 1)
        if strategy == "fsdp":
            gpu = torch.cuda.is_available() and not args.smoke
            strategy = (FSDPStrategy if gpu else CPUFSDPStrategy)(use_orig_params=True)
        grab = _Step0Norms()
        loader = torch.utils.data.DataLoader(random_batches(vocab, args), batch_size=None)
        L.Trainer(max_steps=1, strategy=strategy, callbacks=[grab],
                  **trainer_kwargs(args)).fit(module, loader)
        norms.append(grab.norms)
    return bool(np.allclose(norms[0], norms[1], rtol=1e-5, atol=1e-6))


class _Step0Norms(L.Callback):
    def on_train_start(self, trainer, pl_module):
        from normx_track.tracker.snapshot import find_language_model, full_params

        with full_params(trainer.strategy.model):
            self.norms = norm_arrays(find_language_model(pl_module))["input_norm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch, args.seq = 6, 2, 2, 32
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    vocab = 512 if args.smoke else GPT2_VOCAB
    print(f"{device}: GPT-2 {'(smoke sizes)' if args.smoke else 'small'}, vocabulary {vocab}, "
          f"{args.batch} x {args.seq} tokens a step, {args.steps} steps ({args.warmup} warm-up)")
    results = {}
    chunk = max(1, args.batch * args.seq // 8)  # 8 chunks: 2,048 tokens at 16 x 1024
    configs = [("compile off", False, None), ("compile on", True, None)]
    if chunked_loss_available():
        configs.append(("compile on + chunked loss", True, chunk))
    else:
        print(f"  (no chunked-loss row: torch {torch.__version__} lacks linear_cross_entropy's "
              "chunked path)")
    for label, compiled, chunk_tokens in configs:
        tokens_s, mfu, memory, module = throughput(args, vocab, compiled, chunk_tokens)
        results[label] = tokens_s
        print(f"  {label}: {tokens_s:,.0f} tokens/s, MFU {100 * mfu:.1f} %, "
              f"peak memory {memory:.1f} GiB")
        emit(f"GPT-2 small, {label}: tokens/s", tokens_s, "tokens/s", "", None)
        emit(f"GPT-2 small, {label}: MFU", 100 * mfu, "%", ">= 35" if compiled else "",
             bool(mfu >= 0.35) if compiled and np.isfinite(mfu) else None)
    on, off = results["compile on"], results["compile off"]
    print(f"  compile on / off: {on / off:.2f}x tokens/s")
    if "compile on + chunked loss" in results:
        print(f"  chunked loss / plain (compiled): "
              f"{results['compile on + chunked loss'] / on:.2f}x tokens/s")
    reads = host_reads_per_step(args, vocab)
    note = "" if torch.cuda.is_available() else " (on CPU: AdamW's step counters, on the host)"
    print(f"  host reads per step between logged steps (profiler): {reads:.1f}{note}")
    emit("host reads per step between logged steps", reads, "reads/step", "0 on a GPU", None)
    step_s = args.batch * args.seq / max(results.values())
    for every, share in tracker_share(args, vocab, step_s, module).items():
        print(f"  tracker share, a snapshot every {every} steps: {100 * share:.3f} %")
        emit(f"tracker share, snapshot every {every} steps", 100 * share, "%",
             "<= 0.2" if every == 500 else "", share <= 0.002 if every == 500 else None)
    same = fsdp_matches(args, vocab)
    print(f"  FSDP on one device, step-0 norms equal the plain strategy's: {same}")
    emit("FSDP (1 device) step-0 norms equal", float(same), "bool", "1", same)


if __name__ == "__main__":
    main()
