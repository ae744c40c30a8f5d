"""Replay of a released checkpoint suite, on a local suite built here: a tiny GPT-NeoX (untied,
as Pythia) trained a few steps and saved with `save_pretrained` at steps 0, 1, 2, 4, 8, plus a
step 16 that serves step 8's weights (what EleutherAI/pythia#205 found). The hub path is the
same code with another file opener (`HubFiles`); nothing here reaches the network."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from analysis.replay import main as replay
from normx_track.gold.statistics import compute_gold
from normx_track.keys import REPLAY_BYTES_READ, REPLAY_FILE_BYTES, REPLAY_SAME_EMBEDDINGS
from normx_track.record.checkpoint_loader import CheckpointError
from normx_track.record.embedding_reader import LocalFiles, read_embeddings
from normx_track.record.store import list_snapshots, load_snapshot, read_metrics
from normx_track.record.suite import step_of, tokens_of
from normx_track.record.vocabulary import token_strings

ROOT = Path(__file__).resolve().parents[1]
STEPS = (0, 1, 2, 4, 8)
TOKENS_PER_STEP = 4 * 16
WORDS = ("the a one some every key keys cabinet cabinets dog dogs window windows author "
         "authors guard guards table tables is are was were near on by with barks bark "
         "laughs laugh sleeps sleep quickly slowly loudly red old small").split()


def _text(seed: int, n: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    words = rng.permutation(WORDS)  # another seed: other frequent words, another BPE
    weights = 1 / np.arange(1, len(words) + 1)  # Zipfian, so counts differ
    return [" ".join(rng.choice(words, size=rng.integers(5, 14), p=weights / weights.sum()))
            + " ." for _ in range(n)]


def _model(rows: int, seed: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=rows, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=256,
                           max_position_embeddings=64, tie_word_embeddings=False)
    return GPTNeoXForCausalLM(config)


def build_suite(folder: Path, seed: int = 0) -> Path:
    """A local suite (one HF folder per step) with its tokenizer, gold.npz and vocab.json."""
    from normx_track.training.data.tokenizer import train_bpe

    texts = _text(seed)
    tokenizer = train_bpe(texts, 300, folder / "tokenizer")
    docs = [np.array(tokenizer(t)["input_ids"]) for t in texts]
    compute_gold(docs, len(tokenizer), shuffle_correction=False).save(folder / "gold.npz")
    (folder / "vocab.json").write_text(json.dumps(token_strings(tokenizer)))
    rows = -(-len(tokenizer) // 16) * 16  # padded to a multiple, as Pythia's 50,304 rows
    model = _model(rows, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    ids = torch.tensor(np.concatenate(docs)[: 64 * 16].reshape(16, 64))
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            model.save_pretrained(folder / "suite" / f"step{step}")
            tokenizer.save_pretrained(folder / "suite" / f"step{step}")
        batch = ids[(step % 4) * 4:(step % 4) * 4 + 4]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    shutil.copytree(folder / "suite" / "step8", folder / "suite" / "step16")
    return folder


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return build_suite(tmp_path_factory.mktemp("suite"))


def _replay(suite: Path, out: Path, *extra: str) -> list[dict]:
    replay([str(suite / "suite"), "--gold", str(suite / "gold.npz"), "--min-count", "2",
            "--out", str(out), *extra])
    return read_metrics(out)


def _brute_norms(folder: Path) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    weights = {"input": model.get_input_embeddings().weight,
               "output": model.get_output_embeddings().weight}
    return {side: np.array([np.sqrt(sum(float(x) ** 2 for x in row)) for row in w.detach()])
            for side, w in weights.items()}


def test_rows_equal_a_brute_force_and_the_copy_is_flagged(suite, tmp_path, capsys):
    out = tmp_path / "out"
    rows = _replay(suite, out, "--revisions", "step8", "step16", "step0", "step4", "step2",
                   "step1", "--tokens-per-step", str(TOKENS_PER_STEP))
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8, 16]  # step order, whatever was given
    assert "suite/step16 (step 16) has the embeddings of step 8" in capsys.readouterr().err
    gold = np.load(suite / "gold.npz")
    seen = gold["counts"] >= 2
    for row in rows:
        folder = suite / "suite" / f"step{row['step']}"
        brute = _brute_norms(folder)
        snap = load_snapshot(list_snapshots(out)[row["step"]])
        for side in ("input", "output"):  # untied: both norms recorded
            np.testing.assert_allclose(snap[f"{side}_norm"], brute[side], rtol=1e-5)
        prefix = {"input": "normx/", "output": "normx/output/"}
        for side in ("input", "output"):
            rho = spearmanr(brute[side][: len(seen)][seen], gold["self_information"][seen])[0]
            assert row[f"{prefix[side]}spearman/self_information"] == pytest.approx(rho, abs=1e-6)
        assert row["normx/n_types/self_information"] == int(seen.sum())
        assert row["tokens_seen"] == row["step"] * TOKENS_PER_STEP
    flagged = {r["step"]: r[REPLAY_SAME_EMBEDDINGS] for r in rows}
    assert flagged[16] == 8 and all(np.isnan(v) for s, v in flagged.items() if s != 16)
    meta = json.loads((out / "normx" / "meta.json").read_text())
    assert meta["same_embeddings"] == [[8, 16]]
    assert meta["revisions"] == ["step0", "step1", "step2", "step4", "step8", "step16"]
    assert json.loads((out / "normx" / "vocab.json").read_text()) == \
        json.loads((suite / "vocab.json").read_text())
    # the trained steps differ from one another (else the flag would be no evidence)
    assert len({meta["embedding_fingerprints"][str(s)]["input"] for s in STEPS}) == len(STEPS)


class CountingFiles(LocalFiles):
    """The local opener with every byte read from its files counted, independently of the
    reader's own count."""

    counted = 0

    def open(self, name: str):
        handle, files = super().open(name), self

        class Counting:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def seek(self, *args):
                return handle.seek(*args)

            def read(self, size=-1):
                data = handle.read(size)
                files.counted += len(data) if name.endswith(".safetensors") else 0
                return data
        return Counting()


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_norms_only_reads_the_header_and_the_embeddings_alone(suite):
    from transformers import AutoModelForCausalLM

    folder = suite / "suite" / "step4"
    files = CountingFiles(folder)
    embeddings = read_embeddings(files)
    model = AutoModelForCausalLM.from_pretrained(folder)
    E, U = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    size = (folder / "model.safetensors").stat().st_size
    needed = _header_bytes(folder / "model.safetensors") + (E.numel() + U.numel()) * 4
    assert files.counted == embeddings.bytes_read and embeddings.file_bytes == size  # the
    # reader's own count (the row's normx/replay/bytes_read) is right
    assert files.counted <= 1.01 * needed and size > 3 * needed  # the layers were skipped
    assert torch.equal(embeddings.input, E) and torch.equal(embeddings.output, U)
    from normx_track.attribution.normxlogit import embedding_norms, row_norms
    full = embedding_norms(model)
    assert torch.equal(row_norms(embeddings.input), full["input"])  # exactly, not approx
    assert torch.equal(row_norms(embeddings.output), full["output"])


