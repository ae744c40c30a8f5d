"""Tokenizers: a pretrained one by name or path when it can be loaded, else a byte-level BPE
trained with HF `tokenizers` on the training text and cached beside the data."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, ByteLevelBPETokenizer, processors
from normx_track.text import surface_forms  # noqa: F401 - re-exported
from transformers import AutoTokenizer, PreTrainedTokenizerFast

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"
# Masked LMs' special tokens, in id order (RoBERTa's <s>=0 <pad>=1 </s>=2, BERT's [PAD]=0),
# and which is which. Documents end with the separator (the stream's EOS); a block is
# wrapped in cls ... sep (datamodule), and tokenizer(text) adds them (PLL). The mask takes
# the space before it (lstrip, as roberta-base's): "the <mask> is" has no stray "Ġ".
MASKED_SPECIALS = {
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
             dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                  mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")),
    "roberta": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                dict(pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>",
                     mask_token="<mask>", bos_token="<s>", eos_token="</s>")),
}


def train_bpe(texts: Iterable[str], vocab_size: int, directory: str | Path,
              specials: str | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2's scheme) and save it as an HF tokenizer directory.
    ``specials``: None (a causal LM's end-of-text token) or "bert" / "roberta" (that masked
    LM's [CLS] [SEP] [PAD] [MASK] [UNK] or <s> </s> <pad> <mask> <unk>)."""
    directory = Path(directory)
    tokens, names = ([EOS], dict(eos_token=EOS, bos_token=EOS, unk_token=EOS)) \
        if specials is None else MASKED_SPECIALS[specials]
    if specials is not None:
        tokens = [AddedToken(t, lstrip=True, special=True, normalized=False)
                  if t == names["mask_token"] else t for t in tokens]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_batched(texts), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=tokens, show_progress=False)
    if specials is not None:  # tokenizer(text) gives cls ... sep, as the model trains
        cls, sep = names["cls_token"], names["sep_token"]
        make = processors.BertProcessing if specials == "bert" else processors.RobertaProcessing
        bpe.post_processor = make((sep, bpe.token_to_id(sep)), (cls, bpe.token_to_id(cls)))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **names)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_pretrained(name: str) -> PreTrainedTokenizerFast | None:
    """A pretrained tokenizer from a local directory or the hub cache; None if unavailable."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        log.warning("tokenizer %r could not be loaded (%s); a BPE will be trained instead",
                    name, str(err).splitlines()[0])
        return None
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS
    return tokenizer


def get_tokenizer(name: str, texts: Iterable[str], vocab_size: int,
                  directory: str | Path, specials: str | None = None) -> PreTrainedTokenizerFast:
    """`name` loaded if possible; else (or for `name == "bpe"`) a BPE trained on `texts`
    (with the ``specials`` of `train_bpe`) and saved in `directory`, reused from there when
    already trained."""
    if name != "bpe":
        tokenizer = load_pretrained(name)
        if tokenizer is not None:
            return tokenizer
    if (Path(directory) / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(directory)
    return train_bpe(texts, vocab_size, directory, specials)
