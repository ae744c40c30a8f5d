"""Released checkpoint suites: one model's checkpoints by training step (DESIGN.md
"Released checkpoint suites").

A suite is a hub repo whose branches are named by step (Pythia ``step1000``, OLMo
``step1000-tokens4B``), a local folder holding one Hugging Face folder per step
(``step0/``, ``step1000/``, ...), or a list of checkpoints that each name their step
(MultiBERTs: one repo per step, ``google/multiberts-seed_0-step_20k``). Hub and local
suites go through the same code; only how a file is opened differs (`HubFiles`,
`LocalFiles`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from normx_track.record.checkpoint_loader import CheckpointError, first_line
from normx_track.record.embedding_reader import CheckpointFiles, LocalFiles

_STEP = re.compile(r"step[_-]?(\d+)(k(?![a-z]))?", re.IGNORECASE)
_TOKENS = re.compile(r"tokens[_-]?(\d+)([KMBT])?(?![a-z])", re.IGNORECASE)
_UNITS = {None: 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def step_of(name: str) -> int | None:
    """The training step a revision or folder name gives: ``step1000``, ``step_20k``
    (MultiBERTs: thousands), ``stage1-step5000-tokens21B``; None if it names none."""
    match = _STEP.search(name)
    if not match:
        return None
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def tokens_of(name: str) -> int | None:
    """Tokens seen that a name states (OLMo's ``tokens4B``: rounded, as the suite names
    it); None if it states none."""
    match = _TOKENS.search(name)
    if not match:
        return None
    return int(match.group(1)) * _UNITS[match.group(2).upper() if match.group(2) else None]


@dataclass
class HubFiles:
    """One revision of a hub repo, its files opened through ``HfFileSystem``: reads are
    HTTP range requests (no read-ahead cache), so only the bytes asked for are fetched."""

    repo: str
    revision: str | None

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo

    def _fs(self):
        from huggingface_hub import HfFileSystem

        return HfFileSystem()

    def exists(self, name: str) -> bool:
        try:
            return self._fs().exists(f"{self.repo}/{name}", revision=self.revision)
        except OSError as err:
            raise CheckpointError(f"{self.label}: cannot reach the hub ({first_line(err)})"
                                  ) from None

    def open(self, name: str) -> BinaryIO:
        return self._fs().open(f"{self.repo}/{name}", "rb", revision=self.revision,
                               cache_type="none")

    def local_path(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo, name, revision=self.revision))


@dataclass
class Checkpoint:
    """One checkpoint of a suite: its step, what its name says of tokens, its files."""

    step: int
    name: str
    files: CheckpointFiles
    tokens_in_name: int | None = None

    @property
    def source(self) -> str:
        return self.files.label

    def pretrained_args(self) -> tuple[str, str | None]:
        """(name or folder, revision) for ``from_pretrained`` (the --full path)."""
        if isinstance(self.files, HubFiles):
            return self.files.repo, self.files.revision
        return str(self.files.folder), None


def _checkpoint(name: str, files: CheckpointFiles) -> Checkpoint:
    step = step_of(name)
    if step is None:
        raise CheckpointError(f"{files.label}: cannot tell its training step; name it with "
                              "stepN (a branch or folder name), or replay a suite's branches "
                              "with --revisions all (or their names)")
    return Checkpoint(step, name, files, tokens_of(name))


def is_local_suite(path: Path) -> bool:
    """A folder of step folders (not itself a model folder)."""
    return path.is_dir() and not (path / "config.json").exists() and any(
        step_of(p.name) is not None for p in path.iterdir() if p.is_dir())


def local_revisions(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()
            if p.is_dir() and step_of(p.name) is not None and (p / "config.json").exists()]


def hub_revisions(repo: str) -> list[str]:
    """The repo's branches that name a step (``huggingface_hub.list_repo_refs``)."""
    from huggingface_hub import list_repo_refs

    try:
        branches = list_repo_refs(repo).branches
    except OSError as err:
        raise CheckpointError(f"{repo}: cannot list its branches ({first_line(err)})") from None
    return [b.name for b in branches if step_of(b.name) is not None]


def suite_checkpoints(suite: str, revisions: list[str]) -> list[Checkpoint]:
    """The checkpoints of ``suite`` (a local folder of step folders or a hub repo) named by
    ``revisions`` (``["all"]``: every step it has), ordered by step."""
    folder = Path(suite)
    local = folder.is_dir()
    if revisions == ["all"]:
        revisions = local_revisions(folder) if local else hub_revisions(suite)
        if not revisions:
            raise CheckpointError(f"{suite}: no revision named by a step (stepN) in it")
    checkpoints = []
    for revision in dict.fromkeys(revisions):
        if local and not (folder / revision).is_dir():
            raise CheckpointError(f"{folder / revision}: no such checkpoint folder in the suite")
        files = LocalFiles(folder / revision) if local else HubFiles(suite, revision)
        checkpoints.append(_checkpoint(revision, files))
    return in_step_order(checkpoints)


def single_checkpoints(sources: list[str]) -> list[Checkpoint]:
    """Checkpoints given one by one, each a model folder or hub repo whose name says its
    step (the MultiBERTs' ``...-step_20k``), ordered by step."""
    checkpoints = []
    for source in dict.fromkeys(sources):
        path = Path(source)
        files = LocalFiles(path) if path.is_dir() else HubFiles(source, None)
        checkpoints.append(_checkpoint(path.name, files))
    return in_step_order(checkpoints)


def in_step_order(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Sorted by step; two checkpoints of one step are refused (which would the row be?)."""
    ordered = sorted(checkpoints, key=lambda c: c.step)
    for a, b in zip(ordered, ordered[1:]):
        if a.step == b.step:
            raise CheckpointError(f"{a.source} and {b.source} are both step {a.step}")
    return ordered


def suite_tokenizer(checkpoints: list[Checkpoint], suite: str | None):
    """The suite's own tokenizer: the first checkpoint's (a hub revision or a step folder),
    else the local suite folder's; None when none has one."""
    from transformers import AutoTokenizer

    candidates = [checkpoints[0].pretrained_args()] if checkpoints else []
    if suite is not None and Path(suite).is_dir():
        candidates.append((suite, None))
    for name, revision in candidates:
        if Path(name).is_dir() and not any((Path(name) / f).exists() for f in
                                           ("tokenizer.json", "tokenizer_config.json",
                                            "vocab.txt", "vocab.json")):
            continue
        try:
            return AutoTokenizer.from_pretrained(name, revision=revision)
        except (OSError, ValueError, KeyError):
            continue
    return None
