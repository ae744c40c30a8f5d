"""The gold command: gold statistics of a tokenizer over a corpus, as a run writes them.

    python -m normx_track.gold TOKENIZER CORPUS... --out gold.npz [--max-tokens N]
        [--window 5] [--workers K] [--chunk-tokens N] [--seed 0] [--no-shuffle-correction]
        [--text-field text] [--split train] [--tmp-dir DIR] [--quiet]

TOKENIZER is a hub name or a folder (``AutoTokenizer``). CORPUS: text files, folders
written by ``Dataset.save_to_disk``, or ``hf:NAME[:CONFIG]:SPLIT[:TEXT_FIELD]`` (streamed;
see `normx_track.gold.texts`). Each document is tokenised without special tokens and
followed by the tokenizer's EOS, as a training run's stream is. Writes ``gold.npz``
(`GoldStatistics`, with its provenance: `read_gold_provenance`) and ``vocab.json`` (token
strings by id) beside it. Counting is `normx_track.gold.corpus` (memory bounded by
``--chunk-tokens``, ``--workers`` processes; the result is ``compute_gold``'s).

Bad input (unknown tokenizer, unreadable or empty corpus, missing field, bad spec) prints
one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from normx_track.errors import InputError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def default_workers() -> int:
    """The cores this process may use, at most 8 (each worker holds a chunk)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m normx_track.gold",
        description="Gold statistics (counts, self-information, information gain and its "
                    "shuffle-corrected form) of a tokenizer over a corpus, written as a "
                    "run's gold.npz with vocab.json beside it.")
    p.add_argument("tokenizer", help="HF tokenizer name or folder (AutoTokenizer)")
    p.add_argument("corpus", nargs="+",
                   help="text files (.txt one document a line, .jsonl/.json/.parquet/.csv), "
                        "Dataset.save_to_disk folders, or hf:NAME[:CONFIG]:SPLIT[:TEXT_FIELD]")
    p.add_argument("--out", required=True, help="the gold.npz to write (vocab.json beside it)")
    p.add_argument("--max-tokens", type=_positive, default=None,
                   help="the first N tokens of the stream only (default: all)")
    p.add_argument("--window", type=_positive, default=5, help="co-occurrence window +-W")
    p.add_argument("--workers", type=_positive, default=None,
                   help=f"processes counting pairs (default: the cores, at most 8; here "
                        f"{default_workers()})")
    p.add_argument("--chunk-tokens", type=_positive, default=None,
                   help="tokens a worker counts at a time: memory is about 100 bytes a "
                        "token of it per worker (default 4194304)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle correction")
    p.add_argument("--no-shuffle-correction", dest="shuffle_correction",
                   action="store_false", help="skip information_gain_corrected")
    p.add_argument("--text-field", default="text",
                   help="the column holding the text (files and folders; an hf: spec may "
                        "name its own)")
    p.add_argument("--split", default="train", help="split of a DatasetDict folder")
    p.add_argument("--tmp-dir", default=None,
                   help="where the token file and pair spills go (default: the system's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


class TokenizerError(InputError):
    """The tokenizer cannot be loaded."""


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if (Path(name).is_absolute() or name.startswith(".")) and not Path(name).exists():
        raise TokenizerError(f"tokenizer {name}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # OSError, ValueError, HF validation errors...: one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TokenizerError(f"tokenizer {name!r} could not be loaded ({reason})") from None


def run(args: argparse.Namespace) -> None:
    from normx_track.gold import texts
    from normx_track.gold.corpus import DEFAULT_CHUNK_TOKENS, corpus_gold, EmptyStreamError
    from normx_track.record.vocabulary import token_strings

    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out}: a folder; name the .npz file to write")
    texts.check_specs(args.corpus)
    tokenizer = load_tokenizer(args.tokenizer)
    vocab = token_strings(tokenizer)
    eos = tokenizer.eos_token_id
    stream = texts.token_documents(
        tokenizer, texts.iter_texts(args.corpus, args.text_field, args.split),
        eos)
    try:
        gold = corpus_gold(stream, len(vocab), window=args.window,
                           shuffle_correction=args.shuffle_correction, seed=args.seed,
                           max_tokens=args.max_tokens,
                           chunk_tokens=args.chunk_tokens or DEFAULT_CHUNK_TOKENS,
                           workers=args.workers or default_workers(),
                           progress=not args.quiet, tmp_dir=args.tmp_dir)
    except EmptyStreamError:
        raise texts.CorpusError(f"{', '.join(args.corpus)}: no text to count (no "
                                f"non-empty document with field {args.text_field!r})"
                                ) from None
    write(gold, vocab, out, args, eos)
    if not args.quiet:
        print(f"{out}: {gold.n_tokens} tokens, {gold.provenance['n_documents']} documents, "
              f"{int((gold.counts > 0).sum())} of {len(vocab)} token types seen",
              file=sys.stderr)


def write(gold, vocab: list[str], out: Path, args: argparse.Namespace, eos) -> None:
    from normx_track.version import __version__
    from normx_track.record.atomic import atomic_write_json
    from normx_track.record.store import vocab_hash

    gold.provenance = {
        "tokenizer": args.tokenizer, "vocab_hash": vocab_hash(vocab), "vocab_size": len(vocab),
        "corpus": list(args.corpus), "text_field": args.text_field,
        "n_tokens": int(gold.n_tokens), "n_documents": int(gold.provenance["n_documents"]),
        "max_tokens": args.max_tokens, "window": args.window, "eos": eos,
        "shuffle_correction": bool(args.shuffle_correction), "seed": args.seed,
        "normx_track_version": __version__}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        gold.save(out)
        atomic_write_json(out.parent / "vocab.json", vocab)
    except OSError as err:
        raise InputError(f"--out {out}: cannot write ({err.strerror or err})") from None


if __name__ == "__main__":
    sys.exit(main())
