"""Cost of NormXLogit against a forward pass and Captum's gradient baselines.

    python benchmarks/bench_attribution.py                 # 4 layers x 256, vocab 8192
    python benchmarks/bench_attribution.py --full          # GPT-2 small (124M)
    python benchmarks/bench_attribution.py --lengths 128 --batch 4 --threads 0  # torch's threads
    python benchmarks/bench_attribution.py --methods normxlogit --mixing-lengths 128  # mixing only

Peak memory: each method runs once per length in its own subprocess, so the others do not
pollute it: on CUDA ``torch.cuda.max_memory_allocated`` above the loaded model, on CPU the
rise of ``ru_maxrss`` (the resident-set high-water mark) above the loaded model.
Time: one process, after a warm-up, ``--repeats`` rounds in which every method runs
(~0.2 s of runs; IG once, in the first ``max(1, repeats // 3)`` rounds), interleaved so
that load from other processes hits all methods alike; the minimum per method, divided by
the batch size.

Methods: ``forward`` (plain ``model(input_ids)``, full [B,T,V] logits: the ratio baseline),
``forward_last`` (``logits_to_keep=1``), ``normxlogit`` (``attribute()``), and Captum's
``Saliency``, ``InputXGradient`` and ``IntegratedGradients`` on the word embeddings
(``inputs_embeds``, zero baseline) explaining the argmax at the last position; their
forward keeps only the last position's logits, and the target is computed beforehand
(untimed). Random weights: costs do not depend on training.

Context mixing (a second section, ``--mixing-lengths``, default T = 128; ``--no-mixing``
skips it): the layer-wise methods of `normx_track.attribution.mixing` (raw attention,
rollout, Value Zeroing, ALTI, GlobEnc: all layers' [L, T, T] matrices for the batch, as
``context_mixing(model, x, method)`` computes them, eager attention switched on for the call
where the method needs the probabilities), timed interleaved with NormXLogit at the same
lengths and batch, and printed side by side with their ratio to it; one SUMMARY line each
(information only: no target).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from summary import emit  # benchmarks/ is on sys.path when run as a script

METHODS = ("forward", "forward_last", "normxlogit",
           "saliency", "input_x_gradient", "integrated_gradients")
# (label, numerator, denominator, target text, pass test or None for information only)
CHECKS = [
    ("NormXLogit/forward", "normxlogit", "forward", "<= 1.2", lambda r: r <= 1.2),
    ("NormXLogit/forward(last)", "normxlogit", "forward_last", "(info)", None),
    ("IG/NormXLogit", "integrated_gradients", "normxlogit", ">= 100", lambda r: r >= 100),
    ("IxG/NormXLogit", "input_x_gradient", "normxlogit", ">= 2", lambda r: r >= 2),
    ("Saliency/NormXLogit", "saliency", "normxlogit", "(info)", None),
]
SHORT = {"forward": "forward", "forward_last": "forward(last)", "normxlogit": "NormXLogit",
         "saliency": "Saliency", "input_x_gradient": "IxG", "integrated_gradients": "IG"}
# context mixing: benchmark name -> the method's name in normx_track.attribution.mixing.METHODS
MIXING = {"raw_attention": "attention", "rollout": "rollout", "value_zeroing": "value_zeroing",
          "alti": "alti", "globenc": "globenc"}
SHORT.update(raw_attention="attention", rollout="rollout", value_zeroing="ValueZeroing",
             alti="ALTI", globenc="GlobEnc")


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--full", action="store_true", help="GPT-2 small: 12 layers x 768, vocab 50257")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3,
                   help="timing rounds (IG runs in the first max(1, repeats // 3))")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-internal-batch", type=int, default=16, help="Captum internal_batch_size")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (0: torch's default). One thread by default: with several, "
                        "other load on the machine stalls OpenMP barriers and skews the ratios")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--mixing-lengths", type=int, nargs="+", default=[128],
                   help="lengths of the context-mixing section")
    p.add_argument("--mixing-methods", nargs="+", default=list(MIXING), choices=list(MIXING))
    p.add_argument("--no-mixing", action="store_true", help="skip the context-mixing section")
    p.add_argument("--worker", choices=[*METHODS, *MIXING], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.full:
        args.layers, args.hidden, args.vocab = 12, 768, 50257
    return args


# --------------------------------------------------------------------------- worker side


def build(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=max(1, args.hidden // 64),
                     vocab_size=args.vocab,
                     n_positions=max(1024, *args.lengths, *args.mixing_lengths))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return GPT2LMHeadModel(cfg).to(device).eval(), device


def method_fn(name, model, x, args):
    """A zero-argument callable running one method on batch x."""
    import warnings

    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    from normx_track.attribution.normxlogit import attribute

    if name == "forward":
        return lambda: torch.no_grad()(model)(input_ids=x).logits
    if name == "forward_last":
        return lambda: torch.no_grad()(model)(input_ids=x, logits_to_keep=1).logits
    if name == "normxlogit":
        return lambda: attribute(model, x).normxlogit
    if name in MIXING:
        from normx_track.attribution.mixing import context_mixing

        return lambda: context_mixing(model, x, MIXING[name])

    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")

    def last_logits(embeds):  # Captum's forward: logits at the explained (last) position
        return model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1]

    with torch.no_grad():
        target = model(input_ids=x, logits_to_keep=1).logits[:, -1].argmax(-1)
    embeds = model.get_input_embeddings()(x).detach()
    if name == "saliency":
        return lambda: Saliency(last_logits).attribute(embeds, target=target).norm(dim=-1)
    if name == "input_x_gradient":
        return lambda: InputXGradient(last_logits).attribute(embeds, target=target).sum(-1)
    ig = IntegratedGradients(last_logits)
    return lambda: ig.attribute(
        embeds, baselines=torch.zeros_like(embeds), target=target,
        n_steps=args.ig_steps, internal_batch_size=args.ig_internal_batch,
    ).sum(-1)


def _set_threads(args):
    import torch

    if args.threads and not torch.cuda.is_available():
        torch.set_num_threads(args.threads)


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _batch(args, length, device):
    import torch

    g = torch.Generator().manual_seed(length)
    return torch.randint(0, args.vocab, (args.batch, length), generator=g).to(device)


def worker(args):
    """Peak memory of one method (one run per length) in a fresh process."""
    import torch

    _set_threads(args)
    model, device = build(args)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peaks = {}
    for length in sorted(args.lengths):  # increasing, so each RSS high-water mark is this length's
        fn = method_fn(args.worker, model, _batch(args, length, device), args)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        if device == "cuda":
            peaks[length] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        else:
            peaks[length] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    print("RESULT " + json.dumps(peaks))


def time_methods(args, methods=None, lengths=None):
    """Seconds per example, methods interleaved round by round so that load from other
    processes hits them alike; the minimum over runs is the least disturbed figure.
    ``methods`` / ``lengths`` default to ``args.methods`` / ``args.lengths``."""
    methods = args.methods if methods is None else methods
    lengths = args.lengths if lengths is None else lengths
    _set_threads(args)
    model, device = build(args)
    out = {name: {} for name in methods}
    for length in sorted(lengths):
        x = _batch(args, length, device)
        fns = {name: method_fn(name, model, x, args) for name in methods}
        for fn in fns.values():  # warm-up
            fn()
        best = dict.fromkeys(fns, float("inf"))
        for rnd in range(args.repeats):
            for name, fn in fns.items():
                if name == "integrated_gradients" and rnd >= max(1, args.repeats // 3):
                    continue
                spent = 0.0
                while spent < 0.2 or name == "integrated_gradients":  # cheap ones: ~0.2 s a round
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    dt = time.perf_counter() - t0
                    best[name], spent = min(best[name], dt), spent + dt
                    if name == "integrated_gradients":
                        break
        for name in fns:
            out[name][length] = best[name] / args.batch
    return out


# --------------------------------------------------------------------------- driver side


def peak_memory(name, argv):
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", name],
                          capture_output=True, text=True, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(line[-1][7:]).items()}


def report(res, args):
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU, {args.threads or torch.get_num_threads()} threads"
    print(f"GPT-2 {args.layers} layers x {args.hidden}, vocab {args.vocab}; batch {args.batch}; "
          f"IG n_steps={args.ig_steps}; {device}")
    print(f"{'method':<15}{'T':>6}{'ms/example':>13}{'x NormXLogit':>14}{'peak MB':>10}")
    for length in sorted(args.lengths):
        nx = res.get("normxlogit", {}).get(length, {}).get("s_per_example")
        for name in args.methods:
            r = res[name][length]
            ratio = f"{r['s_per_example'] / nx:.2f}" if nx else "-"
            ms = 1e3 * r["s_per_example"]
            print(f"{SHORT[name]:<15}{length:>6}{ms:>13.2f}{ratio:>14}{r['peak_mb']:>10.1f}")
    print("\nratios (target):")
    for length in sorted(args.lengths):
        t = {k: v[length]["s_per_example"] for k, v in res.items()}
        for label, num, den, target, ok in CHECKS:
            if num in t and den in t:
                r = t[num] / t[den]
                flag = "" if ok is None else ("  ok" if ok(r) else "  MISSED")
                print(f"  T={length:<4} {label:<26}{r:>9.2f}   target {target}{flag}")
                emit(f"{label}, T={length}", r, "ratio", str(target), None if ok is None else ok(r))


def report_mixing(res, args):
    """The context-mixing section: each method beside NormXLogit, same lengths and batch."""
    print(f"\ncontext mixing (all {args.layers} layers' [T, T] matrices) against NormXLogit:")
    print(f"{'method':<15}{'T':>6}{'ms/example':>13}{'x NormXLogit':>14}{'peak MB':>10}")
    for length in sorted(args.mixing_lengths):
        nx = res["normxlogit"][length]["s_per_example"]
        for name in ["normxlogit", *args.mixing_methods]:
            r = res[name][length]
            ratio = r["s_per_example"] / nx
            print(f"{SHORT[name]:<15}{length:>6}{1e3 * r['s_per_example']:>13.2f}{ratio:>14.2f}"
                  f"{r['peak_mb']:>10.1f}")
    for length in sorted(args.mixing_lengths):
        nx = res["normxlogit"][length]["s_per_example"]
        for name in args.mixing_methods:
            emit(f"{SHORT[name]}/NormXLogit, T={length}", res[name][length]["s_per_example"] / nx,
                 "ratio", "(info)", None)


def mixing_section(argv, args):
    """Peak memory (one subprocess per method) and interleaved timing at the mixing lengths."""
    names = ["normxlogit", *args.mixing_methods]
    lengths_argv = [*argv, "--lengths", *map(str, args.mixing_lengths)]
    res = {name: {} for name in names}
    for name in names:
        t0 = time.perf_counter()
        for length, mb in peak_memory(name, lengths_argv).items():
            res[name][length] = {"peak_mb": mb}
        print(f"  memory {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for name, per_length in time_methods(args, names, args.mixing_lengths).items():
        for length, sec in per_length.items():
            res[name][length]["s_per_example"] = sec
    print(f"  mixing timing: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    report_mixing(res, args)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        return worker(args)
    res = {name: {} for name in args.methods}
    for name in args.methods:
        t0 = time.perf_counter()
        for length, mb in peak_memory(name, argv).items():
            res[name][length] = {"peak_mb": mb}
        print(f"  memory {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for name, per_length in time_methods(args).items():
        for length, sec in per_length.items():
            res[name][length]["s_per_example"] = sec
    print(f"  timing: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    report(res, args)
    if not args.no_mixing:
        mixing_section(argv, args)


if __name__ == "__main__":
    main()
