"""Explain one next-token prediction of a checkpoint with NormXLogit and LogAt.

    python -m normx_track.attribution.explain CHECKPOINT "some text" [--target WORD] [--foil WORD]
                                  [--layer N] [--tokenizer PATH] [--html out.html]
                                  [--layerwise alti,rollout]

CHECKPOINT is either a Lightning ``.ckpt`` written by `normx_track.training.model.LanguageModel`
(the HF model is rebuilt from its ``hf_config`` hyper-parameters and the ``model.``
entries of its state dict; loaded with ``weights_only=True``), or a Hugging Face model
directory (``from_pretrained``).

The tokenizer: ``--tokenizer`` (a tokenizer directory, a ``tokenizer.json`` file or a hub
name); else, for an HF directory, the directory itself; else, for a ``.ckpt``, the first
of ``<ckpt dir>/``, ``<ckpt dir>/tokenizer/``, ``<run dir>/``, ``<run dir>/tokenizer/``
(run dir = the ``.ckpt``'s parent's parent, e.g. ``outputs/run`` for
``outputs/run/checkpoints/last.ckpt``) holding a ``tokenizer.json``, then the tokenizer of the data
cache that the run's record names (``normx/meta.json`` "data_dir"), so checkpoints of our
own runs need no ``--tokenizer``.

The explained prediction is the model's next token after the whole text (its argmax), or
``--target WORD`` (scored on the first token of " " + WORD, like the evidence probes);
``--foil WORD`` makes the scores contrastive (target minus foil); ``--layer N`` reads the
hidden states after layer N (0 = embeddings) through the final norm and the head (logit
lens) instead of the last layer. A masked LM (BERT/RoBERTa) explains its prediction at the
mask token the text holds once ("The keys to the cabinet <mask> here"), the text with its
special tokens; every other position is attributed. It prints a table of tokens with the
norm factor (||E[x_i]||), LogAt and NormXLogit, and with ``--html`` writes a
self-contained coloured view. Errors (unreadable or corrupt checkpoint, missing tokenizer, bad layer) print one
line naming the problem and exit with status 2.

``--layerwise alti,rollout`` (any of attention, rollout, value_zeroing, alti, globenc;
`normx_track.attribution.mixing`) adds the sentence layer by layer: for each method, row t
of each layer's context-mixing matrix (how much the explained position draws on each
input position after layer l, l = 1..L), beside NormXLogit through the logit lens at every
layer (0 = embeddings .. L): printed as a block per method, and in the HTML view as heat
rows per layer and a table of the numbers. ``explain(..., layerwise=("alti",))`` gives the
same rows in `Explanation.mixing` and `Explanation.normxlogit_by_layer`. A method the
architecture cannot be read by is one line and status 2, like the errors above.
"""
from __future__ import annotations

import argparse
import html
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from normx_track.keys import CONTEXT_MIXING_METHODS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m normx_track.attribution.explain",
        description="Explain a model's next-token prediction with NormXLogit and LogAt.")
    p.add_argument("checkpoint", help="a LanguageModel .ckpt or a Hugging Face model directory")
    p.add_argument("text", help="the text whose next token is explained (a masked LM: the "
                                "text with the tokenizer's mask token in it, once)")
    p.add_argument("--target", help="explain this word (its first token) instead of the argmax")
    p.add_argument("--foil", help="contrast with this word: scores are target - foil")
    p.add_argument("--layer", type=int, help="layer to read (0 = embeddings; default: last)")
    p.add_argument("--tokenizer", help="tokenizer directory, tokenizer.json or hub name")
    p.add_argument("--norm-factor", default="word_embedding",
                   choices=("word_embedding", "embedding_output"))
    p.add_argument("--html", type=Path, help="write a coloured HTML view here")
    p.add_argument("--layerwise", metavar="METHODS",
                   help="context-mixing methods shown layer by layer beside NormXLogit, "
                        f"comma-separated: {','.join(CONTEXT_MIXING_METHODS)}")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    _parser().parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from normx_track.attribution.masked import is_masked_lm  # noqa: E402
