"""Seeded synthetic English-like corpus whose token importance is known by construction.

The language has invented, pronounceable content words grouped into topics (each topic its
own nouns, verbs and adjectives, drawn with Zipfian frequencies), a shared closed class of
function words, and subject-verb number agreement across attractors::

    the bralon near the tesks quickly runs the mip .

Number is marked only on nouns and verbs, by one rule: a plural noun is stem+"s", a singular
verb is stem+"s" (plural verb = stem); no stem ends in "s", so the ending alone gives the
number. Determiners are number-neutral, so the subject noun is the *only* cue for the main
verb's form -- which is what the emitted probes (DESIGN.md "Probe file format") record.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normx_track.record.atomic import atomic_open
from normx_track.training.config import SyntheticDataConfig

FUNCTION_CLASSES: dict[str, tuple[str, ...]] = {  # each tuple in Zipf rank order
    "det": ("the", "its", "their", "my", "our", "his", "her", "your", "no", "any"),
    "prep": ("of", "in", "near", "with", "on", "behind", "under", "from", "beside", "above",
             "by", "across", "around", "among"),
    "rel": ("that", "which"),
    "conj": ("and", "but", "while", "because", "so", "or"),
    "aux": ("will", "can", "must", "may", "should", "could"),
    "adv": ("often", "also", "never", "then"),
    "deg": ("very", "quite", "too"),
    "punct": (".",),  # closed-class too: for the function-word label it is not content
}
FUNCTION_WORDS = frozenset(w for words in FUNCTION_CLASSES.values() for w in words)
SHARED_WORD_PROBABILITY = 0.05  # chance that a content slot takes a topic-independent word
# Lemmas are C(C)V [CV] (coda): "tesk", "bralon". No coda ends in "s" (see module doc).
_ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gr", "k", "kr", "l", "m", "n", "p", "pl",
           "r", "t", "tr", "v", "z", "sh", "st", "ch", "bl", "sn", "w", "j", "h")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "oo")
_MIDDLE = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "k", "m", "t", "p", "d", "sk", "nd", "ng", "rt")


@dataclass
class SyntheticConfig(SyntheticDataConfig):
    """The corpus to generate: a run's `data.synthetic` (its documents, topics, lemmas a
    topic, Zipf exponent, attractor share and probes) with the sentences a document and
    the seed (a run passes its own `seed`)."""
    sentences_per_document: tuple[int, int] = (3, 8)  # inclusive range
    seed: int = 0


@dataclass
class SyntheticCorpus:
    documents: list[str]  # each document one string, sentences joined by " "
    function_words: frozenset[str]
    content_words: frozenset[str]
    probes: list[dict]  # DESIGN.md format, from fresh sentences (held-out, not in documents)
    topics: list[int]  # topic id per document


@dataclass(frozen=True)
class Lexicon:
    topics: tuple[dict[str, tuple[str, ...]], ...]  # per topic: "noun"/"verb"/"adj" lemmas
    shared: dict[str, tuple[str, ...]]  # topic-independent lemmas, same keys


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    subject_index: int  # the main verb's subject noun: its cue
    verb_index: int  # the main verb
    plural: bool  # the subject's (and main verb's) number
    attractor_index: int | None  # noun between subject and verb, if any
    agreements: tuple[tuple[int, int], ...]  # every (subject, finite verb) pair, main one included


def noun_form(lemma: str, plural: bool) -> str:
    return lemma + "s" if plural else lemma


def verb_form(stem: str, plural: bool) -> str:
    return stem if plural else stem + "s"


def validate(cfg: SyntheticConfig) -> None:
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"SyntheticConfig.{name} must be {rule}, got {getattr(cfg, name)!r}")

    for name, low in (("n_documents", 1), ("n_topics", 1), ("content_words_per_topic", 3),
                      ("n_probes", 0), ("seed", 0)):
        value = getattr(cfg, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= low,
             name, f"an integer >= {low}")
    spd = cfg.sentences_per_document
    need(len(tuple(spd)) == 2 and all(isinstance(v, int) for v in spd) and 1 <= spd[0] <= spd[1],
         "sentences_per_document", "a pair (low, high) of integers with 1 <= low <= high")
    need(isinstance(cfg.zipf_exponent, (int, float)) and math.isfinite(cfg.zipf_exponent)
         and cfg.zipf_exponent >= 0, "zipf_exponent", "a finite number >= 0")
    need(isinstance(cfg.attractor_probability, (int, float))
         and 0.0 <= cfg.attractor_probability <= 1.0, "attractor_probability", "in [0, 1]")


class _Draws:
    """Random numbers pre-drawn in numpy blocks, so the per-sentence Python loop only pops them."""

    def __init__(self, rng: np.random.Generator, zipf_exponent: float, block: int = 1 << 14):
        self._rng, self._s, self._block = rng, zipf_exponent, block
        self._uniform: list[float] = []
        self._ranks: dict[int, list[int]] = {}  # one stream per list length (same Zipf law)

    def uniform(self) -> float:
        if not self._uniform:
            self._uniform = self._rng.random(self._block).tolist()[::-1]
        return self._uniform.pop()

    def coin(self, p: float) -> bool:
        return self.uniform() < p

    def integer(self, low: int, high: int) -> int:  # inclusive
        return low + min(int(self.uniform() * (high - low + 1)), high - low)

    def pick(self, words: tuple[str, ...]) -> str:
        """A Zipfian draw: words[0] is rank 1."""
        stream = self._ranks.setdefault(len(words), [])
        if not stream:
            p = np.arange(1, len(words) + 1, dtype=float) ** -self._s
            stream.extend(self._rng.choice(len(words), self._block, p=p / p.sum()).tolist()[::-1])
        return words[stream.pop()]


def build_lexicon(cfg: SyntheticConfig) -> Lexicon:
    """Invented lemmas, unique across topics: every surface form belongs to one lemma only."""
    validate(cfg)
    draws = _Draws(np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[0]), 0.0)
    taken = set(FUNCTION_WORDS)

    def choose(options: tuple[str, ...]) -> str:
        return options[draws.integer(0, len(options) - 1)]

    def lemma(pos: str) -> str:
        while True:
            word = choose(_ONSETS) + choose(_NUCLEI)
            if draws.coin(0.6):  # second syllable
                word += choose(_MIDDLE) + choose(_VOWELS)
            word += choose(_CODAS)
            forms = {word, word + "s"} | ({word + "ly"} if pos == "adj" else set())
            if len(word) >= 3 and not forms & taken:
                taken.update(forms)
                return word

    def part(n: int) -> dict[str, tuple[str, ...]]:
        n_noun, n_verb = max(1, round(0.5 * n)), max(1, round(0.3 * n))
        sizes = {"noun": n_noun, "verb": n_verb, "adj": max(1, n - n_noun - n_verb)}
        return {pos: tuple(lemma(pos) for _ in range(k)) for pos, k in sizes.items()}

    topics = tuple(part(cfg.content_words_per_topic) for _ in range(cfg.n_topics))
    return Lexicon(topics, part(max(3, cfg.content_words_per_topic // 10)))


def content_forms(lemmas: dict[str, tuple[str, ...]]) -> frozenset[str]:
    """Every surface form the lemmas can take (nouns/verbs +s, adjectives +ly as adverbs)."""
    forms = {f for pos in ("noun", "verb") for w in lemmas[pos] for f in (w, w + "s")}
    return frozenset(forms | {f for w in lemmas["adj"] for f in (w, w + "ly")})


class _SentenceMaker:
    def __init__(self, lexicon: Lexicon, draws: _Draws):
        self.lex, self.d = lexicon, draws

    def content(self, topic: int, pos: str) -> str:
        shared = self.d.coin(SHARED_WORD_PROBABILITY)
        return self.d.pick(self.lex.shared[pos] if shared else self.lex.topics[topic][pos])

    def noun_phrase(self, words: list[str], topic: int, plural: bool) -> int:
        """Appends DET [[very] ADJ] NOUN; returns the noun's index."""
        words.append(self.d.pick(FUNCTION_CLASSES["det"]))
        if self.d.coin(0.3):
            if self.d.coin(0.2):
                words.append(self.d.pick(FUNCTION_CLASSES["deg"]))
            words.append(self.content(topic, "adj"))
        words.append(noun_form(self.content(topic, "noun"), plural))
        return len(words) - 1

    def sentence(self, topic: int, attractor: bool, opposite: bool = False) -> Sentence:
        d, words, agreements = self.d, [], []
        plural = d.coin(0.5)
        subject = self.noun_phrase(words, topic, plural)
        attractor_index = None
        if attractor:
            a_plural = (not plural) if opposite else d.coin(0.5)
            if d.coin(0.5):  # prepositional phrase: "near the tesks"
                words.append(d.pick(FUNCTION_CLASSES["prep"]))
                attractor_index = self.noun_phrase(words, topic, a_plural)
            else:  # relative clause "that the tesks see": its verb agrees with the attractor
                words.append(d.pick(FUNCTION_CLASSES["rel"]))
                attractor_index = self.noun_phrase(words, topic, a_plural)
                words.append(verb_form(self.content(topic, "verb"), a_plural))
                agreements.append((attractor_index, len(words) - 1))
        if d.coin(0.25):  # pre-verbal adverb lengthens the dependency
            words.append(self.content(topic, "adj") + "ly" if d.coin(0.5)
                         else d.pick(FUNCTION_CLASSES["adv"]))
        verb = len(words)
        words.append(verb_form(self.content(topic, "verb"), plural))
        agreements.append((subject, verb))
        self.tail(words, topic, agreements)
        return Sentence(tuple(words), subject, verb, plural, attractor_index, tuple(agreements))

    def tail(self, words: list[str], topic: int, agreements: list) -> None:
        """Object, prepositional phrase, then maybe a conjoined clause (possibly with an aux)."""
        d = self.d
        if d.coin(0.6):
            self.noun_phrase(words, topic, d.coin(0.5))
        if d.coin(0.3):
            words.append(d.pick(FUNCTION_CLASSES["prep"]))
            self.noun_phrase(words, topic, d.coin(0.5))
        if d.coin(0.25):
            words.append(d.pick(FUNCTION_CLASSES["conj"]))
            plural = d.coin(0.5)
            subject = self.noun_phrase(words, topic, plural)
            if d.coin(0.3):  # auxiliary + bare stem: no agreement to record
                words += [d.pick(FUNCTION_CLASSES["aux"]), self.content(topic, "verb")]
            else:
                words.append(verb_form(self.content(topic, "verb"), plural))
                agreements.append((subject, len(words) - 1))
            if d.coin(0.5):
                self.noun_phrase(words, topic, d.coin(0.5))
        words.append(".")


