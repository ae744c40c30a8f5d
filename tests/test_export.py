"""`python -m normx_track.export` (issues 31, 30 §5 and 28 §4): it reads train.py's .ckpt, a
plain state_dict (examples/plain_loop.py's checkpoint.pt, config from the run's record or
--config) and an HF checkpoint folder; refuses a tokenizer that is not the run's (by the
vocab hash its record holds); writes the context size and the pad token into the
tokenizer; writes nothing half-way (a temp folder renamed when complete); and answers an
unusable out-dir in one line, exit status 2."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import load_example, train_here
from normx_track.export import main as export_main

TEXT = " the keys to the cabinet are"




@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Plain-loop runs of seeds 0 and 1 (tokenizers of the same size, other ids), 10 steps
    each; a 4-step train.py run (seed 0: checkpoints/last.ckpt); a 10-step HF Trainer run."""
    root = tmp_path_factory.mktemp("export_runs")
    overrides = ["debug=tiny", f"data.cache_dir={cache_dir}"]
    plain = load_example("plain_loop")
    plain.train(root / "plain", 10, overrides)
    plain.train(root / "plain_seed1", 10, [*overrides, "seed=1"])
    train_here(root / "lightning", cache_dir, "logger=none", "trainer.max_steps=4")
    trainer, _ = load_example("hf_trainer").build_trainer(root / "hf", 10, overrides)
    trainer.train()
    return {"plain": root / "plain", "plain_seed1": root / "plain_seed1",
            "lightning": root / "lightning", "hf": root / "hf"}


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "normx" / "meta.json").read_text())


