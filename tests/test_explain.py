"""`python -m normx_track.attribution.explain` on a real Lightning checkpoint of our LanguageModel."""
from __future__ import annotations

import html
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from conftest import ROOT, subprocess_env
from normx_track.attribution.normxlogit import attribute
from normx_track.training.config import ModelConfig, OptimConfig
from normx_track.training.data.tokenizer import train_bpe
from normx_track.record.checkpoint_loader import load_model as load_checkpoint
from normx_track.attribution.explain import explain, main, render_html


def load_model(path):
    return load_checkpoint(path).model
from normx_track.training.model import LanguageModel

hf_logging.set_verbosity_error()
WORDS = "the keys to cabinet are is dogs near run runs cat cats sleep on mat red".split()
TEXT = "the keys to the cabinet"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """outputs/run/{checkpoints/last.ckpt, tokenizer/}: one real optimisation step."""
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=10)) for _ in range(300)]
    tok = train_bpe(texts, 300, run / "tokenizer")
    torch.manual_seed(0)
    module = LanguageModel.from_configs(
        ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32), OptimConfig(warmup_steps=1),
        vocab_size=len(tok), eos_token_id=tok.eos_token_id, max_steps=1)
    stream = sum(tok(texts[:20], add_special_tokens=False)["input_ids"], [])
    batches = [{"input_ids": torch.tensor(stream[i: i + 16])} for i in range(0, 64, 16)]
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=run)
    before = module.model.transformer.wte.weight.detach().clone()
    trainer.fit(module, DataLoader(batches, batch_size=2))
    assert trainer.global_step == 1
    assert not torch.equal(before, module.model.transformer.wte.weight)  # really trained
    (run / "checkpoints").mkdir()
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    return run


def cli(*args, cwd=None, cache=None):
    return subprocess.run([sys.executable, "-m", "normx_track.attribution.explain", *map(str, args)],
                          cwd=cwd or ROOT, env=subprocess_env(cache or ROOT / ".cache"),
                          capture_output=True, text=True, timeout=120)


def test_cli_explains_a_checkpoint_and_writes_html(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "view" / "explain.html"
    proc = cli(ckpt, TEXT, "--target", "are", "--html", out)  # tokenizer found in the run dir
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    pieces = [tok.decode([i]) for i in tok(TEXT, add_special_tokens=False)["input_ids"]]
    for piece in pieces:
        assert repr(piece) in proc.stdout
    assert "NormXLogit" in proc.stdout and "' are'" in proc.stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    for piece in pieces:
        assert f">{html.escape(piece)}</span>" in page
    assert page.count('class="tok"') == 3 * len(pieces)  # NormXLogit, LogAt and norm rows


def run_main(capsys, *args):
    """The CLI in-process (the first test covers `python -m` and its exit status)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_table_matches_attribute(run_dir, capsys):
    """The printed NormXLogit column is `attribute` on the checkpoint's weights."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    code, stdout, err = run_main(capsys, ckpt, TEXT, "--foil", "is", "--layer", "0",
                                 "--tokenizer", run_dir / "tokenizer")
    assert code == 0, err
    assert "layer 0 of 1" in stdout and "foil ' is'" in stdout
    model = load_model(ckpt)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.transformer.wte.weight, sd["model.transformer.wte.weight"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    foil = tok(" is", add_special_tokens=False)["input_ids"][0]
    a = attribute(model, torch.tensor([ids]), foil=foil, layers=[0])
    rows = [line.split() for line in stdout.splitlines() if line[:4].strip().isdigit()]
    printed = np.array([float(r[-2]) if r[-1].strip("+-") == "" else float(r[-1])
                        for r in rows])
    assert len(rows) == len(ids)
    np.testing.assert_allclose(printed, a.normxlogit_layers[0, 0].numpy(), atol=1e-3)
    e = explain(model, tok, TEXT, foil="is", layer=0)
    assert e.foil_id == foil and e.target_id == int(a.target[0]) and e.layer == 0


def test_truncated_checkpoint_exits_2_naming_the_file(run_dir, tmp_path, capsys):
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_main(capsys, bad, TEXT, "--tokenizer", run_dir / "tokenizer")
    assert code == 2
    assert str(bad) in err and "Traceback" not in err



@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"", b"PK\x03\x04junk"])
def test_garbage_checkpoint_exits_2_naming_the_file(run_dir, tmp_path, capsys, content):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(content)
    code, _, err = run_main(capsys, garbage, TEXT, "--tokenizer", run_dir / "tokenizer")
    assert code == 2 and str(garbage) in err


