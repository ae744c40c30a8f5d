"""The tracker's lifecycle and its misuse (issues 28, 30, 31): every misuse refused or
warned in one line saying what to do, no row lost at a resume boundary, a closed or
displaced tracker inert, the HF callback resumed with two Trainers or none before."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from normx_track import Tracker, compute_gold
from normx_track.errors import InputError
from normx_track.record import store
from normx_track.record.store import read_metrics
from normx_track.tracker.core import TrackerUsageError

V = 64


def tiny_model(vocab_size: int = V) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=8, n_layer=1, n_head=2,
                                      n_positions=16))


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return tiny_model()


@pytest.fixture(scope="module")
def gold():
    rng = np.random.default_rng(0)
    return compute_gold([rng.integers(0, V, 200) for _ in range(5)], vocab_size=V, window=2)


def steps_of(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run)]


def tracker(gold, out, **kwargs) -> Tracker:
    return Tracker(gold, out_dir=out, every_n_steps=kwargs.pop("every_n_steps", 4), min_count=1,
                   **kwargs)


# -- issue 28 §1: misuse, caught with what to do -------------------------------------------------
def test_load_state_dict_after_the_first_step_is_refused(tmp_path, model, gold):
    t = tracker(gold, tmp_path)
    t.step(model, 0)
    with pytest.raises(TrackerUsageError, match="load_state_dict.*before the first step"):
        t.load_state_dict({"last_step": 8, "tokens_seen": 80})
    assert t.last_step == 0
    t.close()


def test_a_first_call_past_step_0_warns_and_records_that_step(tmp_path, model, gold):
    t = tracker(gold, tmp_path)
    with pytest.warns(UserWarning, match=r"first step\(\) call is at step 1.*no step 0"):
        row = t.step(model, 1, tokens_seen=10)
    assert row is not None and row["step"] == 1  # not taken for a resume without state
    t.step(model, 2, tokens_seen=20)
    t.close()
    assert steps_of(tmp_path) == [1, 2]


def test_a_backwards_step_is_refused_and_a_repeat_with_other_tokens_warned(tmp_path, model, gold):
    t = tracker(gold, tmp_path)
    for s in range(3):
        t.step(model, s, tokens_seen=10 * s)
    with pytest.raises(TrackerUsageError, match=r"step\(1\) after step\(2\)"):
        t.step(model, 1, tokens_seen=10)
    with pytest.warns(UserWarning, match="step 2 was given twice, with tokens_seen 20 and then "
                                         "25.*micro-batch"):
        t.step(model, 2, tokens_seen=25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same step with the same tokens: fine
        t.step(model, 2, tokens_seen=25)
    t.close()
    assert steps_of(tmp_path) == [0, 1, 2]


def test_a_loop_that_skips_schedule_steps_is_warned_once(tmp_path, model, gold):
    t = tracker(gold, tmp_path / "every12", every_n_steps=12)
    t.step(model, 0)
    with pytest.warns(UserWarning) as caught:
        for s in (12, 24, 36):
            t.step(model, s)
    messages = [str(w.message) for w in caught if "passed without a call" in str(w.message)]
    assert len(messages) == 1 and "step(s) 1, 2, 4, 8" in messages[0]
    assert "every optimizer step" in messages[0] and "due(step)" in messages[0]
    t.close()
    # Steps counted in micro-batches of 4 jump by 4: the same warning names what is missed.
    t = tracker(gold, tmp_path / "micro", every_n_steps=8)
    t.step(model, 0)
    with pytest.warns(UserWarning, match=r"step\(s\) 1, 2 were passed.*not micro-batches"):
        t.step(model, 4)
    t.close()
    # Calling only when due() says so skips nothing the schedule has: no warning.
    t = tracker(gold, tmp_path / "due", every_n_steps=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for s in range(40):
            if t.due(s):
                t.step(model, s)
    t.close()
    assert steps_of(tmp_path / "due") == [0, 1, 2, 4, 8, 12, 24, 36]


class FakeTokenizer:
    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_vocab_takes_a_list_a_tokenizer_or_a_dict_by_id_and_refuses_the_rest(tmp_path, model,
                                                                            gold):
    tokens = [f"t{i}" for i in range(V)]
    shuffled = dict(sorted({t: i for i, t in enumerate(tokens)}.items(), key=lambda kv: -kv[1]))
    for name, vocab in {"list": tokens, "tokenizer": FakeTokenizer(shuffled),
                        "dict": shuffled}.items():
        with Tracker(gold, vocab, out_dir=tmp_path / name) as t:
            t.step(model, 0)
        assert json.loads((tmp_path / name / "normx" / "vocab.json").read_text()) == tokens, name
    for bad, said in [(5, "got int"), ("abc", "got str"), ({"a": 0, "b": 2}, r"no token for id"),
                      ([1, 2], r"vocab\[0\] is int")]:
        with pytest.raises(InputError, match=said):
            Tracker(gold, bad, out_dir=tmp_path / "bad")


def test_an_embedding_much_larger_than_the_gold_warns_naming_both_sizes(tmp_path, gold):
    with pytest.warns(UserWarning, match="embedding has 300 rows but the gold statistics cover 64"):
        with tracker(gold, tmp_path / "big") as t:
            t.step(tiny_model(300), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padded up to a multiple of 128: no warning
        with tracker(gold, tmp_path / "padded") as t:
            t.step(tiny_model(128), 0)


def test_tokens_seen_not_given_is_null_in_the_row(tmp_path, model, gold):
    with tracker(gold, tmp_path) as t:
        assert t.step(model, 0)["tokens_seen"] is None
        t.step(model, 1)
        assert t.state_dict()["tokens_seen"] is None
    assert all(np.isnan(r["tokens_seen"]) for r in read_metrics(tmp_path))  # null on disk


def test_a_second_tracker_on_the_folder_displaces_the_first(tmp_path, model, gold):
    first = tracker(gold, tmp_path)
    first.step(model, 0)
    first.step(model, 1)
    second = tracker(gold, tmp_path)  # the notebook cell, run again
    with pytest.warns(UserWarning, match="second Tracker opened this run folder"):
        second.step(model, 0)
    with pytest.raises(TrackerUsageError, match="displaced.*newer Tracker"):
        first.step(model, 2)
    second.step(model, 1)
    assert steps_of(tmp_path) == [0, 1]
    second.close()
    assert not (tmp_path / "normx.lock").exists()  # neither left its handle behind


def test_a_closed_tracker_is_inert(tmp_path, model, gold):
    t = tracker(gold, tmp_path)
    t.step(model, 0)
    t.close()
    with pytest.raises(TrackerUsageError, match="closed"):
        t.step(model, 8)
    with pytest.raises(TrackerUsageError, match="closed"):
        t.snapshot(model, 9)
    newer = tracker(gold, tmp_path)
    newer.load_state_dict(t.state_dict())
    newer.step(model, 1)
    with pytest.raises(TrackerUsageError, match="closed"):  # not into the newer record either
        t.step(model, 2)
    newer.close()
    assert steps_of(tmp_path) == [0, 1]


def test_an_out_dir_that_is_a_file_or_read_only_is_an_input_error(tmp_path, model, gold,
                                                                  monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(InputError, match=f"{a_file}: the run folder is a file"):
        tracker(gold, a_file)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):  # root ignores chmod: the file system refuses instead
        if str(path).startswith(str(read_only)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    t = tracker(gold, read_only)
    monkeypatch.setattr(store.os, "open", refuse)
    with pytest.raises(InputError, match=f"{read_only}.*cannot write the record there"):
        t.step(model, 0)
    monkeypatch.undo()
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="cannot write there"):
        tracker(gold, read_only / "run")


@pytest.mark.parametrize("state, said", [
    ({"last_step": 3, "losses": 5}, "losses must map"),
    ({"last_step": 3, "losses": {"train/loss": 5}}, r"losses\['train/loss'\] must be \[value, step\]"),
    ({"last_step": 3, "tokens_seen": -4}, "tokens_seen must be a whole number >= 0"),
    ({"last_step": 3, "epoch": 2}, r"unknown key\(s\) \['epoch'\]"),
    ({"last_step": "3"}, "last_step must be a whole number"),
    ([3], "expected the dict"),
])
def test_a_malformed_state_is_one_error_naming_the_key(tmp_path, gold, state, said):
    with pytest.raises(InputError, match=said):
        tracker(gold, tmp_path).load_state_dict(state)


# -- issue 28 §2, 30 §3: no row lost at a resume ---------------------------------------------
def plain_loop(gold, out, model, steps, state=None, checkpoint_at=(), end_row=True):
    """A plain loop (the model does not change: rows depend on the step only); returns the
    states saved at `checkpoint_at`, taken before the end-of-training row, as a loop does."""
    saved = {}
    t = tracker(gold, out)
    if state is not None:
        t.load_state_dict(state)
    with t:
        for s in steps:
            t.step(model, s, tokens_seen=10 * s)
            if s in checkpoint_at:
                saved[s] = t.state_dict()
        if end_row and steps[-1] > t.last_step:
            t.snapshot(model, steps[-1], tokens_seen=10 * steps[-1])
    return saved


def test_a_resume_keeps_the_end_of_training_row_written_after_the_checkpoint(tmp_path, model, gold):
    saved = plain_loop(gold, tmp_path, model, range(0, 11), checkpoint_at=(10,))
    assert saved[10]["last_step"] == 8 and steps_of(tmp_path) == [0, 1, 2, 4, 8, 10]
    plain_loop(gold, tmp_path, model, range(10, 17), state=saved[10])
    assert steps_of(tmp_path) == [0, 1, 2, 4, 8, 10, 12, 16]
    # Killed after the checkpoint, before the end row: the resume is the unbroken run.
    broken, whole = tmp_path / "broken", tmp_path / "whole"
    saved = plain_loop(gold, broken, model, range(0, 11), checkpoint_at=(10,), end_row=False)
    plain_loop(gold, broken, model, range(10, 17), state=saved[10])
    plain_loop(gold, whole, model, range(0, 17))
    assert read_metrics(broken) == read_metrics(whole)


def test_a_forgotten_load_state_dict_records_the_scheduled_step_again(tmp_path, model, gold):
    saved = plain_loop(gold, tmp_path, model, range(0, 24), checkpoint_at=(20,))
    assert steps_of(tmp_path) == [0, 1, 2, 4, 8, 12, 16, 20, 23]  # crashed after 23
    plain_loop(gold, tmp_path, model, range(20, 25))  # load_state_dict(saved[20]) forgotten
    assert steps_of(tmp_path) == [0, 1, 2, 4, 8, 12, 16, 20, 24]
    assert saved[20]["last_step"] == 20


def test_a_resume_at_a_schedule_step_records_it_with_or_without_state(tmp_path, model, gold):
    # The tracker was off from step 9 to 12 (no state), then on again from step 12.
    plain_loop(gold, tmp_path, model, range(0, 9), end_row=False)
    t = tracker(gold, tmp_path)
    with t:
        assert t.step(model, 12, tokens_seen=120)["step"] == 12
    assert steps_of(tmp_path) == [0, 1, 2, 4, 8, 12]
    # The state was saved before step 12's call: the resume at 12 records it.
    plain_loop(gold, tmp_path / "b", model, range(0, 12), end_row=False)
    t = tracker(gold, tmp_path / "b")
    t.load_state_dict({"last_step": 8, "tokens_seen": 110, "losses": {}})
    with t:
        t.step(model, 12, tokens_seen=120)
    assert steps_of(tmp_path / "b") == [0, 1, 2, 4, 8, 12]


# -- issue 28 §1: a rank that skips step() is named, not waited for ---------------------------
RANK_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np, torch, torch.distributed as dist
    from transformers import GPT2Config, GPT2LMHeadModel
    from normx_track import Tracker, compute_gold
    from normx_track.tracker.distributed import RankMissingError, TorchDistributed
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    rng = np.random.default_rng(0)
    gold = compute_gold([rng.integers(0, 64, 200) for _ in range(5)], vocab_size=64, window=2)

    def track(mode, timeout_s):
        tracker = Tracker(gold, out_dir=f"{out}/{mode}", every_n_steps=4, min_count=1,
                          distributed=TorchDistributed(timeout_s=timeout_s))
        for step in range(5):
            if mode == "all" or rank == 0:
                tracker.step(model, step, tokens_seen=10 * step,
                             losses={"train/loss": torch.tensor(float(rank))})
        return tracker

    # Every rank calling, with a roll call long enough that ranks a few seconds apart on a
    # loaded machine are not taken for a missing one: no error, the rows recorded.
    track("all", timeout_s=60).close()
    dist.barrier()
    # Then a second tracker in the same process group, called by rank 0 only: a short roll
    # call, where rank 1 is meant to be missing.
    start = time.monotonic()
    try:
        track("rank0_only", timeout_s=2)
    except RankMissingError as err:
        open(f"{out}/error{rank}.txt", "w").write(f"{time.monotonic() - start:.1f} {err}")
    # Rank 1 trains on without the tracker; it leaves when rank 0 has said why.
    while not os.path.exists(f"{out}/error0.txt") and time.monotonic() - start < 60:
        time.sleep(0.1)
    os._exit(0)
""")


