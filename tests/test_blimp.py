"""BLiMP out of the box: per-paradigm cue rules on hand-written rows in BLiMP's format, the
loader on a local folder and on (stand-in) hub rows, and a BLiMP run end to end through
train.py. Nothing reaches the hub."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import train_here
from normx_track.probes import blimp
from normx_track.probes.blimp import CUE_RULES, load_blimp
from normx_track.probes.files import ProbeFileError


def row(uid: str, good: str, bad: str, prefix: str | None = None, word_good: str | None = None,
        word_bad: str | None = None) -> dict:
    """A row as BLiMP ships it (one-prefix fields only for one-prefix paradigms)."""
    r = {"sentence_good": good, "sentence_bad": bad, "field": "morphology", "UID": uid,
         "simple_LM_method": True, "one_prefix_method": prefix is not None,
         "two_prefix_method": prefix is None, "lexically_identical": True, "pairID": "0"}
    if prefix is not None:
        r.update(one_prefix_prefix=prefix, one_prefix_word_good=word_good,
                 one_prefix_word_bad=word_bad)
    return r


# (UID, prefix, expected cue word)
CASES = [
    ("determiner_noun_agreement_1", "Nina is painting these", "these"),
    ("determiner_noun_agreement_with_adjective_1", "Omar fixed that old", "that"),
    ("determiner_noun_agreement_with_adj_irregular_1", "These girls saw those tiny", "those"),
    ("regular_plural_subject_verb_agreement_1", "The painters", "painters"),
    ("regular_plural_subject_verb_agreement_1", "Gloria", "Gloria"),
    ("irregular_plural_subject_verb_agreement_1", "A lot of mice", "mice"),
    ("distractor_agreement_relational_noun", "The cousin of those bakers", "cousin"),
    ("distractor_agreement_relational_noun", "A poster about the islands", "poster"),
    ("distractor_agreement_relative_clause", "Dentists who praised Irene", "Dentists"),
    ("distractor_agreement_relative_clause", "The nurse that had met most kids", "nurse"),
    ("anaphor_gender_agreement", "Veronica might admire", "Veronica"),
    ("anaphor_gender_agreement", "Some waiter can't stand", "waiter"),
    ("anaphor_number_agreement", "Mary Anne had hurt", "Anne"),
    ("anaphor_number_agreement", "All the dancers were praising", "dancers"),
]


@pytest.mark.parametrize("uid, prefix, cue", CASES)
def test_cue_rule_finds_the_controller(uid, prefix, cue):
    words = prefix.split()
    assert [words[i] for i in CUE_RULES[uid](words)] == [cue]


def test_every_agreement_paradigm_has_a_rule_and_others_have_none():
    assert len(blimp.AGREEMENT_PARADIGMS) == 16
    assert all(u in CUE_RULES for u in blimp.AGREEMENT_PARADIGMS)
    assert "adjunct_island" not in CUE_RULES


def write_folder(folder: Path) -> Path:
    folder.mkdir()
    rows = {
        "determiner_noun_agreement_with_adjective_1": [
            row("determiner_noun_agreement_with_adjective_1", "Omar fixed that old car.",
                "Omar fixed that old cars.", "Omar fixed that old", "car", "cars")],
        "distractor_agreement_relational_noun": [
            row("distractor_agreement_relational_noun", "The cousin of those bakers sings.",
                "The cousin of those bakers sing.", "The cousin of those bakers", "sings",
                "sing")],
        "regular_plural_subject_verb_agreement_2": [  # two-prefix: sentences only
            row("regular_plural_subject_verb_agreement_2", "The painters laugh.",
                "The painter laugh.")],
        "adjunct_island": [row("adjunct_island", "Who did Ann leave after hugging?",
                               "Who did Ann leave Bo after hugging?")],
    }
    for uid, items in rows.items():
        (folder / f"{uid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def test_local_folder_loads_its_agreement_paradigms_with_cues(tmp_path):
    folder = write_folder(tmp_path / "blimp")
    pairs = load_blimp(f"blimp:{folder}")
    by_uid = {p.uid: p for p in pairs}
    assert set(by_uid) == {"determiner_noun_agreement_with_adjective_1",
                           "distractor_agreement_relational_noun",
                           "regular_plural_subject_verb_agreement_2"}  # no island
    adj = by_uid["determiner_noun_agreement_with_adjective_1"]
    assert (adj.prefix, adj.good, adj.bad, adj.cue_word_indices) == (
        "Omar fixed that old", "car", "cars", (2,))
    assert adj.sentence_good == "Omar fixed that old car." and adj.has_sentences
    assert by_uid["distractor_agreement_relational_noun"].cue_word_indices == (1,)
    two = by_uid["regular_plural_subject_verb_agreement_2"]
    assert not two.has_prefix and two.has_sentences
    assert str(folder / "distractor_agreement_relational_noun.jsonl") in \
        by_uid["distractor_agreement_relational_noun"].source


def test_named_paradigms_from_a_folder_and_missing_ones_named(tmp_path):
    folder = write_folder(tmp_path / "blimp")
    pairs = load_blimp(f"blimp:{folder}:adjunct_island")
    assert [p.uid for p in pairs] == ["adjunct_island"] and pairs[0].cue_word_indices == ()
    with pytest.raises(ProbeFileError, match="anaphor_gender_agreement.jsonl"):
        load_blimp(f"blimp:{folder}:anaphor_gender_agreement")
    with pytest.raises(ProbeFileError, match="no BLiMP folder"):
        load_blimp(f"blimp:{tmp_path}/nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProbeFileError, match="agreement paradigms"):
        load_blimp(f"blimp:{empty}")


def test_hub_rows_map_to_pairs_with_cues(monkeypatch):
    import datasets

    hub_rows = [  # the hub's rows: sentences and a one_prefix_method flag, no prefix field
        {"sentence_good": "The cousin of those bakers sings.",
         "sentence_bad": "The cousin of those bakers sing.",
         "UID": "distractor_agreement_relational_noun",
         "one_prefix_method": True, "pair_id": 0},
        {"sentence_good": "The painters laugh.", "sentence_bad": "The painter laugh.",
         "UID": "distractor_agreement_relational_noun", "one_prefix_method": False,
         "pair_id": 1},
    ]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **kw: calls.append((a, kw)) or hub_rows)
    pairs = load_blimp("blimp:distractor_agreement_relational_noun")
    assert calls == [(("nyu-mll/blimp", "distractor_agreement_relational_noun"),
                      {"split": "train"})]
    first, second = pairs
    assert (first.prefix, first.good, first.bad) == ("The cousin of those bakers", "sings", "sing")
    assert first.cue_word_indices == (1,) and first.has_sentences
    assert not second.has_prefix and second.sentence_bad == "The painter laugh."
    load_blimp("blimp")
    assert len(calls) == 1 + len(blimp.AGREEMENT_PARADIGMS)


def test_hub_failure_is_one_line_naming_the_paradigm(monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'nyu-mll/blimp' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ProbeFileError, match=r"hub:nyu-mll/blimp:anaphor_gender_agreement.*"
                                              r"blimp:<folder>"):
        load_blimp("blimp:anaphor_gender_agreement")


def test_uids_joined_by_plus_pass_hydra_unquoted_and_commas_quoted(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folder = write_folder(tmp_path / "blimp")
    uids = ["adjunct_island", "distractor_agreement_relational_noun"]
    parser = OverridesParser.create()
    for spec, override in ((f"blimp:{folder}:{'+'.join(uids)}", "tracker.probe_file={}"),
                           (f"blimp:{folder}:{','.join(uids)}", 'tracker.probe_file="{}"')):
        parsed, = parser.parse_overrides([override.format(spec)])
        assert parsed.value() == spec
        assert [p.uid for p in load_blimp(parsed.value())] == uids


LONG = ("The cousin of those extraordinarily accomplished bakers from the neighbouring "
        "villages sings.")


def test_blimp_run_end_to_end_from_a_local_folder(cache_dir, tmp_path):
    """Under debug=tiny (32 positions): a sentence too long for the context is skipped and
    counted, a prefix too long keeps its end; no traceback. UIDs joined by '+', unquoted."""
    folder = write_folder(tmp_path / "blimp")
    path = folder / "distractor_agreement_relational_noun.jsonl"
    long = row("distractor_agreement_relational_noun", LONG, LONG[:-7] + "sing.",
               LONG[:-8], "sings", "sing")
    path.write_text(path.read_text() + json.dumps(long) + "\n")
    out = tmp_path / "run"
    uids = ("determiner_noun_agreement_with_adjective_1+distractor_agreement_relational_noun"
            "+regular_plural_subject_verb_agreement_2")
    train_here(out, cache_dir, "trainer.max_steps=2", "logger=csv",
               f"tracker.probe_file=blimp:{folder}:{uids}")
    rows = [json.loads(line) for line in (out / "normx" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert last["normx/pair_n_pairs"] == 3 and last["normx/blimp_n_pairs"] == 3
    assert last["normx/blimp_n_too_long"] == 1 and last["normx/pair_n_too_long"] == 0
    assert last["normx/evidence_n_pairs"] + last["normx/evidence_n_cue_truncated"] == 3
    assert last["normx/probe/leading_space"] == 1.0
    assert last["normx/probe/mean_pieces_per_word"] >= 1
    assert 0 <= last["normx/blimp_accuracy"] <= 1
    assert "normx/blimp_accuracy_by_uid/regular_plural_subject_verb_agreement_2" in last
