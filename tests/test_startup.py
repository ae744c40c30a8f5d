"""A run that cannot start changes nothing in its folder; bad input at start-up is one
`error:` line (exit 2); a sweep with a bad job names it, runs the others and sums up
(issue 20)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, subprocess_env
from normx_track.record.store import RecordLock, RecordLockedError, RunFolderError, check_run_folder

QUICK = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=1",
                                                                     "logger=none"]

# Each case is `python train.py <argv>` as a user would run it, all in one driver process
# (Hydra's main called once per case: the imports are paid once). `readonly` folders are
# made to look read-only (the tests run as root, whom chmod does not stop).
DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, runpy, sys
    from pathlib import Path
    readonly = set()
    real_access = os.access
    def access(path, mode, *a, **kw):
        if mode & os.W_OK and str(Path(path).absolute()) in readonly:
            return False
        return real_access(path, mode, *a, **kw)
    os.access = access
    results = {{}}
    for case in json.load(open({cases!r})):
        readonly.clear()
        readonly.update(case.get("readonly", []))
        sys.argv = ["train.py", *case["argv"]]
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                runpy.run_path({root!r} + "/train.py", run_name="__main__")
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:  # a traceback would reach the user
                import traceback
                traceback.print_exc()
                code = 1
        results[case["name"]] = {{"code": code, "stderr": err.getvalue(),
                                  "stdout": out.getvalue()}}
    json.dump(results, open({out!r}, "w"))
""")


def run_cases(tmp: Path, cache_dir: Path, cases: list[dict]) -> dict[str, dict]:
    (tmp / "cases.json").write_text(json.dumps(cases))
    script = tmp / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), cases=str(tmp / "cases.json"),
                                    out=str(tmp / "results.json")))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=subprocess_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, files with a hash of their bytes."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    return to


def last_line(result: dict) -> str:
    lines = result["stderr"].strip().splitlines()
    return lines[-1] if lines else ""


