"""Cost of PLL-word-l2r on a 2,000-pair BLiMP-like probe: batched (every masked copy of
a batch of sentences in one forward pass, `normx_track.probes.pll`) against the plain
loop that masks and scores one copy per forward pass (minicons' way with batch size 1).

    python benchmarks/bench_pll.py                  # bert_tiny-sized, 2,000 pairs, CPU
    python benchmarks/bench_pll.py --loop-pairs 2000   # time the loop on every pair (minutes)

The probe is generated: agreement across an attractor ("the keys to the cabinet are
here ." / "... is here ."), BLiMP's whole sentences and their one-prefix forms; a
WordPiece vocabulary is trained on its sentences. The model is bert_tiny-sized (2 layers
x 128, 2 heads, vocab 4096, random weights: costs do not depend on training). The loop is
timed on ``--loop-pairs`` pairs and scaled to the whole probe; the two are checked to
agree on those pairs. Last: the whole `MaskedEvidenceProbe` (evidence passes, mask
accuracy, PLL of the one-prefix and the whole sentences).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from summary import emit  # benchmarks/ is on sys.path when run as a script

NOUNS = ("key author dog cabinet teacher student painting window farmer doctor "
         "bottle player singer table picture driver worker garden river letter").split()
PREPS = ("to near behind beside under above by with".split())
VERBS = [("is", "are"), ("was", "were"), ("runs", "run"), ("sleeps", "sleep"),
         ("laughs", "laugh"), ("falls", "fall"), ("waits", "wait"), ("shines", "shine")]
ADJECTIVES = ("", "", "old ", "big ", "quiet ", "famous ")
ENDINGS = ("here .", "there today .", "in the garden again .", "now .",
           "near the old river every morning .")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--loop-pairs", type=int, default=50,
                   help="pairs the one-copy loop is timed on (scaled to --pairs)")
    p.add_argument("--batch-size", type=int, default=512, help="masked copies per pass")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    return p.parse_args(argv)


def generate(n: int, seed: int = 0):
    """n agreement pairs of several lengths: the subject's number decides the verb; the
    attractor has the other number."""
    from normx_track.probes.files import MinimalPair

    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        subject, attractor = rng.choice(NOUNS, 2, replace=False)
        plural = bool(rng.integers(2))
        sg, pl = VERBS[rng.integers(len(VERBS))]
        good, bad = (pl, sg) if plural else (sg, pl)
        adjective = rng.choice(ADJECTIVES)
        prefix = (f"the {adjective}{subject}{'s' if plural else ''} {rng.choice(PREPS)} "
                  f"the {rng.choice(ADJECTIVES)}{attractor}{'' if plural else 's'}")
        cue = (2 if adjective else 1,)  # the subject noun
        end = rng.choice(ENDINGS)
        pairs.append(MinimalPair(prefix, good, bad, cue, "agreement", f"generated:{i}",
                                 f"{prefix} {good} {end}", f"{prefix} {bad} {end}"))
    return pairs


def tokenizer_for(pairs):
    from tokenizers import BertWordPieceTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator([p.sentence_good for p in pairs] + [p.sentence_bad for p in pairs],
                           vocab_size=4096, min_frequency=1, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.post_processor = processors.BertProcessing(("[SEP]", wp.token_to_id("[SEP]")),
                                                  ("[CLS]", wp.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=wp, cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]")


def model_for(args, vocab: int):
    import torch
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=max(vocab, args.vocab), hidden_size=args.hidden,
                     num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                     intermediate_size=4 * args.hidden, max_position_embeddings=128)
    return BertForMaskedLM(cfg).eval()


def loop_pll(model, ids, words, mask_id):
    """The reference: one masked copy per forward pass."""
    import torch

    out = []
    with torch.no_grad():
        for sentence, word in zip(ids, words):
            total = 0.0
            for t, w in enumerate(word):
                if w is None:
                    continue
                copy = [mask_id if j >= t and word[j] == w else x for j, x in enumerate(sentence)]
                logits = model(input_ids=torch.tensor([copy])).logits[0, t]
                total += logits.log_softmax(-1)[sentence[t]].item()
            out.append(total)
    return np.array(out)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU
    time is the figure to read (one thread: it is the compute the call needed)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    args = parse(argv)
    import torch

    from normx_track.probes.masked_evidence import MaskedEvidenceProbe
    from normx_track.probes.pll import encode_sentences, pll_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = generate(args.pairs)
    tokenizer = tokenizer_for(pairs)
    model = model_for(args, len(tokenizer))
    texts = [p.sentence_good for p in pairs] + [p.sentence_bad for p in pairs]
    ids, words = encode_sentences(tokenizer, texts)
    n_copies = sum(sum(w is not None for w in ws) for ws in words)
    mask_id, pad = tokenizer.mask_token_id, tokenizer.pad_token_id
    print(f"{args.pairs} pairs, {len(texts)} sentences, {n_copies} masked copies; model "
          f"{args.layers} x {args.hidden}, vocab {model.config.vocab_size}, "
          f"{torch.get_num_threads()} thread(s)")

    pll_scores(model, ids[:64], words[:64], mask_id, pad, args.batch_size)  # warm-up
    batched, wall_b, cpu_b = timed(lambda: pll_scores(model, ids, words, mask_id, pad,
                                                      args.batch_size))
    k = min(args.loop_pairs, args.pairs)
    subset = list(range(k)) + list(range(args.pairs, args.pairs + k))
    looped, wall_l, cpu_l = timed(lambda: loop_pll(model, [ids[i] for i in subset],
                                                   [words[i] for i in subset], mask_id))
    wall_l, cpu_l = wall_l * args.pairs / k, cpu_l * args.pairs / k
    diff = float(np.abs(looped - batched[subset]).max())
    probe = MaskedEvidenceProbe(pairs, tokenizer, pll_batch_size=args.batch_size)
    row, wall_p, cpu_p = timed(lambda: probe(model))

    scaled = "" if k == args.pairs else f"  (timed on {k} pairs, scaled)"
    print(f"{'PLL-word-l2r of ' + str(args.pairs) + ' pairs':<36}{'CPU s':>9}{'wall s':>9}")
    print(f"{'  batched (pll_scores)':<36}{cpu_b:>9.2f}{wall_b:>9.2f}")
    print(f"{'  one copy per forward pass':<36}{cpu_l:>9.2f}{wall_l:>9.2f}{scaled}")
    print(f"{'  speed-up':<36}{cpu_l / cpu_b:>8.1f}x{wall_l / wall_b:>8.1f}x")
    print(f"{'  max |batched - loop| (nats)':<36}{diff:>9.1e}")
    print(f"{'whole MaskedEvidenceProbe':<36}{cpu_p:>9.2f}{wall_p:>9.2f}"
          f"  (pair acc {row['normx/pair_accuracy']:.3f}, BLiMP acc "
          f"{row['normx/blimp_accuracy']:.3f}, random weights)")
    emit(f"PLL batched, {args.pairs} pairs (CPU)", cpu_b, "s", "<= 30", cpu_b <= 30)
    emit("PLL speed-up over the one-copy loop", cpu_l / cpu_b, "x", ">= 5", cpu_l / cpu_b >= 5)
    emit("PLL batched vs loop max diff", diff, "nats", "<= 1e-4", diff <= 1e-4)
    emit(f"MaskedEvidenceProbe, {args.pairs} pairs (CPU)", cpu_p, "s", "(info)", None)


if __name__ == "__main__":
    main()