def structured_documents(cfg: SyntheticConfig) -> list[tuple[int, list[Sentence]]]:
    """(topic, sentences) per document: the labelled form of ``generate_corpus().documents``."""
    lexicon = build_lexicon(cfg)
    return _documents(cfg, lexicon)


def _documents(cfg: SyntheticConfig, lexicon: Lexicon) -> list[tuple[int, list[Sentence]]]:
    draws = _Draws(np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[1]),
                   cfg.zipf_exponent)
    maker, (low, high) = _SentenceMaker(lexicon, draws), cfg.sentences_per_document
    docs = []
    for _ in range(cfg.n_documents):
        topic = draws.integer(0, cfg.n_topics - 1)
        docs.append((topic, [maker.sentence(topic, draws.coin(cfg.attractor_probability))
                             for _ in range(draws.integer(low, high))]))
    return docs


def _probes(cfg: SyntheticConfig, lexicon: Lexicon, seen: set[tuple[str, ...]]) -> list[dict]:
    """Balanced simple/attractor probes from fresh sentences; attractors always of the other
    number, so agreeing with the nearest noun fails them. Held out: a probe's prefix + good
    verb never begins a training sentence (``seen`` holds all their word prefixes)."""
    draws = _Draws(np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[2]),
                   cfg.zipf_exponent)
    maker, probes, p = _SentenceMaker(lexicon, draws), [], cfg.attractor_probability
    for _ in range(100 * cfg.n_probes + 100):
        if len(probes) == cfg.n_probes:
            break
        attractor = p > 0 and (p == 1 or len(probes) % 2 == 0)
        s = maker.sentence(draws.integer(0, cfg.n_topics - 1), attractor, opposite=True)
        if s.words[:s.verb_index + 1] in seen:
            continue
        seen.add(s.words[:s.verb_index + 1])  # no duplicate probes either
        good = s.words[s.verb_index]
        stem = good if s.plural else good[:-1]
        probes.append({"one_prefix_prefix": " ".join(s.words[:s.verb_index]),
                       "one_prefix_word_good": good,
                       "one_prefix_word_bad": verb_form(stem, not s.plural),
                       "cue_word_indices": [s.subject_index],
                       "UID": "synthetic_agreement_" + ("attractor" if attractor else "simple"),
                       "pair_id": len(probes)})
    if len(probes) < cfg.n_probes:
        raise RuntimeError(f"could only make {len(probes)} held-out probes of {cfg.n_probes}")
    return probes


