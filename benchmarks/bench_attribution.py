"""Cost of NormXLogit against a forward pass and Captum's gradient baselines.

    python benchmarks/bench_attribution.py                 # 4 layers x 256, vocab 8192
    python benchmarks/bench_attribution.py --full          # GPT-2 small (124M)
    python benchmarks/bench_attribution.py --lengths 128 --batch 4 --threads 2

Each method runs in its own subprocess so that peak memory is not polluted by the others:
on CUDA it is ``torch.cuda.max_memory_allocated`` above the loaded model, on CPU the rise of
``ru_maxrss`` (the process's resident-set high-water mark) above the loaded model. Times are
minima over at least ``--repeats`` runs (and ~1 s) after one warm-up run, divided by the
batch size; the minimum is the figure least disturbed by other load on the machine.

Methods: ``forward`` (plain ``model(input_ids)``, full [B,T,V] logits: the ratio baseline),
``forward_last`` (``logits_to_keep=1``), ``normxlogit`` (``attribute()``), and Captum's
``Saliency``, ``InputXGradient`` and ``IntegratedGradients`` on the word embeddings
(``inputs_embeds``, zero baseline) explaining the argmax at the last position; their
forward keeps only the last position's logits, and the target is computed beforehand
(untimed). Random weights: costs do not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METHODS = ("forward", "forward_last", "normxlogit", "saliency", "input_x_gradient", "integrated_gradients")
SHORT = {"forward": "forward", "forward_last": "forward(last)", "normxlogit": "NormXLogit",
         "saliency": "Saliency", "input_x_gradient": "IxG", "integrated_gradients": "IG"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPT-2 small: 12 layers x 768, vocab 50257")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs (IG: max(1, repeats // 3))")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-internal-batch", type=int, default=16, help="Captum internal_batch_size")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
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
                     vocab_size=args.vocab, n_positions=max(1024, max(args.lengths)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return GPT2LMHeadModel(cfg).to(device).eval(), device


def method_fn(name, model, x, args):
    """A zero-argument callable running one method on batch x."""
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    from normx_track.attribution import attribute

    if name == "forward":
        return lambda: torch.no_grad()(model)(input_ids=x).logits
    if name == "forward_last":
        return lambda: torch.no_grad()(model)(input_ids=x, logits_to_keep=1).logits
    if name == "normxlogit":
        return lambda: attribute(model, x).normxlogit

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
    return lambda: ig.attribute(embeds, baselines=torch.zeros_like(embeds), target=target,
                                n_steps=args.ig_steps, internal_batch_size=args.ig_internal_batch).sum(-1)


def worker(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, device = build(args)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    results = {}
    for length in sorted(args.lengths):  # increasing, so each RSS high-water mark is this length's
        g = torch.Generator().manual_seed(length)
        x = torch.randint(0, args.vocab, (args.batch, length), generator=g).to(device)
        fn = method_fn(args.worker, model, x, args)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        fn()  # warm-up; its peak counts
        sync()
        if cuda:
            peak_mb = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        else:
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
        # At least --repeats runs (IG: a third) and ~1 s of them; the minimum is the least
        # disturbed by other load on the machine.
        reps = max(1, args.repeats // 3) if args.worker == "integrated_gradients" else args.repeats
        times = []
        while len(times) < reps or sum(times) < 1.0:
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        results[length] = {"s_per_example": min(times) / args.batch, "peak_mb": peak_mb}
    print("RESULT " + json.dumps(results))


# --------------------------------------------------------------------------- driver side


def run_method(name, argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", name],
                          capture_output=True, text=True, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(line[-1][7:]).items()}


def report(res, args):
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads() if not args.threads else args.threads} threads"
    print(f"GPT-2 {args.layers} layers x {args.hidden}, vocab {args.vocab}; batch {args.batch}; "
          f"IG n_steps={args.ig_steps}; {device}")
    print(f"{'method':<15}{'T':>6}{'ms/example':>13}{'x NormXLogit':>14}{'peak MB':>10}")
    for length in sorted(args.lengths):
        nx = res.get("normxlogit", {}).get(length, {}).get("s_per_example")
        for name in args.methods:
            r = res[name][length]
            ratio = f"{r['s_per_example'] / nx:.2f}" if nx else "-"
            print(f"{SHORT[name]:<15}{length:>6}{1e3 * r['s_per_example']:>13.2f}{ratio:>14}{r['peak_mb']:>10.1f}")
    print("\nratios (target):")
    for length in sorted(args.lengths):
        t = {k: v[length]["s_per_example"] for k, v in res.items()}
        checks = [("NormXLogit/forward", "normxlogit", "forward", "<= 1.2", lambda r: r <= 1.2),
                  ("NormXLogit/forward(last)", "normxlogit", "forward_last", "(info)", lambda r: True),
                  ("IG/NormXLogit", "integrated_gradients", "normxlogit", ">= 100", lambda r: r >= 100),
                  ("IxG/NormXLogit", "input_x_gradient", "normxlogit", ">= 2", lambda r: r >= 2),
                  ("Saliency/NormXLogit", "saliency", "normxlogit", "(info)", lambda r: True)]
        for label, num, den, target, ok in checks:
            if num in t and den in t:
                r = t[num] / t[den]
                flag = "" if target == "(info)" else ("  ok" if ok(r) else "  MISSED")
                print(f"  T={length:<4} {label:<26}{r:>9.2f}   target {target}{flag}")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        return worker(args)
    res = {}
    for name in args.methods:
        t0 = time.perf_counter()
        res[name] = run_method(name, argv)
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    report(res, args)


if __name__ == "__main__":
    main()
