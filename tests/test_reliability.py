"""Bad input gets one clear line (exit 2, no traceback); runs never overwrite each other;
a resumed run continues its record whatever its settings (issue: reliability)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.replay import main as replay
from conftest import ROOT, TINY, run_train, subprocess_env, train_in_one_process
from normx_track.record import store as records
from normx_track.tracker.lightning import NormTracker, tracker_state
from normx_track.record.checkpoint_writer import AtomicCheckpointIO
from normx_track.training.config import Config, ConfigError, TrackerConfig, validate
from normx_track.gold.statistics import GoldStatistics, compute_gold
from normx_track.record.store import RecordLock, RecordLockedError, AtomicWriteError, read_metrics

QUICK = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=1",
                                                                     "logger=none"]


def bad_files(tmp: Path) -> dict[str, Path]:
    files = {"empty.txt": b"", "blank.txt": b"  \n\t\n", "binary.txt": b"ab\x00\x01cd\n",
             "latin1.txt": "caf\xe9 cr\xe8me\n".encode("latin-1"),
             "empty_probes.jsonl": b"\n",
             "same_words.jsonl": json.dumps({"one_prefix_prefix": "the cat",
                                             "one_prefix_word_good": "sleeps",
                                             "one_prefix_word_bad": "sleeps"}).encode() + b"\n",
             "lexicon_none.tsv": b"zzzzqqqqxxxxwwww\t1.0\n",
             "random.ckpt": os.urandom(4096),
             "bad_line.jsonl": b'{"text": "a cat"}\n' * 150 + b'{oops\n{"text": "a dog"}\n',
             "numbers.jsonl": b'{"text": 5}\n{"text": 6}\n'}
    out = {}
    for name, content in files.items():
        (tmp / name).write_bytes(content)
        out[name] = tmp / name
    (tmp / "folder").mkdir()
    out["folder"] = tmp / "folder"
    return out


# (case id, overrides given the bad files, text the one line must hold)
CASES = [
    ("stats_tokens=0", lambda f: ["tracker.stats_tokens=0"], "tracker.stats_tokens must be > 0"),
    ("loss_chunk_tokens=0", lambda f: ["trainer.loss_chunk_tokens=0"],
     "trainer.loss_chunk_tokens must be > 0"),
    ("lr=inf", lambda f: ["optim.lr=inf"], "optim.lr must be a finite number"),
    ("seed=-1", lambda f: ["seed=-1"], "seed must be in [0, 2**32), got -1"),
    ("+key typo", lambda f: ["+trainer.max_step=5"], "unknown config key(s) ['trainer.max_step']"),
    ("files, synthetic source", lambda f: [f"data.files=[{f['bad_line.jsonl']}]"],
     "data.files is set but data.source is 'synthetic'"),
    ("jsonl, bad line", lambda f: ["data=text_files", f"data.files=[{f['bad_line.jsonl']}]"],
     "bad_line.jsonl:151: invalid JSON"),
    ("jsonl, numbers", lambda f: ["data=text_files", f"data.files=[{f['numbers.jsonl']}]"],
     "numbers.jsonl: row 1's 'text' (data.text_field) is int 5, not text"),
    ("devices=abc", lambda f: ["trainer.devices=abc"], "trainer.devices must be"),
    ("precision=foo", lambda f: ["trainer.precision=foo"], "trainer.precision must be one of"),
    ("fractions", lambda f: ["tracker.faithfulness_fractions=[0.1,1.5]"],
     "tracker.faithfulness_fractions"),
    ("missing data file", lambda f: ["data=text_files", "data.files=[/nowhere/a.txt]"],
     "no such file: /nowhere/a.txt"),
    ("empty data file", lambda f: ["data=text_files", f"data.files=[{f['empty.txt']}]"],
     "empty.txt is empty"),
    ("blank data file", lambda f: ["data=text_files", f"data.files=[{f['blank.txt']}]"],
     "blank.txt holds only whitespace"),
    ("binary data file", lambda f: ["data=text_files", f"data.files=[{f['binary.txt']}]"],
     "binary.txt looks binary"),
    ("latin-1 data file", lambda f: ["data=text_files", f"data.files=[{f['latin1.txt']}]"],
     "latin1.txt is not UTF-8"),
    ("missing probe file", lambda f: ["tracker.probe_file=/nowhere/p.jsonl"], "/nowhere/p.jsonl"),
    ("empty probe file", lambda f: [f"tracker.probe_file={f['empty_probes.jsonl']}"],
     "empty_probes.jsonl: the probe file holds no minimal pairs"),
    ("good == bad", lambda f: [f"tracker.probe_file={f['same_words.jsonl']}"],
     "same_words.jsonl:1: one_prefix_word_good and one_prefix_word_bad are the same"),
    ("missing BLiMP folder", lambda f: ["tracker.probe_file=blimp:/nowhere/blimp"],
     "no BLiMP folder at /nowhere/blimp"),
    ("missing lexicon", lambda f: ["tracker.lexicons=[/nowhere/lex.tsv]"], "/nowhere/lex.tsv"),
    ("lexicon is a folder", lambda f: [f"tracker.lexicons=[{f['folder']}]"],
     "cannot read lexicon"),
    ("lexicon maps nothing", lambda f: [f"tracker.lexicons=[{f['lexicon_none.tsv']}]"],
     "no word of the lexicon maps"),
    ("missing function words", lambda f: ["tracker.function_words=/nowhere/fw.txt"],
     "tracker.function_words: cannot read /nowhere/fw.txt"),
    ("resume, no checkpoint", lambda f: ["ckpt_path=last"], "ckpt_path=last: no checkpoint at"),
    ("resume, random bytes", lambda f: [f"ckpt_path={f['random.ckpt']}"],
     "random.ckpt: cannot read"),
]


# Every `python train.py` run of this module whose process is not the point (the bad inputs,
# the resumes below) runs in one driver process, planned here and run before the tests that
# read it (on one xdist worker: conftest.py).


def plan_bad_inputs(tmp: Path) -> dict[str, list[str]]:
    files = bad_files(tmp)
    return {case: [*QUICK, *overrides(files), f"hydra.run.dir={tmp / 'runs' / str(i)}"]
            for i, (case, overrides, _) in enumerate(CASES)}


@pytest.fixture(scope="module")
def driven(tmp_path_factory, cache_dir, tiny_run) -> tuple[Path, dict[str, dict]]:
    """(the folder the planned runs use, each run's exit code, stdout and stderr)."""
    tmp = tmp_path_factory.mktemp("driven")
    plan = plan_bad_inputs(tmp)
    for planner in (plan_truncated_checkpoint, plan_resume_without_an_override,
                    plan_moved_run, plan_failed_resume):
        plan.update(planner(tmp, tiny_run))
    return tmp, train_in_one_process(cache_dir, plan)


def succeeded(result: dict) -> dict:
    assert result["code"] == 0, f"train.py failed ({result['code']}):\n{result['stderr'][-4000:]}"
    return result


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it_with_exit_2(case, driven, cache_dir):
    name, _, expected = case
    result = driven[1][name]
    assert result["code"] == 2, result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-2000:]
    last = result["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    assert not list(Path(cache_dir).glob("*.tmp*")), "a failed data build left a temp folder"
    assert "weights_only=False" not in last


def test_one_bad_input_through_a_real_process(cache_dir, tmp_path):
    """The same, end to end through `python train.py` (exit status as the shell sees it)."""
    proc = run_train(cache_dir, *QUICK, "optim.lr=inf", f"hydra.run.dir={tmp_path / 'run'}",
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: optim.lr must be a finite number, got inf"


def test_the_error_that_names_the_file_is_the_one_reported():
    """A full disk stops a snapshot (AtomicWriteError), then the CSV logger fails as
    Lightning shuts down: train.py reports the first, not the later traceback."""
    import normx_launch  # train.py's launch guards

    try:
        try:
            raise AtomicWriteError(28, "could not write run/normx/metrics.jsonl (No space left "
                                       "on device); the previous version is intact")
        except AtomicWriteError:
            raise OSError(28, "No space left on device: csv/metrics.csv")
    except OSError as err:
        cause = normx_launch.user_facing(err, (AtomicWriteError,))
    assert isinstance(cause, AtomicWriteError) and "metrics.jsonl" in str(cause)
    assert normx_launch.user_facing(ValueError("x"), (AtomicWriteError,)) is None


def test_stats_tokens_zero_is_rejected_and_null_means_the_whole_stream():
    with pytest.raises(ConfigError, match="tracker.stats_tokens"):
        validate(Config(tracker=TrackerConfig(stats_tokens=0)))
    validate(Config(tracker=TrackerConfig(stats_tokens=None)))


def plan_truncated_checkpoint(tmp: Path, tiny_run: Path) -> dict[str, list[str]]:
    run = tmp / "truncated"
    (run / "checkpoints").mkdir(parents=True)
    whole = (tiny_run / "checkpoints" / "step_00000004.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    return {"truncated": [*QUICK, "ckpt_path=last", f"hydra.run.dir={run}"]}


def test_truncated_checkpoint_on_resume_is_named(driven):
    proc = driven[1]["truncated"]
    assert proc["code"] == 2 and "Traceback" not in proc["stderr"]
    assert "last.ckpt: cannot read checkpoint" in proc["stderr"].strip().splitlines()[-1]


# -- resume whatever the settings ------------------------------------------------------------
def plan_resume_without_an_override(tmp: Path, tiny_run: Path) -> dict[str, list[str]]:
    run = tmp / "forgot_override"
    base = [o for o in TINY if not o.startswith("tracker.every_n_steps")] + ["logger=none"]
    return {"every 2": [*base, "tracker.every_n_steps=2", "tracker.log_spaced=false",
                        f"hydra.run.dir={run}"],
            "every 2, as it was": ["--copy", str(run / "normx"), str(tmp / "forgot_first" / "normx")],
            "every 2, resumed": [*base, "tracker.log_spaced=false", "trainer.max_steps=12",
                                 f"ckpt_path={run / 'checkpoints' / 'step_00000004.ckpt'}",
                                 f"hydra.run.dir={run}"]}


def test_resume_without_repeating_an_override_continues_the_same_record(driven):
    """First run snapshots every 2 steps; the resume (from step 4) forgets the override
    (the preset's every 4): one record, no rows lost, tokens_seen continuing, the change
    named."""
    tmp, results = driven
    run = tmp / "forgot_override"
    succeeded(results["every 2"])
    first = read_metrics(tmp / "forgot_first")
    assert [r["step"] for r in first] == [0, 2, 4, 6, 8]
    proc = succeeded(results["every 2, resumed"])
    assert not list(run.glob("normx.replaced-*")), "the record was set aside"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 2, 4, 8, 12]
    tokens_per_step = first[1]["tokens_seen"] / 2
    assert [r["tokens_seen"] for r in rows] == [s * tokens_per_step for s in (0, 2, 4, 8, 12)]
    assert rows[2] == first[2]  # rows up to the checkpoint are the first run's
    meta = json.loads((run / "normx" / "meta.json").read_text())
    assert meta["resumed"] == [{"at_step": 4, "changed": {"every_n_steps": [2, 4]}}]
    assert "every_n_steps: 2 -> 4" in proc["stdout"] + proc["stderr"]
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    assert "tracker.every_n_steps=2" in overrides, "the first run's job files were rewritten"
    assert list((run / ".hydra").glob("resume-*/overrides.yaml"))


def plan_moved_run(tmp: Path, tiny_run: Path) -> dict[str, list[str]]:
    moved = tmp / "moved"
    shutil.copytree(tiny_run, moved)
    return {"moved, tracker off": [*TINY, "tracker=off", "trainer.max_steps=12",
                                   "ckpt_path=last", f"hydra.run.dir={moved}"],
            "moved, tracker off, as it was": ["--copy", str(moved / "checkpoints"),
                                              str(tmp / "moved_checkpoints_12")],
            "moved, other gold": [*TINY, "trainer.max_steps=16", "tracker.window=3",
                                  "ckpt_path=last", f"hydra.run.dir={moved}"]}


def test_a_moved_run_resumed_with_the_tracker_off_then_other_gold(tiny_run, driven):
    """The run folder was moved, then resumed (`ckpt_path=last`) with `tracker=off` to step
    12, then with the tracker and another co-occurrence window to 16. last.ckpt keeps its
    name; the W&B run goes on under its id; the record is continued, not replaced, with
    tokens_seen over the untracked stretch estimated from a batch (meta.json says so); and
    the gold the first rows were measured against is kept, the change named."""
    tmp, results = driven
    moved = tmp / "moved"
    succeeded(results["moved, tracker off"])
    checkpoints = tmp / "moved_checkpoints_12"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12
    assert not list(checkpoints.glob("*-v*.ckpt"))  # Lightning's "last-v1" when it forgot
    proc = succeeded(results["moved, other gold"])
    run_id = (moved / "wandb" / "normx-run-id").read_text()
    pieces = sorted((moved / "wandb").glob("offline-run-*"))
    assert len(pieces) == 3 and all(p.name.endswith(f"-{run_id}") for p in pieces)

    assert not list(moved.glob("normx.replaced-*"))
    rows = read_metrics(moved)
    # 12, the resume's own step, is on the schedule: recorded although the tracker was off
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8, 12, 16]
    tokens_per_step = rows[1]["tokens_seen"]
    assert [r["tokens_seen"] for r in rows] == [r["step"] * tokens_per_step for r in rows]
    meta = json.loads((moved / "normx" / "meta.json").read_text())
    assert meta["tokens_seen_estimated"] == {"from_step": 8, "to_step": 12,
                                             "tokens_per_step": tokens_per_step}

    assert meta["resumed"] == [{"at_step": 12, "changed": {"window": [5, 3]}}]
    assert "window: 5 -> 3" in proc["stdout"] + proc["stderr"]
    earlier = GoldStatistics.load(moved / "normx" / "gold.until_step_00000012.npz")
    assert earlier.same_as(GoldStatistics.load(tiny_run / "normx" / "gold.npz"))
    now = GoldStatistics.load(moved / "normx" / "gold.npz")
    assert now.window == 3 and not now.same_as(earlier)


def plan_failed_resume(tmp: Path, tiny_run: Path) -> dict[str, list[str]]:
    job = tmp / "sweep" / "0"
    job.mkdir(parents=True)
    for part in (".hydra", "normx", "checkpoints"):
        shutil.copytree(tiny_run / part, job / part)
    return {"failed resume": [*QUICK, "model.n_layer=3", "tracker.probe_file=/nowhere.jsonl",
                              "ckpt_path=last", f"hydra.run.dir={job}"]}


def test_a_failed_resume_leaves_the_job_files_and_the_sweep_grouping_alone(tiny_run, driven):
    from analysis.load import load_sweep

    tmp, results = driven
    sweep, job = tmp / "sweep", tmp / "sweep" / "0"
    before = (tiny_run / ".hydra" / "overrides.yaml").read_bytes()  # as copied
    proc = results["failed resume"]
    assert proc["code"] == 2 and "Traceback" not in proc["stderr"]
    # A resume that builds another model than the checkpoint's says which settings differ.
    last = proc["stderr"].strip().splitlines()[-1]
    assert "last.ckpt: its weights do not fit this run's model (model.n_layer: 1 -> 3" in last, last
    assert (job / ".hydra" / "overrides.yaml").read_bytes() == before
    (run,) = load_sweep(sweep)
    assert run.setting("model.n_layer") == "1"  # what the record ran with


def test_legacy_checkpoint_key_is_found():
    state = {"last_step": 40, "tokens_seen": 5120}
    checkpoint = {"callbacks": {"NormTracker{'every_n_steps': 100}": state}}
    assert tracker_state(checkpoint) == state
    gold = compute_gold([np.arange(20) % 10], 10, shuffle_correction=False)
    tracker = NormTracker(gold)
    tracker.on_load_checkpoint(None, None, checkpoint)
    assert (tracker.last_step, tracker.tokens_seen) == (40, 5120)
    tracker.load_state_dict({})  # a state without keys: defaults, no KeyError
    assert (tracker.last_step, tracker.tokens_seen) == (-1, None)  # not counted: null
    assert tracker.state_key == "NormTracker"


# -- two runs, one folder ---------------------------------------------------------------------
def test_the_record_lock_names_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "normx.lock").write_text(json.dumps(
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}))
        with pytest.raises(RecordLockedError, match=rf"in use by pid {sleeper.pid}"):
            RecordLock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(UserWarning, match="no longer running"):
        lock = RecordLock.acquire(tmp_path)
    assert json.loads((tmp_path / "normx.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "normx.lock").exists()


def test_two_runs_started_into_one_folder(cache_dir, tmp_path):
    """The second stops at start-up naming the folder and the first's pid; the first's
    record is its own, whole."""
    run = tmp_path / "run"
    long = [o for o in TINY if not o.startswith("trainer.max_steps")]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *long, "trainer.max_steps=24", "logger=none",
         f"hydra.run.dir={run}"], env=subprocess_env(cache_dir), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # (the lock comes before Hydra writes the job files: wait until training has begun)
    while not (run / "normx" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "normx.lock").exists(), "the first run never took the lock"
    first.send_signal(signal.SIGSTOP)  # paused mid-run: it holds the folder, deterministically
    job_files = {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")}
    try:
        second = run_train(cache_dir, *QUICK, "seed=7", f"hydra.run.dir={run}", check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by pid {first.pid}" in second.stderr and str(run / "normx") in second.stderr
    # Refused before it changed anything: the first run's job files still describe it.
    assert {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")} == job_files
    assert not list(run.glob("*.replaced-*"))
    assert [r["step"] for r in read_metrics(run)][-1] == 24
    assert not list(run.glob("normx.replaced-*")) and not (run / "normx.lock").exists()


def test_replay_into_a_folder_holding_another_record_sets_it_aside(tiny_run, cache_dir, tmp_path):
    out = tmp_path / "out"
    (out / "normx").mkdir(parents=True)
    (out / "normx" / "meta.json").write_text(json.dumps({"vocab_hash": "other"}))
    (out / "normx" / "metrics.jsonl").write_text('{"step": 0}\n')
    replay([str(tiny_run / "checkpoints" / "step_00000004.ckpt"), "--like", str(tiny_run),
            "--out", str(out)])
    (aside,) = out.glob("normx.replaced-*")
    assert json.loads((aside / "meta.json").read_text()) == {"vocab_hash": "other"}
    assert [r["step"] for r in read_metrics(out)] == [4]
    replay([str(tiny_run / "checkpoints" / "step_00000008.ckpt"), "--like", str(tiny_run),
            "--out", str(out)])
    assert [r["step"] for r in read_metrics(out)] == [4, 8]
    assert len(list(out.glob("normx.replaced-*"))) == 1  # the same replay continues


# -- writes -----------------------------------------------------------------------------------
def test_record_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        records.atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        records.atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_a_checkpoint_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(3)}, path)
    before = path.read_bytes()

    def full_disk(obj, handle, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(AtomicWriteError, match=r"could not write .*last\.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"x": torch.ones(3)}, path)
    assert path.read_bytes() == before and not list(path.parent.glob(".*.tmp"))


# -- DDP ----------------------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch, lightning as L
    sys.path.insert(0, {tests!r})
    from test_tracker import PlainLM, plain_data
    from normx_track import NormTracker, compute_gold
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    model = PlainLM(50, tie=True)
    with torch.no_grad():
        model.lm.transformer.wte.weight[7] = float("nan")
    loader, _ = plain_data(50)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", devices=2, strategy="ddp",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir={out!r},
                        use_distributed_sampler=False,
                        callbacks=[NormTracker(gold, every_n_steps=100, min_count=1,
                                               stop_on_nonfinite=True)])
    trainer.fit(model, loader)
    with open({out!r} + f"/stopped_rank{{trainer.global_rank}}", "w") as f:
        f.write(str(trainer.global_step))
""")


@pytest.mark.slow  # 18 s: two gloo processes
@pytest.mark.timeout(300)
def test_stop_on_nonfinite_stops_every_ddp_rank(tmp_path):
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path / "run")))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env=subprocess_env(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stops = {p.name: int(p.read_text()) for p in (tmp_path / "run").glob("stopped_rank*")}
    assert set(stops) == {"stopped_rank0", "stopped_rank1"}, proc.stdout[-2000:]
    assert all(step < 6 for step in stops.values()), stops
    assert read_metrics(tmp_path / "run")[0]["normx/norm/n_nonfinite"] >= 1
