"""The examples never lose or mix up a user's files, and answer bad input in one line
(issues 31 and 30 §5): checkpoints carry the run id of the record beside them; a fresh run
sets an earlier run's record and checkpoints aside together and refuses to overwrite a
checkpoint it did not write; `--resume` refuses another run's checkpoint and damaged files;
bad arguments and unusable paths are `error: ...` with exit status 2, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, load_example, subprocess_env
from normx_track.record.store import read_metrics

EXAMPLES = ("plain_loop", "hf_trainer")




@pytest.fixture(scope="module")
def examples():
    return {name: load_example(name) for name in EXAMPLES}


@pytest.fixture(scope="module")
def overrides(cache_dir) -> list[str]:
    return ["debug=tiny", f"data.cache_dir={cache_dir}"]


def run(example, out: Path, steps: int, overrides: list[str], *extra: str) -> int:
    return example.main([str(out), *overrides, "--max-steps", str(steps), *extra])


def one_error(capsys) -> str:
    """The single `error:` line the command printed (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def meta(out: Path) -> dict:
    return json.loads((out / "normx" / "meta.json").read_text())


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory, examples, overrides) -> dict[str, Path]:
    """Two 10-step plain-loop runs (checkpoint.pt at step 10): seeds 0 and 1 (another
    tokenizer of the same size)."""
    root = tmp_path_factory.mktemp("plain_runs")
    runs = {"a": root / "a", "b": root / "b"}
    assert run(examples["plain_loop"], runs["a"], 10, overrides) == 0
    assert run(examples["plain_loop"], runs["b"], 10, [*overrides, "seed=1"]) == 0
    return runs


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, examples, overrides) -> Path:
    """A 12-step HF Trainer run: checkpoint-10 and checkpoint-12."""
    out = tmp_path_factory.mktemp("hf_run") / "run"
    assert run(examples["hf_trainer"], out, 12, overrides) == 0
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-10", "checkpoint-12"}
    return out


def copy(src: Path, tmp_path: Path, name: str = "run") -> Path:
    shutil.copytree(src, tmp_path / name)
    return tmp_path / name


# -- issue 31: files the run did not write, runs set aside, runs mixed up ---------------
def test_a_fresh_plain_run_never_overwrites_a_checkpoint_it_did_not_write(
        tmp_path, examples, overrides, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"my": torch.ones(3)}, out / "checkpoint.pt")  # the user's own
    before = (out / "checkpoint.pt").read_bytes()
    assert run(examples["plain_loop"], out, 10, overrides) == 2
    assert str(out / "checkpoint.pt") in one_error(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # nothing else touched


def test_a_plain_rerun_sets_the_record_and_its_checkpoint_aside_together_so_it_resumes(
        tmp_path, examples, overrides, plain_runs):
    out = copy(plain_runs["a"], tmp_path)
    first = (out / "checkpoint.pt").read_bytes()
    first_id = meta(out)["run_id"]
    assert run(examples["plain_loop"], out, 10, overrides) == 0  # a fresh run, no --resume
    record = next(out.glob("normx.replaced-*"))
    suffix = record.name[len("normx"):]
    aside = out / f"checkpoint.pt{suffix}"
    assert aside.read_bytes() == first  # the earlier run's checkpoint, intact, beside its record
    assert json.loads((record / "meta.json").read_text())["run_id"] == first_id
    assert meta(out)["run_id"] != first_id  # the new record is another run's
    # The set-aside run resumes once its record and checkpoint are put back in a folder.
    again = tmp_path / "again"
    again.mkdir()
    record.rename(again / "normx")
    aside.rename(again / "checkpoint.pt")
    assert run(examples["plain_loop"], again, 12, overrides, "--resume") == 0
    assert [r["step"] for r in read_metrics(again)] == [0, 1, 2, 4, 8, 10, 12]  # 10: its end
    assert meta(again)["run_id"] == first_id


def test_plain_resume_refuses_a_checkpoint_of_another_run_naming_both(
        tmp_path, examples, overrides, plain_runs, capsys):
    out = copy(plain_runs["b"], tmp_path)
    shutil.copy(plain_runs["a"] / "checkpoint.pt", out / "checkpoint.pt")  # a mix-up
    rows = (out / "normx" / "metrics.jsonl").read_text()
    assert run(examples["plain_loop"], out, 20, [*overrides, "seed=1"], "--resume") == 2
    line = one_error(capsys)
    assert meta(plain_runs["a"])["run_id"] in line and meta(out)["run_id"] in line
    assert (out / "normx" / "metrics.jsonl").read_text() == rows
    # Its own checkpoint, resumed with overrides that build another tokenizer: refused too.
    own = copy(plain_runs["a"], tmp_path, "own")
    assert run(examples["plain_loop"], own, 20, [*overrides, "seed=1"], "--resume") == 2
    assert "another tokenizer" in one_error(capsys)


def test_a_fresh_hf_run_never_overwrites_a_checkpoint_folder_it_did_not_write(
        tmp_path, examples, overrides, capsys):
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "model.safetensors").write_bytes(b"the user's own")
    assert run(examples["hf_trainer"], out, 12, overrides) == 2
    assert str(out / "checkpoint-10") in one_error(capsys)
    assert [p.name for p in (out / "checkpoint-10").iterdir()] == ["model.safetensors"]
    assert not (out / "normx").exists()