def test_sharded_and_pickled_checkpoints_give_the_same_embeddings(suite, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(suite / "suite" / "step2")
    sharded = tmp_path / "step2-sharded"
    model.save_pretrained(sharded, max_shard_size="60KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    stored = _stored_state(sharded, index)
    pickled, legacy, pickled_shards = (tmp_path / n for n in ("pickled", "legacy", "bin-shards"))
    for folder in (pickled, legacy, pickled_shards):
        folder.mkdir()
        shutil.copy(sharded / "config.json", folder)
    torch.save(stored, pickled / "pytorch_model.bin")
    torch.save(stored, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    # pythia-12b's layout: three .bin shards, embed_in in the first, embed_out in the last
    names = list(stored)
    parts = {"pytorch_model-00001-of-00003.bin": [n for n in names if "embed_in" in n],
             "pytorch_model-00003-of-00003.bin": [n for n in names if "embed_out" in n]}
    parts["pytorch_model-00002-of-00003.bin"] = [n for n in names if not any(
        n in p for p in parts.values())]
    for shard, part in parts.items():
        torch.save({n: stored[n] for n in part}, pickled_shards / shard)
    (pickled_shards / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, part in parts.items() for n in part}}))
    plain = read_embeddings(LocalFiles(suite / "suite" / "step2"))
    for folder in (sharded, pickled, legacy, pickled_shards):
        got = read_embeddings(LocalFiles(folder))
        assert torch.equal(got.input, plain.input) and torch.equal(got.output, plain.output)
        assert got.fingerprints == plain.fingerprints, folder.name
        assert got.whole_files == (folder is legacy), folder.name  # only it is read whole
    embedding_bytes = plain.input.numel() * 4 + plain.output.numel() * 4
    for folder, files in ((sharded, sorted(set(index["weight_map"].values()))),
                          (pickled, ["pytorch_model.bin"]), (pickled_shards, list(parts))):
        got = read_embeddings(LocalFiles(folder))
        size = sum((folder / f).stat().st_size for f in files)
        assert got.bytes_read < embedding_bytes + 16_000 < size, folder.name  # + headers
    middle = pickled_shards / "pytorch_model-00002-of-00003.bin"
    middle.write_bytes(b"never opened")  # the shard without an embedding is not read at all
    assert torch.equal(read_embeddings(LocalFiles(pickled_shards)).input, plain.input)