def run_two_ranks(tmp_path: Path) -> Path:
    out = tmp_path / "ranks"
    (out / "all").mkdir(parents=True)
    (out / "rank0_only").mkdir()
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output[-3000:]
    return out


@pytest.mark.timeout(180)
def test_ddp_a_rank_that_skips_step_is_named_within_seconds(tmp_path):
    out = run_two_ranks(tmp_path)
    rows = read_metrics(out / "all")  # every rank calling: no error, the rows recorded
    assert [r["step"] for r in rows] == [0, 1, 2, 4]
    assert rows[-1]["train/loss"] == pytest.approx(0.5)  # averaged over the two ranks
    assert sorted(p.name for p in out.glob("error*.txt")) == ["error0.txt"]
    elapsed, message = (out / "error0.txt").read_text().split(" ", 1)
    assert float(elapsed) < 10
    # (rank 1's last call was to the first tracker)
    assert ("rank 1 (its last tracker call: tracker.snapshot at step 4) did not reach "
            "tracker.open at step 0") in message
    assert "Every rank must call tracker.step()" in message


# -- the HF Trainer callback: resume boundaries, a callback added late, two Trainers ----------
class Blocks(torch.utils.data.Dataset):
    def __init__(self, n: int = 64):
        self.ids = torch.randint(0, V, (n, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def hf_trainer(gold, out: Path, max_steps: int, callback=True, save_steps: int = 6, **args):
    from transformers import Trainer, TrainingArguments

    from normx_track.hf import NormTrackerCallback

    torch.manual_seed(0)
    callbacks = [NormTrackerCallback(gold, every_n_steps=4, min_count=1)] if callback else []
    arguments = TrainingArguments(output_dir=str(out), max_steps=max_steps, save_steps=save_steps,
                                  per_device_train_batch_size=4, learning_rate=1e-3,
                                  logging_steps=1, report_to=[], use_cpu=True, seed=0,
                                  dataloader_num_workers=0, disable_tqdm=True, **args)
    return Trainer(model=tiny_model(), args=arguments, train_dataset=Blocks(),
                   callbacks=callbacks)


def tracker_of(trainer):
    from normx_track.hf import NormTrackerCallback

    (found,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, NormTrackerCallback)]
    return found


def test_hf_resume_keeps_the_end_row_written_after_on_save(tmp_path, gold):
    """checkpoint-6 is saved (state: step 4 recorded) before on_train_end records step 6."""
    whole = tmp_path / "whole"
    hf_trainer(gold, whole, 6).train()
    assert steps_of(whole) == [0, 1, 2, 4, 6]
    state = json.loads((whole / "checkpoint-6" / "normx_tracker.json").read_text())
    assert state["last_step"] == 4
    hf_trainer(gold, whole, 8).train(resume_from_checkpoint=str(whole / "checkpoint-6"))
    assert steps_of(whole) == [0, 1, 2, 4, 6, 8]  # the end row of the first run is kept

    # Killed between on_save and on_train_end (no end row): the resume is the unbroken run.
    killed, unbroken = tmp_path / "killed", tmp_path / "unbroken"
    hf_trainer(gold, killed, 6, save_steps=6).train()
    metrics = killed / "normx" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    hf_trainer(gold, killed, 8).train(resume_from_checkpoint=str(killed / "checkpoint-6"))
    hf_trainer(gold, unbroken, 8).train()
    assert steps_of(killed) == steps_of(unbroken) == [0, 1, 2, 4, 8]


def test_hf_callback_added_to_a_run_resumed_without_it(tmp_path, gold):
    out = tmp_path / "run"
    hf_trainer(gold, out, 6, callback=False).train()
    trainer = hf_trainer(gold, out, 8)
    with pytest.warns(UserWarning, match="first step.*at step 6"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))  # no KeyError
    assert steps_of(out) == [8]
    saved = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["NormTrackerCallback"]["attributes"]["tracker_state"][
        "last_step"] == 8  # step 8 is on the schedule: recorded before the save