def test_foreign_checkpoint_and_missing_file_exit_2(run_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    code, _, err = run_main(capsys, foreign, TEXT, "--tokenizer", run_dir / "tokenizer")
    assert code == 2 and str(foreign) in err and "LanguageModel" in err
    code, _, err = run_main(capsys, tmp_path / "absent.ckpt", TEXT)
    assert code == 2 and "absent.ckpt" in err


def test_missing_tokenizer_and_bad_layer_exit_2(run_dir, tmp_path, capsys):
    lonely = tmp_path / "a" / "b" / "last.ckpt"
    lonely.parent.mkdir(parents=True)
    lonely.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    code, _, err = run_main(capsys, lonely, TEXT)
    assert code == 2 and "--tokenizer" in err
    code, _, err = run_main(capsys, run_dir / "checkpoints" / "last.ckpt", TEXT, "--layer", "7")
    assert code == 2 and "layer 7" in err


def test_hf_directory_checkpoint(run_dir, tmp_path, capsys):
    model = load_model(run_dir / "checkpoints" / "last.ckpt")
    model.save_pretrained(tmp_path / "hf")
    code, stdout, err = run_main(capsys, tmp_path / "hf", TEXT, "--tokenizer",
                                 run_dir / "tokenizer")
    assert code == 0, err
    assert "model's prediction" in stdout


@pytest.mark.parametrize("flags, message", [
    (["--target", ""], "--target is empty"),
    (["--target", "   "], "--target is empty"),
    (["--foil", " "], "--foil is empty"),
    (["--target", "cats", "--foil", "cats"], "tokenise alike"),
])
def test_bad_target_or_foil_is_one_line(run_dir, capsys, flags, message):
    code, _, err = run_main(capsys, run_dir / "checkpoints" / "last.ckpt", TEXT, *flags,
                            "--tokenizer", run_dir / "tokenizer")
    assert code == 2 and message in err and "Traceback" not in err


def test_a_multi_token_target_says_which_piece_it_explains(run_dir, capsys):
    code, stdout, err = run_main(capsys, run_dir / "checkpoints" / "last.ckpt", TEXT,
                                 "--target", "zyzzogeton", "--tokenizer", run_dir / "tokenizer")
    assert code == 0, err
    assert "'zyzzogeton' is" in stdout and "explaining its first" in stdout


def test_target_and_foil_sharing_their_first_token_are_told_apart(run_dir):
    """Explained where they differ, on the text plus their shared tokens: not all zero, and
    equal to `attribute` there."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    model = load_model(run_dir / "checkpoints" / "last.ckpt")
    good, bad = (tok(" " + w, add_special_tokens=False)["input_ids"] for w in ("cabinets", "cabinetz"))
    n = next(i for i, (g, b) in enumerate(zip(good, bad)) if g != b)
    assert n >= 1, "precondition: the words share their first token"
    e = explain(model, tok, TEXT, target="cabinets", foil="cabinetz")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"] + good[:n]
    a = attribute(model, torch.tensor([ids]), target=good[n], foil=bad[n])
    assert e.token_ids == ids and e.target_id == good[n] and e.foil_id == bad[n]
    np.testing.assert_allclose(e.normxlogit, a.normxlogit[0].numpy(), atol=1e-6)
    assert np.abs(e.normxlogit).sum() > 0 and "share their first" in e.note


def test_a_tokenizer_of_another_vocabulary_is_refused(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    words = ["".join(rng.choice(list("abcdefghijklmnop"), size=6)) for _ in range(400)]
    other = train_bpe([" ".join(rng.choice(words, size=12)) for _ in range(400)], 600,
                      tmp_path / "other")
    assert len(other) > 300, "precondition: a larger vocabulary than the model's"
    code, _, err = run_main(capsys, run_dir / "checkpoints" / "last.ckpt", TEXT,
                            "--tokenizer", tmp_path / "other")
    assert code == 2 and "not this model's tokenizer" in err


# ---------------------------------------------------------------- layer by layer (mixing)
def _two_layer_dir(run_dir, tmp_path):
    """A 2-layer GPT-2 of the run's vocabulary as an HF directory (per-layer rows to tell
    apart), with the run's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    torch.manual_seed(3)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=16, n_head=2,
                                       n_positions=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf2")
    return tmp_path / "hf2", tok