def _stored_state(folder: Path, index: dict) -> dict[str, torch.Tensor]:
    """The tensors as the checkpoint stores them (names as saved), from the shards."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(folder / shard))
    return state


def test_an_interrupted_replay_continues_and_workers_keep_step_order(suite, tmp_path):
    whole = _replay(suite, tmp_path / "whole", "--revisions", "all")
    out = tmp_path / "resumed"
    _replay(suite, out, "--revisions", "step0", "step8")
    resumed = _replay(suite, out, "--revisions", "all", "--workers", "3")
    assert [r["step"] for r in resumed] == [0, 1, 2, 4, 8, 16]
    assert [r["step"] for r in whole] == [0, 1, 2, 4, 8, 16]
    for a, b in zip(whole, resumed):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_equal(a[key], b[key], err_msg=key)
    assert resumed[-1][REPLAY_SAME_EMBEDDINGS] == 8  # step 8's fingerprint survived the stop


def test_full_models_give_the_norms_only_rows(suite, tmp_path):
    only = _replay(suite, tmp_path / "norms", "--revisions", "step0", "step4")
    full = _replay(suite, tmp_path / "full", "--revisions", "step0", "step4", "--full")
    for a, b in zip(only, full):
        assert a[REPLAY_BYTES_READ] < a[REPLAY_FILE_BYTES]
        assert a.keys() - {REPLAY_BYTES_READ, REPLAY_FILE_BYTES} == b.keys()
        for key in b:
            np.testing.assert_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("name, step, tokens", [
    ("step1000", 1000, None), ("step20000-tokens84B", 20000, 84 * 10**9),
    ("stage1-step5000-tokens21B", 5000, 21 * 10**9),
    ("google/multiberts-seed_0-step_20k", 20000, None), ("main", None, None)])
def test_steps_and_tokens_from_revision_names(name, step, tokens):
    assert step_of(name) == step and tokens_of(name) == tokens


def test_checkpoints_named_one_by_one_replay_in_step_order(suite, tmp_path):
    """The MultiBERTs' way: one repo (here a folder) per step, the step in its name."""
    named = []
    for step in (4, 0, 2):
        folder = tmp_path / f"multi-seed_0-step_{step}k"
        shutil.copytree(suite / "suite" / f"step{step}", folder)
        named.append(str(folder))
    replay([*named, "--gold", str(suite / "gold.npz"), "--out", str(tmp_path / "out")])
    assert [r["step"] for r in read_metrics(tmp_path / "out")] == [0, 2000, 4000]