def tokenizer_of(run_dir: Path) -> Path:
    return Path(meta(run_dir)["data_dir"]) / "tokenizer"


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def plain_model(run_dir: Path):
    """The plain loop's model as its own code builds it: the recorded config + the state_dict."""
    arch = meta(run_dir)["model"]["arch"]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch))
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def test_a_plain_state_dict_exports_with_the_runs_context_size_and_the_same_logits(runs, tmp_path):
    out = tmp_path / "hf"
    assert export_main([str(runs["plain"] / "checkpoint.pt"), str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    run_tokenizer = AutoTokenizer.from_pretrained(tokenizer_of(runs["plain"]))
    assert tokenizer(TEXT)["input_ids"] == run_tokenizer(TEXT)["input_ids"]
    assert torch.equal(logits(exported, tokenizer), logits(plain_model(runs["plain"]), tokenizer))
    assert tokenizer.model_max_length == meta(runs["plain"])["model"]["arch"]["n_positions"] == 32
    assert tokenizer.pad_token is None  # GPT-2's config has no pad token


def test_a_state_dict_of_a_model_with_a_pad_token_exports_that_pad_token(runs, tmp_path):
    arch = {**meta(runs["plain"])["model"]["arch"], "pad_token_id": 5}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(arch))
    out = tmp_path / "hf"
    assert export_main([str(runs["plain"] / "checkpoint.pt"), str(out), "--config", str(config)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id == 5 and AutoConfig.from_pretrained(out).pad_token_id == 5
    assert tokenizer.pad_token == AutoTokenizer.from_pretrained(
        tokenizer_of(runs["plain"])).convert_ids_to_tokens(5)


def test_a_lightning_checkpoint_exports_with_the_context_size(runs, tmp_path):
    out = tmp_path / "hf"
    assert export_main([str(runs["lightning"] / "checkpoints" / "last.ckpt"), str(out)]) == 0
    assert AutoTokenizer.from_pretrained(out).model_max_length == 32


def test_an_hf_trainer_checkpoint_folder_exports_with_the_same_logits(runs, tmp_path):
    out = tmp_path / "hf"
    checkpoint = runs["hf"] / "checkpoint-10"
    assert export_main([str(checkpoint), str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer),
                       logits(AutoModelForCausalLM.from_pretrained(checkpoint).eval(), tokenizer))


@pytest.mark.parametrize("checkpoint", ["lightning", "plain"])
def test_the_export_refuses_another_runs_tokenizer_of_the_same_size(runs, tmp_path, capsys,
                                                                    checkpoint):
    """Seed 1's tokenizer has 512 tokens too, but about half its ids are other strings."""
    path = (runs["lightning"] / "checkpoints" / "last.ckpt" if checkpoint == "lightning"
            else runs["plain"] / "checkpoint.pt")
    other = tokenizer_of(runs["plain_seed1"])
    assert len(AutoTokenizer.from_pretrained(other)) == len(
        AutoTokenizer.from_pretrained(tokenizer_of(runs["plain"])))
    out = tmp_path / "hf"
    assert export_main([str(path), str(out), "--tokenizer", str(other)]) == 2
    line = one_error(capsys)
    run_dir = path.parents[0] if checkpoint == "plain" else path.parents[1]
    assert "not the tokenizer" in line and meta(run_dir)["vocab_hash"][:12] in line
    assert not out.exists()


def test_a_set_aside_checkpoint_is_never_exported_with_the_tokenizer_of_the_run_beside_it(
        runs, tmp_path, capsys):
    """checkpoint.pt.replaced-<time> sits beside the record of the run that replaced it:
    the vocab hash the checkpoint carries decides, not that record's."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(runs["plain_seed1"], folder)
    aside = folder / "checkpoint.pt.replaced-20250101-000000"
    shutil.copy(runs["plain"] / "checkpoint.pt", aside)  # seed 0's weights
    assert export_main([str(aside), str(tmp_path / "hf")]) == 2
    assert "not the tokenizer the checkpoint was trained with" in one_error(capsys)
    assert export_main([str(aside), str(tmp_path / "hf"), "--tokenizer",
                        str(tokenizer_of(runs["plain"]))]) == 0


def test_an_unusable_out_dir_is_one_line_exit_2(runs, tmp_path, capsys, monkeypatch):
    import os

    checkpoint = str(runs["plain"] / "checkpoint.pt")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert export_main([checkpoint, str(a_file)]) == 2
    assert str(a_file) in one_error(capsys)
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("mine")
    assert export_main([checkpoint, str(used)]) == 2
    assert str(used) in one_error(capsys)
    assert [p.name for p in used.iterdir()] == ["mine.txt"]
    readonly = tmp_path / "readonly"  # as root, chmod stops nobody: os.access says read-only
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (
        mode & os.W_OK and Path(p).absolute() == readonly) else real_access(p, mode, *a, **k))
    assert export_main([checkpoint, str(readonly / "hf")]) == 2
    assert str(readonly) in one_error(capsys)
    assert not any(readonly.iterdir())
    with pytest.raises(SystemExit) as exit:
        export_main([checkpoint])  # a missing argument: argparse's error, one line too
    assert exit.value.code == 2
    assert "out_dir" in one_error(capsys)


def test_a_full_disk_mid_export_leaves_neither_the_folder_nor_a_temp_folder(
        runs, tmp_path, capsys, monkeypatch):
    """The tokenizer's save fails (ENOSPC) after the model is written."""
    cls = type(AutoTokenizer.from_pretrained(tokenizer_of(runs["plain"])))
    written = []

    def full_disk(self, save_directory, *args, **kwargs):
        written.extend(p.name for p in Path(save_directory).iterdir())
        raise OSError(errno.ENOSPC, "No space left on device")

    for klass in cls.__mro__:
        if "save_pretrained" in vars(klass) and "Tokenizer" in klass.__name__:
            monkeypatch.setattr(klass, "save_pretrained", full_disk)
    parent = tmp_path / "exports"
    parent.mkdir()
    out = parent / "hf"
    assert export_main([str(runs["lightning"] / "checkpoints" / "last.ckpt"), str(out)]) == 2
    assert "model.safetensors" in written  # it failed after the model was written
    assert "No space left on device" in one_error(capsys)
    assert not out.exists() and list(parent.iterdir()) == []