from normx_track.attribution.mixing import METHODS as MIXING_METHODS  # noqa: E402
from normx_track.attribution.mixing import UnsupportedModel, context_mixing  # noqa: E402
from normx_track.attribution.normxlogit import attribute  # noqa: E402
from normx_track.errors import InputError  # noqa: E402
from normx_track.modeling import context_size, encoder_context_size, num_layers  # noqa: E402
from normx_track.record import checkpoint_loader as checkpoints  # noqa: E402
from normx_track.record.store import read_json, vocab_hash  # noqa: E402
from normx_track.text import continuation_tokens  # noqa: E402

__all__ = ["ExplainError", "Explanation", "check_run_tokenizer", "check_vocabulary", "explain",
           "format_table", "layerwise_names", "load_tokenizer", "main", "recorded_tokenizer",
           "render_html", "tokenizer_from"]


class ExplainError(InputError):
    """A user-facing failure: the CLI prints it and exits with status 2."""


# ----------------------------------------------------------------------------- loading
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def tokenizer_from(location: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if location.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(location))
    if (location / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(location)
    return PreTrainedTokenizerFast(tokenizer_file=str(location / "tokenizer.json"))


def recorded_tokenizer(run_dir: Path) -> Path:
    """Our training runs name their data cache (with its tokenizer) in the record."""
    meta = read_json(run_dir, "meta.json") or {}
    return Path(meta.get("data_dir", run_dir / "no_record")) / "tokenizer"


def check_run_tokenizer(checkpoint: str | Path, tokenizer) -> None:
    """A tokenizer given for a checkpoint of one of our runs must be the run's own: one of
    another corpus, even of the same size, maps ids to other words. The run's meta.json
    records its vocabulary's hash."""
    run_dir = Path(checkpoint).parent.parent
    recorded = (read_json(run_dir, "meta.json") or {}).get("vocab_hash")
    if Path(checkpoint).suffix != ".ckpt" or not recorded:
        return
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if vocab_hash([by_id.get(i, "") for i in range(len(tokenizer))]) != recorded:
        raise ExplainError(f"--tokenizer: not the tokenizer of the run {run_dir} (its "
                           "vocabulary differs from the one normx/meta.json records); leave "
                           "--tokenizer out to use the run's own")


def load_tokenizer(checkpoint: str | Path, tokenizer: str | Path | None = None):
    """The tokenizer for ``checkpoint`` (see the module docstring for the search order)."""
    from transformers import AutoTokenizer

    checkpoint = Path(checkpoint)
    try:
        if tokenizer is not None:
            where = Path(tokenizer)
            if where.exists():
                return tokenizer_from(where)
            return AutoTokenizer.from_pretrained(str(tokenizer))  # a hub name (cache/offline)
        if checkpoint.is_dir():
            return AutoTokenizer.from_pretrained(checkpoint)
        run_dir = checkpoint.parent.parent
        for where in (checkpoint.parent, checkpoint.parent / "tokenizer", run_dir,
                      run_dir / "tokenizer", recorded_tokenizer(run_dir)):
            if (where / "tokenizer.json").exists():
                return tokenizer_from(where)
    except Exception as err:  # noqa: BLE001 - tokenizer loaders raise many kinds
        source = tokenizer if tokenizer is not None else checkpoint
        raise ExplainError(f"cannot load the tokenizer from {source} ({checkpoints.first_line(err)})"
                           ) from None
    raise ExplainError(f"{checkpoint}: no tokenizer.json next to the checkpoint or in its run "
                       f"directory {run_dir}; pass --tokenizer PATH")


# --------------------------------------------------------------------------- explaining
@dataclass
class Explanation:
    text: str
    token_ids: list[int]
    tokens: list[str]  # each token decoded on its own
    norm: np.ndarray  # [T] the norm factor
    logat: np.ndarray  # [T]
    normxlogit: np.ndarray  # [T]
    position: int  # explained position (the last token)
    target_id: int
    target: str
    target_prob: float
    predicted_id: int  # the model's argmax at the position
    predicted: str
    predicted_prob: float
    top: list[tuple[str, float]]  # top-5 predictions (token, probability)
    foil_id: int | None = None
    foil: str | None = None
    foil_prob: float | None = None
    layer: int | None = None  # None: last layer
    n_layers: int = 0
    note: str = ""  # how a multi-token target (or a shared start with the foil) was read
    masked: bool = False  # a masked LM's prediction at the mask (position), not after it
    # Layer by layer (``layerwise``): per context-mixing method [L, T], row ``position`` of
    # each layer's matrix (index l-1: after layer l); NormXLogit per layer [L+1, T] (index l:
    # the hidden state after layer l, 0 = embeddings), None when no method was asked for.
    mixing: dict[str, np.ndarray] = field(default_factory=dict)
    normxlogit_by_layer: np.ndarray | None = None


def _decode(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def check_vocabulary(tokenizer, vocab_rows: int) -> None:
    """A tokenizer from another run gives ids that mean other words: refuse it. Models may
    pad their embedding to a round number of rows, so a few spare rows are fine."""
    size = len(tokenizer)
    if size > vocab_rows or vocab_rows - size > 128:
        raise ExplainError(f"the tokenizer has {size} tokens but the model has {vocab_rows} "
                           "embeddings: not this model's tokenizer (--tokenizer)")


def _word(flag: str, word: str | None) -> str | None:
    if word is None:
        return None
    if not word.strip():
        raise ExplainError(f"{flag} is empty: give a word, or leave {flag} out")
    return word.strip()


def _targets(tokenizer, text: str, ids: list[int], target: str | None, foil: str | None):
    """(input ids, target id, foil id, note). A target of several tokens is explained on
    its first (and says so); a target and foil that share their first tokens are explained
    where their tokenisations first differ, the shared tokens appended to the text
    (DESIGN.md)."""
    target, foil = _word("--target", target), _word("--foil", foil)
    if target is None:  # the model's argmax, against the foil's first token if given
        foil_id = None if foil is None else continuation_tokens(tokenizer, foil, text)[0]
        return ids, None, foil_id, ""
    good = continuation_tokens(tokenizer, target, text)
    if foil is None:
        note = (f"{target!r} is {len(good)} tokens; explaining its first, "
                f"{tokenizer.decode(good[:1])!r}") if len(good) > 1 else ""
        return ids, good[0], None, note
    bad = continuation_tokens(tokenizer, foil, text)
    n = next((i for i, (g, b) in enumerate(zip(good, bad)) if g != b), None)
    if n is None:
        raise ExplainError(f"--target {target!r} and --foil {foil!r} tokenise alike as far as "
                           "the shorter goes: no token tells them apart")
    note = (f"target and foil share their first {n} token(s) "
            f"{tokenizer.decode(good[:n])!r}; explained after them, where they differ"
            if n else "")
    return ids + good[:n], good[n], bad[n], note


def _masked_targets(tokenizer, text: str, ids: list[int], target: str | None,
                    foil: str | None):
    """A masked LM's (input ids, target id, foil id, note): the text (with its special
    tokens) holds the mask once; a word is read as its first token after the text before
    the mask (one mask holds one token)."""
    target, foil = _word("--target", target), _word("--foil", foil)
    mask = tokenizer.mask_token_id
    if mask is None or ids.count(mask) != 1:
        raise ExplainError(f"a masked LM explains the prediction at one mask: put "
                           f"{tokenizer.mask_token or 'the mask token'!r} in the text once")
    context = text[: text.index(tokenizer.mask_token)].strip()
    first = {w: continuation_tokens(tokenizer, w, context) for w in (target, foil) if w}
    if target and foil and first[target][0] == first[foil][0]:
        raise ExplainError(f"--target {target!r} and --foil {foil!r} begin with the same "
                           "token: one mask cannot tell them apart")
    note = "; ".join(f"{w!r} is {len(t)} tokens; explaining its first at the mask"
                     for w, t in first.items() if len(t) > 1)
    target_id, foil_id = (first[w][0] if w else None for w in (target, foil))
    return ids, target_id, foil_id, note


def layerwise_names(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """Context-mixing method names from ``"alti,rollout"`` or a sequence; an unknown one is
    an `ExplainError` naming the choices."""
    if methods is None:
        return ()
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in MIXING_METHODS]
    if unknown:
        raise ExplainError(f"--layerwise: unknown method(s) {unknown}; the choices are "
                           f"{', '.join(MIXING_METHODS)}")
    return tuple(dict.fromkeys(names))


def explain(model: torch.nn.Module, tokenizer, text: str, target: str | None = None,
            foil: str | None = None, layer: int | None = None,
            norm_factor: str = "word_embedding",
            layerwise: str | Sequence[str] | None = ()) -> Explanation:
    """NormXLogit / LogAt of every token of ``text`` for the prediction after it (a causal
    LM), or at the mask token in it (a masked LM, the text with its special tokens).
    ``layerwise``: context-mixing methods (`mixing.METHODS`) whose row at the explained
    position is given for every layer, with NormXLogit at every layer beside them."""
    methods = layerwise_names(layerwise)
    masked = is_masked_lm(model)
    ids = tokenizer(text, add_special_tokens=masked)["input_ids"]
    if not ids:
        raise ExplainError("the text has no tokens")
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    check_vocabulary(tokenizer, vocab_rows)
    if max(ids) >= vocab_rows:
        raise ExplainError(f"the tokenizer gives token id {max(ids)} but the model has only "
                           f"{vocab_rows} embeddings: wrong tokenizer?")
    limit = encoder_context_size(model) if masked else context_size(model)
    if limit is not None and len(ids) > limit:
        raise ExplainError(f"the text is {len(ids)} tokens; the model takes at most {limit}")
    ids, target_id, foil_id, note = (_masked_targets if masked else _targets)(
        tokenizer, text, ids, target, foil)
    position = ids.index(tokenizer.mask_token_id) if masked else None
    if limit is not None and len(ids) > limit:
        raise ExplainError(f"the text and the tokens target and foil share take {len(ids)} "
                           f"positions; the model takes at most {limit}")
    for word, tid in ((target, target_id), (foil, foil_id)):
        if tid is not None and tid >= vocab_rows:
            raise ExplainError(f"{word!r} maps to token id {tid}, outside the model's vocabulary")
    layers = "last" if layer is None else [layer]
    try:
        a = attribute(model, torch.tensor([ids]), target=target_id, foil=foil_id, layers=layers,
                      norm_factor=norm_factor, position=position)
    except ValueError as err:
        raise ExplainError(checkpoints.first_line(err)) from None
    probs = a.logits[0].softmax(-1)
    top_p, top_i = probs.topk(min(5, probs.numel()))
    predicted_id = int(top_i[0])
    tid = int(a.target[0])
    lat = a.logat[0] if layer is None else a.logat_layers[0, 0]
    nxl = a.normxlogit[0] if layer is None else a.normxlogit_layers[0, 0]
    n_layers = num_layers(model)
    mixing, by_layer = {}, None
    if methods:
        explained = int(a.position[0])
        try:
            mixing = {m: context_mixing(model, torch.tensor(ids), m)[:, explained].cpu().numpy()
                      for m in methods}
        except UnsupportedModel as err:
            raise ExplainError(f"--layerwise: {checkpoints.first_line(err)}") from None
        every = attribute(model, torch.tensor([ids]), target=tid, foil=foil_id, layers="all",
                          norm_factor=norm_factor, position=position)
        by_layer = every.normxlogit_layers[:, 0].numpy()
    return Explanation(
        text=text, token_ids=list(ids), tokens=[_decode(tokenizer, i) for i in ids],
        norm=a.norm[0].numpy(), logat=lat.numpy(), normxlogit=nxl.numpy(),
        position=int(a.position[0]), target_id=tid, target=_decode(tokenizer, tid),
        target_prob=float(probs[tid]), predicted_id=predicted_id,
        predicted=_decode(tokenizer, predicted_id), predicted_prob=float(top_p[0]),
        top=[(_decode(tokenizer, i), float(p)) for p, i in zip(top_p.tolist(), top_i.tolist())],
        foil_id=foil_id, foil=None if foil_id is None else _decode(tokenizer, foil_id),
        foil_prob=None if foil_id is None else float(probs[foil_id]),
        layer=None if layer is None else int(a.layers[0]), n_layers=int(n_layers), note=note,
        masked=masked, mixing=mixing, normxlogit_by_layer=by_layer)


# ---------------------------------------------------------------------------- rendering
def _what(e: Explanation) -> str:
    what = f"{e.target!r} (p={e.target_prob:.4f})"
    if e.foil is not None:
        what += f" vs foil {e.foil!r} (p={e.foil_prob:.4f}); scores are target - foil"
    layer = f"layer {e.layer} of {e.n_layers} (logit lens)" if e.layer is not None \
        else f"last layer ({e.n_layers})"
    note = f" ({e.note})" if e.note else ""
    where = f"at the mask, position {e.position}" if e.masked else f"after position {e.position}"
    return f"explaining {what} {where}, {layer}{note}"


def format_table(e: Explanation) -> str:
    """A plain-text table: position, token, norm, LogAt, NormXLogit and a bar."""
    width = max(8, *(len(repr(t)) for t in e.tokens))
    peak = np.nanmax(np.abs(e.normxlogit)) if np.isfinite(e.normxlogit).any() else 0.0
    lines = [_what(e),
             f"model's prediction: {e.predicted!r} (p={e.predicted_prob:.4f}); top: "
             + ", ".join(f"{t!r} {p:.3f}" for t, p in e.top),
             "",
             f"{'pos':>4}  {'token':<{width}}  {'norm':>9}  {'LogAt':>10}  {'NormXLogit':>11}"]
    for i, token in enumerate(e.tokens):
        value = e.normxlogit[i]
        bar = ""
        if peak > 0 and math.isfinite(value):
            bar = ("+" if value >= 0 else "-") * max(1, round(12 * abs(value) / peak))
        lines.append(f"{i:>4}  {repr(token):<{width}}  {e.norm[i]:>9.4f}  {e.logat[i]:>10.4f}  "
                     f"{value:>11.4f}  {bar}")
    lines += _layerwise_table(e)
    return "\n".join(lines)


def _layerwise_rows(e: Explanation) -> list[tuple[str, int, np.ndarray]]:
    """(method, layer, [T] scores) for every layer-wise row: NormXLogit per layer (0 = the
    embeddings .. L), then each context-mixing method's row t per layer (1 .. L)."""
    rows: list[tuple[str, int, np.ndarray]] = []
    if e.normxlogit_by_layer is not None:
        rows += [("NormXLogit", l, v) for l, v in enumerate(e.normxlogit_by_layer)]
    for method, stack in e.mixing.items():
        rows += [(method, l + 1, v) for l, v in enumerate(stack)]
    return rows


def _layerwise_table(e: Explanation) -> list[str]:
    rows = _layerwise_rows(e)
    if not rows:
        return []
    where = "the mask" if e.masked else "the last position"
    lines = ["", f"layer by layer: NormXLogit (logit lens) and row {e.position} ({where}) of "
             "each context-mixing matrix, by input position",
             f"{'method':<14}{'layer':>5}  " + " ".join(f"{i:>8}" for i in range(len(e.tokens)))]
    for method, layer, values in rows:
        lines.append(f"{method:<14}{layer:>5}  " + " ".join(f"{v:>8.4f}" for v in values))
    return lines


def _colour(value: float, peak: float) -> str:
    if not math.isfinite(value) or peak <= 0:
        return "transparent"
    alpha = min(1.0, abs(value) / peak) * 0.85
    rgb = "214,39,40" if value >= 0 else "31,119,180"  # red: supports, blue: against
    return f"rgba({rgb},{alpha:.3f})"


def render_html(e: Explanation, title: str = "NormXLogit explanation") -> str:
    """A self-contained HTML page: one row of token spans per score, background by score
    (red positive, blue negative, opacity by |score| / max |score| of the row)."""
    rows = []
    for name, values in (("NormXLogit", e.normxlogit), ("LogAt", e.logat), ("norm", e.norm)):
        finite = values[np.isfinite(values)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        spans = []
        for i, token in enumerate(e.tokens):
            tip = (f"position {i}, id {e.token_ids[i]}: NormXLogit {e.normxlogit[i]:.4f}, "
                   f"LogAt {e.logat[i]:.4f}, norm {e.norm[i]:.4f}")
            spans.append(f'<span class="tok" style="background:{_colour(values[i], peak)}" '
                         f'title="{html.escape(tip)}">{html.escape(token)}</span>')
        spans.append(f'<span class="pred" title="p={e.target_prob:.4f}">'
                     f'{html.escape(e.target)}</span>')
        rows.append(f'<div class="row"><div class="name">{name}</div>'
                    f'<div class="text">{"".join(spans)}</div></div>')
    table = "".join(
        f"<tr><td>{i}</td><td><code>{html.escape(repr(t))}</code></td><td>{e.norm[i]:.4f}</td>"
        f"<td>{e.logat[i]:.4f}</td><td>{e.normxlogit[i]:.4f}</td></tr>"
        for i, t in enumerate(e.tokens))
    top = ", ".join(f"<code>{html.escape(repr(t))}</code> {p:.3f}" for t, p in e.top)
    layerwise = _layerwise_html(e)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.row {{ display: flex; align-items: baseline; margin: .6em 0; }}
.name {{ width: 7em; font-weight: bold; }}
.text {{ font-family: monospace; font-size: 1.1em; white-space: pre-wrap; }}
.tok {{ padding: 2px 0; border-radius: 3px; }}
.pred {{ border: 1px dashed #444; padding: 1px 3px; margin-left: 2px; }}
table {{ border-collapse: collapse; margin-top: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(_what(e))}</p>
<p>Model's prediction: <code>{html.escape(repr(e.predicted))}</code>
(p={e.predicted_prob:.4f}); top: {top}</p>
<p>Red: the position's own representation supports the explained token; blue: against.</p>
{"".join(rows)}
<table><tr><th>pos</th><th>token</th><th>norm</th><th>LogAt</th><th>NormXLogit</th></tr>
{table}</table>
{layerwise}</body></html>
"""


def _layerwise_html(e: Explanation) -> str:
    """Heat rows per layer (each row coloured by its own max |score|) and the numbers:
    NormXLogit through the logit lens, then each context-mixing method's row t."""
    rows = _layerwise_rows(e)
    if not rows:
        return ""
    heat, cells = [], []
    for method, layer, values in rows:
        finite = values[np.isfinite(values)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        spans = "".join(
            f'<span class="tok" style="background:{_colour(values[i], peak)}" '
            f'title="{html.escape(f"position {i}: {method} layer {layer} {values[i]:.4f}")}">'
            f'{html.escape(token)}</span>' for i, token in enumerate(e.tokens))
        heat.append(f'<div class="row layerwise" data-method="{html.escape(method)}" '
                    f'data-layer="{layer}"><div class="name">{html.escape(method)} '
                    f'{layer}</div><div class="text">{spans}</div></div>')
        cells.append(f'<tr class="layerwise" data-method="{html.escape(method)}" '
                     f'data-layer="{layer}"><td>{html.escape(method)}</td><td>{layer}</td>'
                     + "".join(f"<td>{v:.4f}</td>" for v in values) + "</tr>")
    where = "the mask" if e.masked else "the last position"
    header = "".join(f"<th>{i} <code>{html.escape(repr(t))}</code></th>"
                     for i, t in enumerate(e.tokens))
    return f"""<h2>Layer by layer</h2>
<p>NormXLogit through the logit lens at each layer (0 = embeddings), and for each
context-mixing method row {e.position} ({html.escape(where)}) of layer l's matrix: how much
the explained position draws on each input position after layer l. Each row is coloured by
its own largest value.</p>
{"".join(heat)}
<table class="layerwise"><tr><th>method</th><th>layer</th>{header}</tr>
{"".join(cells)}</table>
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_transformers()
    try:
        methods = layerwise_names(args.layerwise)  # before loading: a typo fails fast
        model = checkpoints.load_model(args.checkpoint).model
        tokenizer = load_tokenizer(args.checkpoint, args.tokenizer)
        if args.tokenizer is not None:
            check_run_tokenizer(args.checkpoint, tokenizer)
        e = explain(model, tokenizer, args.text, args.target, args.foil, args.layer,
                    args.norm_factor, methods)
        print(f"checkpoint: {args.checkpoint}")
        print(format_table(e))
        if args.html is not None:
            try:
                args.html.parent.mkdir(parents=True, exist_ok=True)
                args.html.write_text(render_html(e, f"NormXLogit: {args.checkpoint}"),
                                     encoding="utf-8")
            except OSError as err:
                raise ExplainError(f"{args.html}: cannot write the HTML view "
                                   f"({err.strerror or err})") from None
            print(f"HTML view: {args.html}")
    except InputError as err:  # ExplainError, CheckpointError: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# The names export.py imports (private before): kept until it imports the public ones.
_tokenizer_from, _recorded_tokenizer = tokenizer_from, recorded_tokenizer
_check_vocabulary = check_vocabulary


if __name__ == "__main__":
    sys.exit(main())