def _layerwise_cells(page):
    import re

    rows = {}
    for method, layer, cells in re.findall(
            r'<tr class="layerwise" data-method="([^"]+)" data-layer="(\d+)">(.*?)</tr>', page):
        rows[method, int(layer)] = np.array([float(c) for c in
                                             re.findall(r"<td>(.*?)</td>", cells)[2:]])
    return rows


def test_layerwise_html_rows_are_context_mixings_row_t_beside_normxlogit(run_dir, tmp_path,
                                                                         capsys):
    from normx_track.attribution.mixing import context_mixing

    hf, tok = _two_layer_dir(run_dir, tmp_path)
    out = tmp_path / "layers.html"
    code, stdout, err = run_main(capsys, hf, TEXT, "--target", "are", "--layerwise",
                                 "alti,rollout", "--html", out, "--tokenizer",
                                 run_dir / "tokenizer")
    assert code == 0, err
    assert "layer by layer" in stdout and "alti" in stdout and "rollout" in stdout
    page = out.read_text()
    assert "<h2>Layer by layer</h2>" in page and "<script" not in page
    model = load_model(hf)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    t = len(ids) - 1
    cells = _layerwise_cells(page)
    assert set(cells) == {("NormXLogit", l) for l in range(3)} | {
        (m, l) for m in ("alti", "rollout") for l in (1, 2)}
    for method in ("alti", "rollout"):
        m = context_mixing(model, torch.tensor(ids), method)
        for layer in (1, 2):
            np.testing.assert_allclose(cells[method, layer], m[layer - 1, t].numpy(),
                                       atol=6e-5)
            assert f'class="row layerwise" data-method="{method}" data-layer="{layer}"' in page
    target = tok(" are", add_special_tokens=False)["input_ids"][0]
    a = attribute(model, torch.tensor([ids]), target=target, layers="all")
    for layer in range(3):
        np.testing.assert_allclose(cells["NormXLogit", layer],
                                   a.normxlogit_layers[layer, 0].numpy(), atol=6e-5)
    e = explain(model, tok, TEXT, target="are", layerwise=["globenc", "value_zeroing"])
    for method in ("globenc", "value_zeroing"):  # the API: the exact rows
        torch.testing.assert_close(torch.from_numpy(e.mixing[method]),
                                   context_mixing(model, torch.tensor(ids), method)[:, t])
    assert explain(model, tok, TEXT).mixing == {}  # none asked: none computed


def test_layerwise_at_the_mask_of_a_masked_lm(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from normx_track.attribution.mixing import context_mixing

    rng = np.random.default_rng(0)
    tok = train_bpe([" ".join(rng.choice(WORDS, size=10)) for _ in range(200)], 300,
                    tmp_path / "bert_tok", specials="bert")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32,
                                       pad_token_id=tok.pad_token_id)).eval()
    text = f"the keys to the cabinet {tok.mask_token} red"
    e = explain(model, tok, text, layerwise="alti,attention")
    ids = tok(text)["input_ids"]
    assert e.masked and ids[e.position] == tok.mask_token_id
    for method in ("alti", "attention"):
        torch.testing.assert_close(torch.from_numpy(e.mixing[method]),
                                   context_mixing(model, torch.tensor(ids), method)[:, e.position])
    page = render_html(e)
    assert _layerwise_cells(page).keys() >= {("alti", 1), ("alti", 2), ("attention", 2)}


def test_an_unknown_layerwise_method_is_one_line_and_status_2(run_dir, capsys):
    code, _, err = run_main(capsys, run_dir / "checkpoints" / "last.ckpt", TEXT,
                            "--layerwise", "alti,flow")
    assert code == 2 and "unknown method(s) ['flow']" in err and "value_zeroing" in err
    assert err.count("\n") == 1