def test_bad_suites_are_named_and_change_nothing(suite, tmp_path):
    out, gold = tmp_path / "out", str(suite / "gold.npz")
    with pytest.raises(SystemExit, match=r"step3: no such checkpoint folder"):
        replay([str(suite / "suite"), "--revisions", "step3", "--gold", gold, "--out", str(out)])
    empty = tmp_path / "empty"
    (empty / "main").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"no revision named by a step"):
        replay([str(empty), "--revisions", "all", "--gold", gold, "--out", str(out)])
    other = build_suite(tmp_path / "other", seed=1)  # another corpus: another tokenizer
    assert (other / "vocab.json").read_text() != (suite / "vocab.json").read_text()
    with pytest.raises(SystemExit, match=r"gold.npz: its gold statistics were computed with "
                                         r"another tokenizer"):
        replay([str(suite / "suite"), "--gold", str(other / "gold.npz"), "--out", str(out)])
    broken = tmp_path / "broken"
    shutil.copytree(suite / "suite" / "step0", broken / "step0")
    weights = broken / "step0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3])
    with pytest.raises(SystemExit, match=r"step0/model.safetensors: not a readable safetensors"):
        replay([str(broken), "--gold", gold, "--vocab", str(suite / "vocab.json"),
                "--out", str(out)])
    assert not out.exists() or not any(out.iterdir())  # no record begun, no lock left


def test_analysis_reads_replayed_suites_like_runs(suite, tmp_path):
    from analysis.curves import main as curves
    from analysis.emergence import main as emergence
    from analysis.report import main as report
    from analysis.sweep import main as sweep

    second = tmp_path / "second_suite"
    shutil.copytree(suite / "suite", second)
    for name, source in (("a", suite / "suite"), ("b", second)):
        replay([str(source), "--gold", str(suite / "gold.npz"), "--vocab",
                str(suite / "vocab.json"), "--min-count", "2", "--out",
                str(tmp_path / "suites" / name)])
    run = tmp_path / "suites" / "a"
    assert curves([str(run)]) == 0 and (run / "figures" / "correlations.png").exists()
    assert emergence([str(run), "--n-perm", "20"]) == 0
    assert report([str(run)]) == 0 and (run / "report.html").exists()
    assert sweep([str(tmp_path / "suites"), "--group-by", "suite", "--formats", "png"]) == 0
    summary = (tmp_path / "suites" / "analysis" / "summary.csv").read_text()
    assert str(second) in summary and str(suite / "suite") in summary


MEASURE = textwrap.dedent("""
    import resource, sys
    from analysis.replay import main
    main(sys.argv[1:])
    print("peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow  # 14 s: two replay processes, 20 checkpoints
def test_memory_stays_at_one_checkpoint_whatever_the_suite_length(tmp_path):
    """Peak RSS of a --full replay of 20 checkpoints against 1: the old replay loaded all
    of them before measuring the first (20 x 18 MB here)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=4000, hidden_size=384, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=1024,
                           max_position_embeddings=64, tie_word_embeddings=False)
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "one" / "step0")
    ckpt_bytes = (tmp_path / "one" / "step0" / "model.safetensors").stat().st_size
    for step in range(20):  # hard links: 20 checkpoints on disk for the price of one
        folder = tmp_path / "twenty" / f"step{step}"
        folder.mkdir(parents=True)
        for f in (tmp_path / "one" / "step0").iterdir():
            os.link(f, folder / f.name)
    rng = np.random.default_rng(0)
    compute_gold([rng.integers(0, 4000, 5000)], 4000, shuffle_correction=False).save(
        tmp_path / "gold.npz")
    peaks = {}
    for name in ("one", "twenty"):
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / name), "--full",
                               "--gold", str(tmp_path / "gold.npz"), "--out",
                               str(tmp_path / f"out_{name}")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[name] = int(proc.stdout.split("peak_kb")[-1]) * 1024
    assert len(read_metrics(tmp_path / "out_twenty")) == 20
    assert peaks["twenty"] - peaks["one"] < 1.5 * ckpt_bytes, (peaks, ckpt_bytes)