def test_hf_another_run_in_the_folder_then_resume_never_continues_from_the_first_runs_weights(
        tmp_path, examples, overrides, hf_run, capsys):
    """Issue 31's case: run 1 to step 12, run 2 (another seed) to 8 in the same folder,
    then run 2 with --resume: it must continue from its own checkpoint-8, not run 1's
    checkpoint-12 (whose rows 12 and 16 would be run 1's weights in run 2's record)."""
    hf = examples["hf_trainer"]
    out = copy(hf_run, tmp_path)
    first_id = meta(out)["run_id"]
    assert run(hf, out, 8, [*overrides, "seed=1"]) == 0
    record = next(out.glob("normx.replaced-*"))
    suffix = record.name[len("normx"):]
    for name in ("checkpoint-10", "checkpoint-12"):  # set aside with their record
        assert json.loads((out / f"{name}{suffix}" / "normx_run.json").read_text())["run_id"] == first_id
    assert run(hf, out, 16, [*overrides, "seed=1"], "--resume") == 0
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 4, 8, 12, 16]
    assert [h["at_step"] for h in meta(out)["resumed"]] == [8]
    # Run 1's checkpoint put back in the folder (a mix-up): refused, naming both runs.
    shutil.copytree(out / f"checkpoint-12{suffix}", out / "checkpoint-30")
    assert run(hf, out, 40, [*overrides, "seed=1"], "--resume") == 2
    line = one_error(capsys)
    assert first_id in line and meta(out)["run_id"] in line


# -- issue 30 §5: one line, exit status 2 -------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLES)
def test_bad_arguments_and_unusable_folders_are_one_line_exit_2(
        tmp_path, examples, overrides, capsys, monkeypatch, name):
    example = examples[name]
    out = tmp_path / "run"
    for steps in (-3, 0):
        assert run(example, out, steps, overrides) == 2
        assert "--max-steps" in one_error(capsys)
    assert example.main([str(out), "--max-steps", "ten"]) == 2
    assert "--max-steps" in one_error(capsys)
    assert run(example, out, 1, ["debug=tiny", "model=no_such_model"]) == 2
    assert "model=no_such_model" in one_error(capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert run(example, a_file, 1, overrides) == 2
    assert str(a_file) in one_error(capsys)
    # A read-only folder (the tests run as root, whom chmod does not stop: os.access says so).
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (
        mode & os.W_OK and Path(p).absolute() == readonly) else real_access(p, mode, *a, **k))
    assert run(example, readonly / "run", 1, overrides) == 2
    assert str(readonly) in one_error(capsys)
    assert not any(readonly.iterdir())
    assert not out.exists()


def _pickle(path: Path) -> None:
    torch.save({"model": argparse.Namespace(weights=1)}, path)  # an object, not tensors


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _json_garbage(path: Path) -> None:
    path.write_text('{"step": ')


@pytest.mark.parametrize("damage", ["meta_json", "pickle", "truncated", "json_text"])
def test_plain_resume_with_a_damaged_file_is_one_line_naming_it(
        tmp_path, examples, overrides, plain_runs, capsys, damage):
    out = copy(plain_runs["a"], tmp_path)
    target = out / "normx" / "meta.json" if damage == "meta_json" else out / "checkpoint.pt"
    {"meta_json": _json_garbage, "pickle": _pickle, "truncated": _truncate,
     "json_text": _json_garbage}[damage](target)
    rows = (out / "normx" / "metrics.jsonl").read_text()
    assert run(examples["plain_loop"], out, 20, overrides, "--resume") == 2
    assert str(target) in one_error(capsys)
    assert (out / "normx" / "metrics.jsonl").read_text() == rows


@pytest.mark.parametrize("damage", ["trainer_state.json", "normx_tracker.json",
                                    "model.safetensors", "optimizer.pt", "missing"])
def test_hf_resume_with_a_damaged_file_is_one_line_naming_it(
        tmp_path, examples, overrides, hf_run, capsys, damage):
    out = copy(hf_run, tmp_path)
    last = out / "checkpoint-12"
    if damage == "missing":  # --resume with nothing to resume
        for folder in out.glob("checkpoint-*"):
            shutil.rmtree(folder)
        target = out
    else:
        target = last / damage
        {"trainer_state.json": _json_garbage, "normx_tracker.json": _json_garbage,
         "model.safetensors": _truncate, "optimizer.pt": _pickle}[damage](target)
    assert run(examples["hf_trainer"], out, 20, overrides, "--resume") == 2
    assert str(target) in one_error(capsys)


def test_a_command_line_error_is_one_line_and_exit_status_2(tmp_path, cache_dir):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_loop.py"), str(a_file)],
                          env=subprocess_env(cache_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {a_file}: the run folder is a file; choose another OUT"]
