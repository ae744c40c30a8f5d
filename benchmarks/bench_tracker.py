"""Tracker cost, measured side by side in one run.

1. Training throughput of the default model on the synthetic corpus with the tracker at its
   default cadence versus without it (target: under 1% overhead). Runs alternate
   (off, on, off, on, ...) so machine noise hits both alike; the best of each is compared.
2. The cost of one snapshot of a GPT-2-sized embedding (50,257 x 768) against three gold
   signals: norms + all metrics (target: under 30 ms on CPU).
3. GPT-2 small (124 M parameters, 50,257-token vocabulary) on this machine: one training
   step versus one snapshot with the default evidence probe (100 pairs), and the share of
   training they make at a snapshot every 100 and every 500 steps. On a GPU the step, the
   norms and the probe's forward passes all move to the device; the metrics stay on CPU.

4. With --profile: one tracked default run under cProfile, inside the tracker's hooks only,
   and where that time goes (the norms, the metrics, each probe, the record's writes).

    python benchmarks/bench_tracker.py [--steps 600] [--repeats 2] [--skip-default-run]
                                       [--profile]
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import logging
import os
import pstats
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from normx_track.training.config import Config, ModelConfig, validate
from normx_track.training.data.datamodule import TextDataModule
from normx_track.gold.statistics import compute_gold
from normx_track.training.model import LanguageModel
from normx_track.probes.evidence import EvidenceProbe
from normx_track.tracker.snapshot import NormMetrics, norm_arrays
from normx_track.training.tracker_factory import build_tracker
from summary import emit  # benchmarks/ is on sys.path when run as a script


class TrainTimer(L.Callback):
    """Wall time from the first to the last training batch (set-up excluded)."""

    def on_train_start(self, trainer, pl_module):
        self.start, self.inside = time.perf_counter(), 0.0

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def train_seconds(cfg: Config, datamodule: TextDataModule, tracked: bool, out: Path,
                  profiler: cProfile.Profile | None = None) -> tuple[float, float]:
    L.seed_everything(cfg.seed, verbose=False)
    model = LanguageModel.from_configs(cfg.model, cfg.optim, datamodule.vocab_size,
                                       datamodule.eos_token_id, cfg.trainer.max_steps)
    timer = TrainTimer()
    callbacks: list[L.Callback] = [timer]
    if tracked:
        callbacks.append(timed(build_tracker(cfg, datamodule, out), timer, profiler))
    trainer = L.Trainer(max_steps=cfg.trainer.max_steps, logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False, default_root_dir=out)
    trainer.fit(model, datamodule=datamodule)
    return timer.seconds, timer.inside


HOOKS = ("on_train_start", "on_train_batch_end", "on_validation_end", "on_save_checkpoint",
         "on_train_end")  # every hook the callback does work in


def timed(tracker, timer: TrainTimer, profiler: cProfile.Profile | None = None):
    """Count the seconds spent in the tracker's hooks (its snapshots and its per-step
    bookkeeping): a direct, low-noise measure; `profiler` runs inside them only."""
    for name in HOOKS:
        hook = getattr(tracker, name)

        def counted(*args, _hook=hook, **kwargs):
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            try:
                _hook(*args, **kwargs)
            finally:
                if profiler is not None:
                    profiler.disable()
                timer.inside += time.perf_counter() - start

        setattr(tracker, name, counted)
    return tracker


# The phases of a snapshot (normx_track functions), reported by their cumulative time.
PHASES = {"norm_arrays": "the norms (embedding rows to numpy)",
          "__call__ (snapshot.py)": "the metrics against the gold",
          "run_probes": "the probes, in all", "append (run_record.py)": "the record's writes",
          "_log": "the loggers (the row to Lightning's loggers)",
          "_roll_call": "the ranks' roll call", "_losses_over_ranks": "the losses"}


def profile_default_run(steps: int) -> None:
    cfg = validate(Config())
    cfg.trainer.max_steps = steps
    cfg.data.cache_dir = os.environ.get("NORMX_CACHE_DIR", ".cache/normx")
    datamodule = TextDataModule(cfg.data, seed=cfg.seed)
    datamodule.setup()
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        build_tracker(cfg, datamodule, Path(tmp) / "warm")  # gold cached before timing
        seconds, inside = train_seconds(cfg, datamodule, True, Path(tmp) / "run", profiler)
    stats = pstats.Stats(profiler)
    print(f"\nprofile of one tracked default run ({steps} steps): {seconds:.1f} s wall, "
          f"{inside:.2f} s inside the tracker's hooks ({100 * inside / (seconds - inside):.2f} %)")
    rows = []
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if "normx_track" not in path:
            continue
        label = f"{name} ({Path(path).name})"
        phase = PHASES.get(name) or PHASES.get(label)
        if phase is not None or (name == "__call__" and "probes" in path):
            rows.append((cumulative, label, phase or "a probe"))
    for cumulative, label, phase in sorted(rows, reverse=True):
        print(f"  {cumulative:7.3f} s {100 * cumulative / inside:5.1f} %  {label:<40} {phase}")


VARIANTS = {"no tracker": None, "tracker, norms only": {"evidence": False},
            "tracker, default (norms + evidence probe)": {}}


def bench_overhead(steps: int, repeats: int) -> None:
    cfg = validate(Config())
    cfg.trainer.max_steps = steps
    cfg.data.cache_dir = os.environ.get("NORMX_CACHE_DIR", ".cache/normx")
    datamodule = TextDataModule(cfg.data, seed=cfg.seed)
    datamodule.setup()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        build_tracker(cfg, datamodule, Path(tmp))  # gold statistics cached before timing
        for r in range(repeats):  # interleaved, so machine noise hits every variant alike
            for v, (name, overrides) in enumerate(VARIANTS.items()):
                variant = copy.deepcopy(cfg)
                for key, value in (overrides or {}).items():
                    setattr(variant.tracker, key, value)
                times[name].append(train_seconds(variant, datamodule, overrides is not None,
                                                 Path(tmp) / f"repeat{r}_variant{v}"))
    tokens = steps * cfg.data.batch_size * cfg.data.block_size
    best = {name: min(t) for name, t in times.items()}  # (wall, inside the tracker)
    base = best["no tracker"][0]
    print(f"training, {steps} steps of {cfg.data.batch_size}x{cfg.data.block_size} tokens "
          f"(gpt2_nano, synthetic, snapshots at 0,1,2,4,..,64 then every "
          f"{cfg.tracker.every_n_steps}), best of {repeats}:")
    print(f"  {'':<42} {'wall':>9} {'tokens/s':>9} {'wall vs none':>13} {'in tracker':>11}")
    for name, (seconds, inside) in best.items():
        share = inside / (seconds - inside)
        print(f"  {name:<42} {seconds:7.2f} s {tokens / seconds:9.0f} "
              f"{100 * (seconds / base - 1):+12.2f}% {100 * share:10.2f}%")
        if name != "no tracker":
            emit(f"overhead (time in tracker): {name}", 100 * share, "%", "< 1", share < 0.01)
    emit("training throughput without tracker", tokens / base, "tokens/s", "", None)

GPT2_VOCAB = 50_257


@functools.lru_cache(maxsize=None)
def gpt2_vocab_metrics() -> NormMetrics:
    """Gold signals (SI, IG, IG corrected) over a GPT-2-sized vocabulary from a Zipf stream
    of 1 M tokens, prepared once for every benchmark that needs them."""
    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, GPT2_VOCAB + 1) ** 1.1
    stream = rng.choice(GPT2_VOCAB, size=1_000_000, p=zipf / zipf.sum())
    gold = compute_gold(np.split(stream, 2000), GPT2_VOCAB, shuffle_correction=True)
    return NormMetrics({n: getattr(gold, n) for n in gold.names()}, gold.counts, min_count=10)


def bench_snapshot(repeats: int = 20) -> None:
    vocab, dim = GPT2_VOCAB, 768
    metrics = gpt2_vocab_metrics()
    embedding = torch.nn.Embedding(vocab, dim)
    model = type("LM", (torch.nn.Module,), {"get_input_embeddings": lambda self: embedding,
                                            "get_output_embeddings": lambda self: None})()
    norm_ms, metric_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        arrays = norm_arrays(model)
        t1 = time.perf_counter()
        metrics(arrays)
        t2 = time.perf_counter()
        norm_ms.append(1000 * (t1 - t0))
        metric_ms.append(1000 * (t2 - t1))
    total = np.median(np.add(norm_ms, metric_ms))
    print(f"snapshot of a {vocab} x {dim} embedding, 3 gold signals, median of {repeats}:")
    print(f"  norms {np.median(norm_ms):.1f} ms + metrics {np.median(metric_ms):.1f} ms "
          f"= {total:.1f} ms   (target < 30 ms; ratio to target {total / 30:.2f})")
    emit("snapshot, 50257 x 768, 3 gold signals", total, "ms", "< 30", total < 30)


def bench_gpt2_small(batch: int = 8, block: int = 256, steps: int = 4) -> None:
    cfg = validate(Config())
    cfg.data.cache_dir = os.environ.get("NORMX_CACHE_DIR", ".cache/normx")
    datamodule = TextDataModule(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    cfg.model = ModelConfig(n_layer=12, n_embd=768, n_head=12, n_positions=1024)  # gpt2_small
    vocab = GPT2_VOCAB
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = LanguageModel.from_configs(cfg.model, cfg.optim, vocab, 0, 1000).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    ids = torch.randint(0, vocab, (batch, block), device=device)

    def train_step() -> None:
        loss = module._loss({"input_ids": ids})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()  # warm-up
    step_s = _median_seconds(train_step, steps, device)
    metrics = gpt2_vocab_metrics()
    probe = EvidenceProbe(datamodule.probe_file, datamodule.tokenizer, max_pairs=100)
    hf = module.model
    probe(hf)  # warm-up
    norms_s = _median_seconds(lambda: metrics(norm_arrays(hf)), 5, device)
    probe_s = _median_seconds(lambda: probe(hf), 3, device)
    snapshot_s = norms_s + probe_s
    print(f"GPT-2 small (124 M) on {device}, training step of {batch}x{block} tokens: "
          f"{1000 * step_s:.0f} ms ({batch * block / step_s:.0f} tokens/s)")
    print(f"  snapshot: norms + metrics {1000 * norms_s:.0f} ms, evidence probe (100 pairs) "
          f"{1000 * probe_s:.0f} ms")
    for every in (100, 500):
        share = snapshot_s / (every * step_s)
        print(f"  a snapshot every {every} steps: {100 * share:.3f}% of training")
        emit(f"GPT-2 small ({device}): tracker share, snapshot every {every} steps",
             100 * share, "%", "< 1", share < 0.01)
    emit(f"GPT-2 small ({device}): training throughput", batch * block / step_s, "tokens/s",
         "", None)


def _median_seconds(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)  # the default run
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-default-run", action="store_true",
                        help="only the snapshot and GPT-2 small figures")
    parser.add_argument("--profile", action="store_true",
                        help="only the per-phase profile of one tracked default run")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch threads: {torch.get_num_threads()}")
    if args.profile:
        profile_default_run(args.steps)
        return
    bench_snapshot()
    bench_gpt2_small()
    if not args.skip_default_run:
        bench_overhead(args.steps, args.repeats)


if __name__ == "__main__":
    main()