def test_the_gold_command_then_replay_as_the_readme_runs_pythia(suite, tmp_path, capsys):
    """`python -m normx_track.gold TOKENIZER CORPUS` then `analysis.replay SUITE`: the gold's
    provenance names its tokenizer, and a gold of another suite's tokenizer is refused even
    without the vocab.json beside it."""
    from normx_track.gold.__main__ import main as gold_command

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_text(0)) + "\n")
    tokenizer = str(suite / "suite" / "step0")
    assert gold_command([tokenizer, str(corpus), "--out", str(tmp_path / "g" / "gold.npz"),
                         "--quiet"]) in (0, None)
    rows = _replay_with(tmp_path / "g" / "gold.npz", suite, tmp_path / "out")
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8, 16]
    meta = json.loads((tmp_path / "out" / "normx" / "meta.json").read_text())
    assert meta["gold_provenance"]["tokenizer"] == tokenizer
    other = build_suite(tmp_path / "other", seed=1)
    assert gold_command([str(other / "suite" / "step0"), str(corpus), "--out",
                         str(tmp_path / "h" / "gold.npz"), "--quiet"]) in (0, None)
    (tmp_path / "h" / "vocab.json").unlink()
    with pytest.raises(SystemExit, match="computed with another tokenizer"):
        _replay_with(tmp_path / "h" / "gold.npz", suite, tmp_path / "out2")


def _replay_with(gold: Path, suite: Path, out: Path) -> list[dict]:
    replay([str(suite / "suite"), "--revisions", "all", "--gold", str(gold), "--out", str(out)])
    return read_metrics(out)


def test_full_replay_runs_the_evidence_probe_with_the_suites_tokenizer(suite, tmp_path):
    probes = tmp_path / "probes.jsonl"
    rows = [{"one_prefix_prefix": f"the {n} near the {a}", "one_prefix_word_good": good,
             "one_prefix_word_bad": bad, "cue_word_indices": [1]}
            for n, a, good, bad in (("dog", "windows", "barks", "bark"),
                                    ("dogs", "window", "bark", "barks"),
                                    ("author", "tables", "laughs", "laugh"),
                                    ("authors", "table", "laugh", "laughs"))]
    probes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    replay([str(suite / "suite"), "--revisions", "step0", "step8", "--gold",
            str(suite / "gold.npz"), "--full", "--probes", str(probes), "--out", str(out)])
    recorded = read_metrics(out)
    assert [r["step"] for r in recorded] == [0, 8]
    for row in recorded:
        assert row["normx/pair_n_pairs"] == 4 and 0 <= row["normx/pair_accuracy"] <= 1
        assert 0 < row["normx/evidence_ap/normxlogit"] <= 1
    with pytest.raises(SystemExit, match="--probes needs --full"):
        replay([str(suite / "suite"), "--gold", str(suite / "gold.npz"), "--probes",
                str(probes), "--out", str(out)])


def test_a_hub_suite_replays_through_range_requests(suite, tmp_path):
    """The hub path for real: huggingface_hub's own client (list_repo_refs, HfFileSystem,
    AutoTokenizer) against a stand-in hub on loopback serving the local suite's folders as
    branches. The rows equal the local replay's; the server sent, per checkpoint, the
    header and the embedding bytes alone."""
    from fake_hub_server import serve

    server, hub = serve("org/tiny-suite", suite / "suite")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",
                                                              "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
               HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "analysis.replay", "org/tiny-suite",
                               "--revisions", "all", "--gold", str(suite / "gold.npz"),
                               "--min-count", "2", "--workers", "2", "--out",
                               str(tmp_path / "hub")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no tokenizer found" not in proc.stderr  # the branch's own tokenizer was read
    local = _replay(suite, tmp_path / "local", "--revisions", "all")
    remote = read_metrics(tmp_path / "hub")
    assert [r["step"] for r in remote] == [0, 1, 2, 4, 8, 16]
    for a, b in zip(local, remote):
        for key in a:
            np.testing.assert_equal(a[key], b[key], err_msg=key)
    embeddings = read_embeddings(LocalFiles(suite / "suite" / "step0"))
    needed = _header_bytes(suite / "suite" / "step0" / "model.safetensors") + \
        (embeddings.input.numel() + embeddings.output.numel()) * 4
    for step in (0, 1, 2, 4, 8, 16):
        sent = hub.sent[f"step{step}/model.safetensors"]
        assert sent <= 1.01 * needed, (step, sent, needed)
    meta = json.loads((tmp_path / "hub" / "normx" / "meta.json").read_text())
    assert meta["replay_of"] == "org/tiny-suite" and meta["same_embeddings"] == [[8, 16]]
