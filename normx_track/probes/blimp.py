"""BLiMP out of the box (DESIGN.md "Probe file format"): minimal pairs from the hub
(``nyu-mll/blimp`` through `datasets`) or from a local folder of BLiMP's jsonl files as
they ship, with cue words added by per-paradigm rules.

    pairs = load_blimp("blimp")                                   # agreement paradigms, hub
    pairs = load_blimp("blimp:anaphor_gender_agreement")          # chosen paradigms, hub
    pairs = load_blimp("blimp:/data/blimp/data")                  # agreement paradigms, local
    pairs = load_blimp("blimp:/data/blimp/data:anaphor_gender_agreement+...")

UIDs are separated by "+" (which Hydra takes unquoted: ``tracker.probe_file=blimp:DIR:A+B``)
or "," (which Hydra reads as a sweep unless the value is quoted:
``'tracker.probe_file="blimp:DIR:A,B"'``).

Cue rules (``cue_word_indices`` index ``prefix.split()``; see `CUE_RULES`):

* determiner-noun agreement (``determiner_noun_agreement_*``): the determiner, i.e. the
  last of this/that/these/those in the prefix. In the paradigms without an adjective it is
  the last prefix word, the prediction position: those pairs give accuracy, and are
  counted in ``normx/evidence_n_cue_at_prediction``.
* subject-verb agreement (``regular_/irregular_plural_subject_verb_agreement_*``,
  ``distractor_agreement_relational_noun``, ``distractor_agreement_relative_clause``):
  the prefix is the subject; its head noun is the word before the first preposition or
  relative pronoun (``of``, ``about``, ``who``, ``that``, ...), else the last word; in
  "a lot of X" the head is X.
* anaphor agreement (``anaphor_gender_agreement``, ``anaphor_number_agreement``): the
  antecedent is the subject's head: the word after the initial determiners/quantifiers,
  or else a run of capitalised words (a name: its last word).

Paradigms without a rule give accuracy only. Hub rows carry whole sentences and a
``one_prefix_method`` flag; there the prefix is the words both sentences share before they
differ, and good/bad are the first differing words (final punctuation stripped). Rows with
no one-prefix form (``two_prefix`` paradigms) give the whole-sentence BLiMP score only.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

from normx_track.probes.files import MinimalPair, ProbeFileError, load_probe_file, pair_from_record

__all__ = ["AGREEMENT_PARADIGMS", "CUE_RULES", "add_cues", "is_blimp_spec", "load_blimp"]

HUB_NAME = "nyu-mll/blimp"

DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})
# Words that end a subject noun phrase: prepositions and relative pronouns.
_NP_ENDERS = frozenset("""of about in on at to with by for from near under over behind
    beside between among around without into onto who whom whose which that""".split())
_DETERMINERS = frozenset("""the a an this that these those some many most all every each no
    few several any both either neither""".split())


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'").lower()


def determiner_cue(words: Sequence[str]) -> list[int]:
    """The last demonstrative determiner of the prefix."""
    hits = [i for i, w in enumerate(words) if _bare(w) in DEMONSTRATIVES]
    return hits[-1:]


_QUANTIFIER_PHRASES = (("a", "lot", "of"), ("lots", "of"))


def _after_quantifier(words: Sequence[str]) -> int:
    """Where the noun phrase that agrees starts: after "a lot of" / "lots of", else 0."""
    bare = tuple(_bare(w) for w in words)
    for phrase in _QUANTIFIER_PHRASES:
        if bare[: len(phrase)] == phrase and len(words) > len(phrase):
            return len(phrase)
    return 0


def subject_head_cue(words: Sequence[str]) -> list[int]:
    """The prefix is a subject NP: its head is the word before the first preposition or
    relative pronoun (after the first word; "a lot of X" agrees with X), else the last
    word."""
    for i in range(_after_quantifier(words) + 1, len(words)):
        if _bare(words[i]) in _NP_ENDERS:
            return [i - 1]
    return [len(words) - 1]


def antecedent_cue(words: Sequence[str]) -> list[int]:
    """The head of the sentence-initial subject: a name's last capitalised word, or the word
    after the initial determiners/quantifiers."""
    start = i = _after_quantifier(words)
    while i + 1 < len(words) and _bare(words[i]) in _DETERMINERS:  # "All the dancers"
        i += 1
    if i == start and words[i][:1].isupper():
        while i + 1 < len(words) and words[i + 1][:1].isupper():
            i += 1
    return [i]


_DETERMINER_NOUN = ("determiner_noun_agreement_1", "determiner_noun_agreement_2",
                    "determiner_noun_agreement_irregular_1",
                    "determiner_noun_agreement_irregular_2",
                    "determiner_noun_agreement_with_adj_2",
                    "determiner_noun_agreement_with_adj_irregular_1",
                    "determiner_noun_agreement_with_adj_irregular_2",
                    "determiner_noun_agreement_with_adjective_1")
_SUBJECT_VERB = ("distractor_agreement_relational_noun", "distractor_agreement_relative_clause",
                 "irregular_plural_subject_verb_agreement_1",
                 "irregular_plural_subject_verb_agreement_2",
                 "regular_plural_subject_verb_agreement_1",
                 "regular_plural_subject_verb_agreement_2")
_ANAPHOR = ("anaphor_gender_agreement", "anaphor_number_agreement")

CUE_RULES: dict[str, Callable[[Sequence[str]], list[int]]] = {
    **{uid: determiner_cue for uid in _DETERMINER_NOUN},
    **{uid: subject_head_cue for uid in _SUBJECT_VERB},
    **{uid: antecedent_cue for uid in _ANAPHOR},
}
AGREEMENT_PARADIGMS = tuple(CUE_RULES)


def add_cues(pairs: Iterable[MinimalPair]) -> list[MinimalPair]:
    """Pairs with cues from their paradigm's rule; pairs that already have cues, or whose
    paradigm has no rule, are kept as they are."""
    out = []
    for pair in pairs:
        rule = CUE_RULES.get(pair.uid)
        if rule is not None and pair.has_prefix and not pair.cue_word_indices:
            pair = dataclasses.replace(pair, cue_word_indices=tuple(rule(pair.prefix.split())))
        out.append(pair)
    return out


# ------------------------------------------------------------------------------ loading
def is_blimp_spec(spec: str | Path | None) -> bool:
    return isinstance(spec, str) and (spec == "blimp" or spec.startswith("blimp:"))


def _parse(spec: str) -> tuple[Path | None, list[str]]:
    """"blimp[:FOLDER][:UID+UID]" -> (folder or None for the hub, UIDs or [] for all
    agreement paradigms)."""
    rest = spec[len("blimp:"):] if spec.startswith("blimp:") else ""
    if not rest:
        return None, []
    if Path(rest).exists():
        return Path(rest), []
    folder, _, uids = rest.rpartition(":")
    if folder and Path(folder).exists():
        return Path(folder), _uids(uids)
    if "/" in rest or rest.startswith("."):
        raise ProbeFileError(f"{spec}: no BLiMP folder at {rest.split(':')[0]}")
    return None, _uids(rest)


def _uids(text: str) -> list[str]:
    return [u.strip() for u in re.split(r"[,+]", text) if u.strip()]


def load_blimp(spec: str = "blimp", split: str = "train") -> list[MinimalPair]:
    """Minimal pairs for a ``blimp[:FOLDER][:UID+UID]`` spec, cues added (module docstring).
    A local FOLDER holds ``<UID>.jsonl`` files (BLiMP's ``data/``): all the agreement
    paradigms it holds unless UIDs are named; without a folder, the hub."""
    folder, uids = _parse(spec)
    if not uids and folder is not None:  # the agreement paradigms the folder holds
        uids = [u for u in AGREEMENT_PARADIGMS if (folder / f"{u}.jsonl").exists()]
        if not uids:
            raise ProbeFileError(f"{folder}: holds none of BLiMP's agreement paradigms "
                                 f"(<UID>.jsonl, e.g. {AGREEMENT_PARADIGMS[0]}.jsonl)")
    uids = uids or list(AGREEMENT_PARADIGMS)
    pairs: list[MinimalPair] = []
    for uid in uids:
        pairs.extend(_from_folder(folder, uid) if folder else _from_hub(uid, split))
    return add_cues(pairs)


def _from_folder(folder: Path, uid: str) -> list[MinimalPair]:
    path = folder / f"{uid}.jsonl"
    if not path.exists():
        raise ProbeFileError(f"{path}: no such BLiMP paradigm file in {folder}")
    return load_probe_file(path)


def _strip_punct(word: str) -> str:
    return word.strip(".,;:!?\"'")


def _one_prefix(good_sentence: str, bad_sentence: str) -> tuple[str, str, str] | None:
    """(prefix, good word, bad word) from two sentences that first differ after a shared,
    non-empty prefix of words; None when there is no such form."""
    good_words, bad_words = good_sentence.split(), bad_sentence.split()
    k = 0
    while k < min(len(good_words), len(bad_words)) and good_words[k] == bad_words[k]:
        k += 1
    if k == 0 or k >= len(good_words) or k >= len(bad_words):
        return None
    good, bad = _strip_punct(good_words[k]), _strip_punct(bad_words[k])
    if not good or not bad or good == bad:
        return None
    return " ".join(good_words[:k]), good, bad


def hub_row_to_pair(row: dict, source: str) -> MinimalPair:
    """A row of the hub's BLiMP (sentences, ``one_prefix_method`` flag) as a pair."""
    record = {k: row[k] for k in ("sentence_good", "sentence_bad", "UID") if k in row}
    if row.get("one_prefix_method"):
        form = _one_prefix(row["sentence_good"], row["sentence_bad"])
        if form is not None:
            record.update(zip(("one_prefix_prefix", "one_prefix_word_good",
                               "one_prefix_word_bad"), form))
    return pair_from_record(record, source)


def _from_hub(uid: str, split: str) -> list[MinimalPair]:
    from datasets import load_dataset

    try:
        rows = load_dataset(HUB_NAME, uid, split=split)
    except Exception as err:  # offline, unknown paradigm, ...: one line naming it
        raise ProbeFileError(f"hub:{HUB_NAME}:{uid}: cannot load ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); pass a local "
                             f"folder of BLiMP's jsonl files: blimp:<folder>") from None
    return [hub_row_to_pair(row, f"hub:{HUB_NAME}:{uid}:{i}") for i, row in enumerate(rows)]