# -- the BAD cases: a failed start leaves the earlier run's folder exactly as it was ----------
@pytest.fixture(scope="module")
def startup_runs(tiny_run, cache_dir, tmp_path_factory):
    """Every start-up case of this module in one driver process (the imports paid once): the
    failed starts (a finished run copied once per case, each folder before and after) and
    the poor inputs (plan_poor_cases)."""
    tmp = tmp_path_factory.mktemp("failed_starts")
    folders = {name: copy_run(tiny_run, tmp / name)
               for name in ("betas", "gpu", "locked")}
    poor_cases, poor_folders = plan_poor_cases(tmp_path_factory.mktemp("poor"), tiny_run)
    holder = subprocess.Popen(  # another live process holds the folder (a paused run's lock)
        [sys.executable, "-c", "import sys, time; from normx_track.record.store import "
         "RecordLock; RecordLock.acquire(sys.argv[1]); print('held', flush=True); "
         "time.sleep(600)", str(folders["locked"])], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {name: tree(folder) for name, folder in folders.items()}
        cases = [
            {"name": "betas", "argv": [*QUICK, "logger=csv", "optim.betas=[0.9,1.5]",
                                       "trainer.max_steps=2"]},
            {"name": "gpu", "argv": [*QUICK, "logger=csv", "trainer.accelerator=gpu"]},
            {"name": "locked", "argv": [*QUICK, "seed=2"]},
        ]
        for case in cases:
            case["argv"].append(f"hydra.run.dir={folders[case['name']]}")
        results = run_cases(tmp, cache_dir, cases + poor_cases)
        after = {name: tree(folder) for name, folder in folders.items()}
    finally:
        holder.kill()
        holder.wait()
    return (results, before, after, folders, holder.pid), (results, poor_folders)


@pytest.fixture(scope="module")
def failed_starts(startup_runs):
    return startup_runs[0]


@pytest.mark.parametrize("case", ["betas", "gpu", "locked"])
def test_a_failed_start_changes_nothing(case, failed_starts):
    results, before, after, folders, holder_pid = failed_starts
    if case == "gpu" and torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    result = results[case]
    assert result["code"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    expected = {"betas": "optim.betas must be two numbers in [0, 1)",
                "gpu": "trainer.accelerator=gpu",
                "locked": f"in use by pid {holder_pid}"}[case]
    assert last_line(result).startswith("error: ") and expected in last_line(result)
    # Nothing moved, no .hydra/rerun-*, not a line more in the earlier run's train.log.
    assert after[case] == before[case]
    if case != "locked":  # (the holder's lock is its own)
        assert not (folders[case] / "normx.lock").exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    outer = RecordLock.acquire(tmp_path)
    inner = RecordLock.acquire(tmp_path)  # the tracker, inside train.py's hold
    inner.release()
    inner.release()  # a handle released twice counts once
    assert (tmp_path / "normx.lock").exists()
    outer.release()
    assert not (tmp_path / "normx.lock").exists()
    with RecordLock.acquire(tmp_path):  # taken afresh afterwards
        assert json.loads((tmp_path / "normx.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "normx.lock").exists()


def test_a_garbled_lock_is_called_unreadable(tmp_path):
    (tmp_path / "normx.lock").write_bytes(b"\x00garbage")
    start = time.monotonic()
    with pytest.raises(RecordLockedError) as err:
        RecordLock.acquire(tmp_path)
    assert "lock file is unreadable" in str(err.value) and f"delete {tmp_path}" in str(err.value)
    assert "pid None" not in str(err.value) and time.monotonic() - start < 2


def test_the_run_folder_checks(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="the run folder is a file"):
        check_run_folder(tmp_path / "file")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "normx").write_text("x")
    with pytest.raises(RunFolderError, match=r"run/normx: a file where the run keeps its record"):
        check_run_folder(run)
    (run / "normx").unlink()
    check_run_folder(run)
    check_run_folder(tmp_path / "new" / "deeper")  # not there yet: its parent is writable
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    with pytest.raises(RunFolderError, match=rf"{tmp_path}: cannot write there"):
        check_run_folder(tmp_path / "new")


# -- the POOR cases: one `error:` line (exit 2, no traceback), or a documented warning ------
def plan_poor_cases(tmp: Path, run: Path) -> tuple[list[dict], dict[str, Path]]:
    """(the driver's cases, the folders they use)."""
    (tmp / "one_line.txt").write_text("a single line of text is a single document\n")
    # Three documents of about 20 tokens each: two train (a block of 32 fits), one validates.
    (tmp / "three_short.txt").write_text("qwertyuiopasdfghjklz\nxcvbnmpoiuytrewqlkjh\n"
                                         "zaqxswcdevfrbgtnhymj\n")
    (tmp / "a_file").write_text("not a folder\n")
    used = {name: copy_run(run, tmp / name) for name in
            ("resume_readonly", "other_arch", "no_last_ckpt", "fresh_in_used")}
    (used["no_last_ckpt"] / "checkpoints" / "last.ckpt").unlink()  # killed between the two
    (tmp / "normx_file" / "normx").parent.mkdir()
    (tmp / "normx_file" / "normx").write_text("x")
    (tmp / "garbled_lock").mkdir()
    (tmp / "garbled_lock" / "normx.lock").write_text("}{ not json")
    (tmp / "readonly").mkdir()
    d = {"readonly": tmp / "readonly", "vocab": tmp / "vocab", "sweep": tmp / "sweep", **used}
    quick = [o for o in QUICK]
    cases = [
        ("betas_one", [*quick, "optim.betas=[0.9]"]),
        ("one_document", [*quick, "data=text_files", f"data.files=[{tmp / 'one_line.txt'}]"]),
        ("short_validation", [*quick, "data=text_files",
                              f"data.files=[{tmp / 'three_short.txt'}]", "data.val_fraction=0.34"]),
        ("run_dir_is_a_file", [*quick, f"hydra.run.dir={tmp / 'a_file'}"]),
        ("normx_is_a_file", [*quick, f"hydra.run.dir={tmp / 'normx_file'}"]),
        ("readonly_fresh", [*quick, f"hydra.run.dir={d['readonly']}"]),
        ("readonly_resume", [*quick, "ckpt_path=last", f"hydra.run.dir={d['resume_readonly']}"]),
        ("garbled_lock", [*quick, f"hydra.run.dir={tmp / 'garbled_lock'}"]),
        ("other_arch", [*quick, "ckpt_path=last", "model.arch=llama",
                        f"hydra.run.dir={d['other_arch']}"]),
        ("no_last_ckpt", [*quick, "ckpt_path=last", "trainer.max_steps=9",
                          f"hydra.run.dir={d['no_last_ckpt']}"]),
        ("vocab_size_10", [*quick, "data.vocab_size=10", f"hydra.run.dir={d['vocab']}"]),
        ("fresh_in_used", [*quick, f"hydra.run.dir={d['fresh_in_used']}"]),
        ("sweep_bad_job", ["-m", *quick, "tracker=off", "optim.lr=0.003,-1,0.002",
                           f"hydra.sweep.dir={d['sweep']}"]),
    ]
    readonly = {"readonly_fresh": [str(d["readonly"])],
                "readonly_resume": [str(d["resume_readonly"])]}
    plan = []
    for name, argv in cases:
        if "-m" not in argv and not any(a.startswith("hydra.run.dir=") for a in argv):
            argv.append(f"hydra.run.dir={tmp / 'runs' / name}")
        plan.append({"name": name, "argv": argv, "readonly": readonly.get(name, [])})
    return plan, d


@pytest.fixture(scope="module")
def poor(startup_runs):
    return startup_runs[1]


ONE_LINE = [
    ("betas_one", "optim.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got [0.9]"),
    ("one_document", "one_line.txt: 1 document, but training and validation need one each"),
    ("short_validation", "fewer than one block (data.block_size=32); give more documents "
                         "or a larger data.val_fraction"),
    ("run_dir_is_a_file", "a_file: the run folder is a file; choose another hydra.run.dir"),
    ("normx_is_a_file", "normx_file/normx: a file where the run keeps its record folder"),
    ("readonly_fresh", "readonly: cannot write there (read-only or not yours)"),
    ("readonly_resume", "resume_readonly: cannot write there (read-only or not yours)"),
    ("garbled_lock", "normx.lock: the lock file is unreadable"),
    ("other_arch", "its weights do not fit this run's model (model.arch: gpt2 -> llama"),
]


@pytest.mark.parametrize("case", ONE_LINE, ids=[c[0] for c in ONE_LINE])
def test_bad_input_at_start_up_is_one_line(case, poor):
    results, _ = poor
    name, expected = case
    result = results[name]
    assert result["code"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"] + result["stdout"], result["stderr"][-3000:]
    assert last_line(result).startswith("error: ") and expected in last_line(result), \
        last_line(result)


def test_a_refused_folder_is_left_as_it_was(poor):
    _, folders = poor
    assert sorted(p.name for p in folders["readonly"].iterdir()) == []  # not even a lock
    resumed = folders["resume_readonly"]
    assert not list(resumed.glob("*.replaced-*")) and not (resumed / "normx.lock").exists()
    assert not list((resumed / ".hydra").glob("resume-*"))


def test_ckpt_path_last_without_last_ckpt_resumes_from_the_newest_step(poor):
    results, folders = poor
    result = results["no_last_ckpt"]
    assert result["code"] == 0, result["stderr"][-3000:]
    said = result["stdout"] + result["stderr"]
    assert "ckpt_path=last: no" in said and "resuming from" in said and \
        "step_00000008.ckpt, the newest step checkpoint" in said
    last = torch.load(folders["no_last_ckpt"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 9


def test_a_vocab_size_below_the_byte_alphabet_is_warned_and_both_recorded(poor):
    results, folders = poor
    result = results["vocab_size_10"]
    assert result["code"] == 0, result["stderr"][-3000:]
    assert "data.vocab_size=10 is below what a byte-level BPE can have" in \
        result["stdout"] + result["stderr"]
    meta = json.loads((folders["vocab"] / "normx" / "meta.json").read_text())
    assert meta["config"]["data"]["vocab_size"] == 10 and meta["vocab_size"] == 257


def test_a_fresh_run_sets_the_earlier_runs_figures_aside(poor, tiny_run):
    results, folders = poor
    assert results["fresh_in_used"]["code"] == 0, results["fresh_in_used"]["stderr"][-3000:]
    run = folders["fresh_in_used"]
    for part in ("figures", "checkpoints", "normx"):
        (aside,) = run.glob(f"{part}.replaced-*")
        assert tree(aside) == tree(tiny_run / part)
    assert not (run / "figures").exists()  # this run (no W&B) made none of its own


def test_a_sweep_names_its_bad_job_runs_the_others_and_sums_up(poor):
    results, folders = poor
    result = results["sweep_bad_job"]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    (named,) = [line for line in lines if line.startswith("error: job 1 (")]
    assert named.endswith("optim.lr=-1): optim.lr must be > 0, got -1.0"), named
    assert lines[-1] == "sweep: 3 jobs: 2 finished, 1 failed (job 1), 0 skipped"
    sweep = folders["sweep"]
    for job in ("0", "2"):
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()
    assert not (sweep / "1" / ".hydra").exists() and not (sweep / "1" / "checkpoints").exists()
    assert not list(sweep.glob(".normx_sweep-*"))


# -- replay, explain, checkpoints and analysis: one line, or a warning that says why --------
def test_a_full_disk_at_a_checkpoint_says_so(tmp_path, monkeypatch):
    from normx_track.record import checkpoint_writer
    from normx_track.record.atomic import AtomicWriteError

    def torch_on_a_full_disk(obj, handle, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(AtomicWriteError) as err:  # room left: torch's reason, the file named
        checkpoint_writer.AtomicCheckpointIO().save_checkpoint({}, path)
    assert "last.ckpt (" in str(err.value) and "unexpected pos" in str(err.value)

    class Full:
        f_bavail, f_frsize = 3, 4096
    monkeypatch.setattr(checkpoint_writer.os, "fstatvfs", lambda fd: Full)
    with pytest.raises(AtomicWriteError) as err:
        checkpoint_writer.AtomicCheckpointIO().save_checkpoint({}, path)
    assert str(err.value).endswith(f"could not write {path}: no space left on device; the "
                                   "previous version is intact") and err.value.errno == 28
    assert not list(path.parent.glob(".*.tmp"))


@pytest.fixture()
def record_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "normx", run / "normx")
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    return run


def replay_error(argv: list[str], capsys) -> str:
    from analysis.replay import main as replay

    with pytest.raises(SystemExit) as stop:
        replay(argv)
    message = str(stop.value.code) if not isinstance(stop.value.code, int) else \
        capsys.readouterr().err
    assert "Traceback" not in message
    return message


def test_replay_names_an_unreadable_meta_or_gold_file(record_copy, tmp_path, capsys):
    ckpt = str(record_copy / "checkpoints" / "step_00000004.ckpt")
    argv = [ckpt, "--like", str(record_copy), "--out", str(tmp_path / "out")]
    meta = record_copy / "normx" / "meta.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    message = replay_error(argv, capsys)
    assert f"{meta}: unreadable (JSONDecodeError" in message and "no such" not in message
    meta.write_text(text)
    np_obj = __import__("numpy").array([{"a": 1}], dtype=object)
    __import__("numpy").savez(record_copy / "normx" / "gold.npz", counts=np_obj)
    message = replay_error(argv, capsys)
    assert str(record_copy / "normx" / "gold.npz") in message and "not a readable gold file" \
        in message and "allow_pickle" not in message


def test_replay_ignores_and_names_tracker_keys_it_does_not_know(record_copy, tmp_path, capsys):
    from analysis.replay import main as replay
    from normx_track.record.store import read_metrics

    meta_path = record_copy / "normx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["tracker"]["from_a_later_version"] = 1
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    replay([str(record_copy / "checkpoints" / "step_00000004.ckpt"), "--like",
            str(record_copy), "--out", str(out)])
    err = capsys.readouterr().err
    assert "tracker setting(s) ['from_a_later_version'] unknown to this version" in err
    assert [r["step"] for r in read_metrics(out)] == [4]


def test_replay_refuses_a_negative_min_count(record_copy, tmp_path, capsys):
    from analysis.replay import main as replay

    with pytest.raises(SystemExit) as stop:
        replay([str(record_copy / "checkpoints" / "last.ckpt"), "--like", str(record_copy),
                "--out", str(tmp_path / "out"), "--min-count", "-3"])
    assert stop.value.code == 2 and "--min-count: must be >= 0, got -3" in capsys.readouterr().err


def test_explain_refuses_another_corpus_tokenizer_of_the_same_size(tiny_run, tmp_path, capsys):
    from normx_track.attribution.explain import main as explain

    own = Path(json.loads((tiny_run / "normx" / "meta.json").read_text())["data_dir"])
    spec = json.loads((own / "tokenizer" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]  # two tokens swap ids: same size, other words per id
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    other = tmp_path / "other_tokenizer"
    shutil.copytree(own / "tokenizer", other)
    (other / "tokenizer.json").write_text(json.dumps(spec))
    ckpt = str(tiny_run / "checkpoints" / "last.ckpt")
    assert explain([ckpt, "the cat", "--tokenizer", str(other)]) == 2
    assert "--tokenizer: not the tokenizer of the run" in capsys.readouterr().err
    assert explain([ckpt, "the cat", "--tokenizer", str(own / "tokenizer")]) == 0


@pytest.mark.parametrize("tool", ["curves", "report", "emergence"])
def test_analysis_of_a_read_only_run_folder_suggests_out(tool, record_copy, monkeypatch,
                                                         capsys, tmp_path):
    import importlib

    main = importlib.import_module(f"analysis.{tool}").main
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == record_copy
                        else real(p, m))
    assert main([str(record_copy)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: {record_copy}: cannot write there (read-only or not a folder); pass --out " \
        "DIR to write elsewhere"
    assert not (record_copy / "figures").exists()


def test_emergence_skips_snapshots_of_another_length_and_says_why_nothing_settles(
        record_copy, capsys):
    import numpy as np
    from analysis.emergence import main as emergence
    from normx_track.record.store import list_snapshots

    with pytest.raises(SystemExit) as stop:
        emergence([str(record_copy), "--min-count", "-3"])
    assert stop.value.code == 2
    snapshots = list_snapshots(record_copy)
    odd = snapshots[max(snapshots)]
    with np.load(odd) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(odd, **{**arrays, "input_norm": arrays["input_norm"][:-5]})
    capsys.readouterr()
    assert emergence([str(record_copy), "--formats", "png"]) == 0
    assert f"snapshots at steps [{max(snapshots)}] hold input_norm of another length than " \
        f"{len(arrays['input_norm'])}" in capsys.readouterr().err
    assert (record_copy / "figures" / "emergence.csv").exists()
    n_types = len(np.load(record_copy / "normx" / "gold.npz")["counts"])
    for path in list_snapshots(record_copy).values():  # a run whose norms all went NaN
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        np.savez(path, **{**arrays, "input_norm": np.full(n_types, np.nan)})
    capsys.readouterr()
    assert emergence([str(record_copy), "--formats", "png"]) == 0
    err = capsys.readouterr().err
    assert "no emergence table:" in err and "has a finite input_norm in every snapshot" in err


def test_a_sweep_does_not_average_runs_of_different_vocabularies_unless_asked(record_copy,
                                                                               tmp_path, capsys):
    from analysis.sweep import main as sweep

    root = tmp_path / "multirun"
    for job in ("0", "1"):
        shutil.copytree(record_copy / "normx", root / job / "normx")
    meta_path = root / "1" / "normx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    # Another vocabulary from the same data settings is a replicate (a synthetic corpus
    # drawn with another seed): averaged.
    meta["vocab_hash"] = "another draw"
    meta_path.write_text(json.dumps(meta))
    assert sweep([str(root), "--group-by", "seed", "--formats", "png"]) == 0
    meta["config"]["data"] = {**meta["config"]["data"], "source": "files", "files": ["b.txt"]}
    meta_path.write_text(json.dumps(meta))
    assert sweep([str(root), "--group-by", "seed", "--formats", "png"]) == 2
    assert "holds runs of 2 corpora or tokenizers" in capsys.readouterr().err
    assert sweep([str(root), "--group-by", "seed", "--formats", "png",
                  "--mix-vocabularies"]) == 0


def test_a_config_group_left_at_its_default_is_labelled_by_its_option(record_copy):
    from analysis.load import load_run

    (record_copy / ".hydra").mkdir()
    (record_copy / ".hydra" / "config.yaml").write_text("data:\n  source: synthetic\n")
    (record_copy / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      data: synthetic\n")
    assert load_run(record_copy).setting("data") == "synthetic"  # not the section's dict


def test_the_sweep_summary_counts_the_jobs_an_experiment_sweeps_over():
    """experiment=clm_vs_mlm sweeps 2 models x 3 seeds through hydra.sweeper.params; the
    command line may narrow a key (seed=0,1)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    import normx_launch  # train.py's launch guards
    from normx_track.training.config import Config

    ConfigStore.instance().store(name="config_schema", node=Config)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=clm_vs_mlm"], return_hydra_config=True)
    counts = []
    for task in (["experiment=clm_vs_mlm"], ["experiment=clm_vs_mlm", "seed=0,1"]):
        cfg.hydra.overrides.task = task  # what `-m` puts there, sweep values included
        counts.append(normx_launch.planned_jobs(cfg))
    assert counts == [6, 4]