def generate_corpus(cfg: SyntheticConfig) -> SyntheticCorpus:
    lexicon = build_lexicon(cfg)
    docs = _documents(cfg, lexicon)
    seen = {s.words[:k] for _, sents in docs for s in sents for k in range(1, len(s.words))}
    content = frozenset().union(*map(content_forms, (*lexicon.topics, lexicon.shared)))
    return SyntheticCorpus(
        documents=[" ".join(w for s in sents for w in s.words) for _, sents in docs],
        function_words=FUNCTION_WORDS,
        content_words=content,
        probes=_probes(cfg, lexicon, seen),
        topics=[topic for topic, _ in docs],
    )


def _write_atomic(path: Path, lines) -> None:
    with atomic_open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def write_corpus(corpus: SyntheticCorpus, directory: str | Path) -> dict[str, Path]:
    """Writes train.jsonl ({"text": doc} per line), probes.jsonl, function_words.txt (one per
    line) atomically (temp + os.replace); returns paths by name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / file for name, file in (
        ("train", "train.jsonl"), ("probes", "probes.jsonl"),
        ("function_words", "function_words.txt"))}
    _write_atomic(paths["train"], (json.dumps({"text": doc}) for doc in corpus.documents))
    _write_atomic(paths["probes"], (json.dumps(p) for p in corpus.probes))
    _write_atomic(paths["function_words"], sorted(corpus.function_words))
    return paths
