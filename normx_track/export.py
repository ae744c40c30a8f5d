"""Hand a run's model to the ecosystem: a Lightning checkpoint of ours becomes a Hugging
Face folder (``save_pretrained`` model + tokenizer), which lm-eval, minicons, TransformerLens
and inseq read as they read any hub model (``AutoModelForCausalLM``; a masked LM's,
``AutoModelForMaskedLM``).

    python -m normx_track.export outputs/run/checkpoints/last.ckpt exported/run
    lm_eval --model hf --model_args pretrained=exported/run --tasks blimp --device cpu

The tokenizer is found as `normx_track.attribution.explain` finds it (next to the
checkpoint, in its run folder, or the data cache the run's record names; ``--tokenizer``
overrides). Errors print one line naming the file, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normx_track.errors import InputError


def export(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write ``out_dir`` (model weights, config, generation config, tokenizer files)."""
    from normx_track.attribution.explain import _check_vocabulary, load_tokenizer
    from normx_track.record.checkpoint_loader import load_lightning

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: the folder exists and is not empty; export into a new one")
    loaded = load_lightning(checkpoint)
    tok = load_tokenizer(checkpoint, tokenizer)
    _check_vocabulary(tok, loaded.model.get_input_embeddings().weight.shape[0])
    loaded.model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normx_track.export",
                                     description="Write a Hugging Face model folder from a "
                                                 "normx-track Lightning checkpoint.")
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("out_dir", help="the new folder (AutoModelForCausalLM, or for a masked LM "
                             "AutoModelForMaskedLM, .from_pretrained reads it)")
    parser.add_argument("--tokenizer", help="a tokenizer directory or tokenizer.json (default: the run's)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.tokenizer)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