def test_two_hf_trainers_restore_their_own_callbacks(tmp_path, gold):
    a, b = tmp_path / "a", tmp_path / "b"
    hf_trainer(gold, a, 6).train()
    (a / "checkpoint-6" / "normx_tracker.json").unlink()  # only trainer_state.json has it
    first = hf_trainer(gold, a, 8, restore_callback_states_from_checkpoint=True)
    second = hf_trainer(gold, b, 8, restore_callback_states_from_checkpoint=True)  # after A
    mine = tracker_of(first)
    first.train(resume_from_checkpoint=str(a / "checkpoint-6"))
    assert mine in first.callback_handler.callbacks
    assert tracker_of(second).core.last_step == -1  # B's untouched
    assert steps_of(a) == [0, 1, 2, 4, 6, 8] and not (b / "normx").exists()


# -- Lightning: resumed with the tracker on after a stretch with it off -----------------------
def test_lightning_resume_at_a_schedule_step_after_the_tracker_was_off(tmp_path, gold):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from normx_track import NormTracker

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = tiny_model()

        def training_step(self, batch, batch_idx):
            return self.lm(input_ids=batch[0], labels=batch[0]).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ids = torch.randint(0, V, (64, 8), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=4)

    def fit(steps, callbacks, ckpt_path=None):
        L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path,
                  callbacks=[*callbacks, ModelCheckpoint(dirpath=tmp_path / "ckpt",
                                                         every_n_train_steps=4, save_top_k=-1,
                                                         filename="{step}")],
                  ).fit(Module(), loader, ckpt_path=ckpt_path)

    fit(8, [NormTracker(gold, every_n_steps=4, min_count=1, on_checkpoint=False)])
    fit(12, [], ckpt_path=str(tmp_path / "ckpt" / "step=8.ckpt"))  # tracker=off
    fit(16, [NormTracker(gold, every_n_steps=4, min_count=1, on_checkpoint=False)],
        ckpt_path=str(tmp_path / "ckpt" / "step=12.ckpt"))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8, 12, 16]
    assert [r["tokens_seen"] for r in rows] == [32 * r["step"] for r in rows]  # 12's estimated
