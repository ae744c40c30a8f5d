"""`tracker_inputs`: a Tracker's gold, vocab and probes from a tokenizer and texts, with no
part of the training code; the gold equals `compute_gold` on the same stream."""
from __future__ import annotations

import json

import numpy as np

from normx_track import tracker_inputs
from normx_track.gold.statistics import compute_gold
from normx_track.probes.masked_evidence import MaskedEvidenceProbe
from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
from normx_track.training.data.synthetic import SyntheticConfig, generate_corpus
from normx_track.training.data.tokenizer import train_bpe


def test_a_masked_lms_inputs_leave_the_specials_out_of_the_gold(tmp_path):
    corpus = generate_corpus(SyntheticConfig(n_documents=120, n_probes=8, seed=1))
    tok = train_bpe(corpus.documents, 300, tmp_path / "tok", "roberta")
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps(p) + "\n" for p in corpus.probes))
    inputs = tracker_inputs(tok, corpus.documents[:-10], probe_file=probes, masked=True,
                            held_out=corpus.documents[-10:], faithfulness_examples=4)
    gold = inputs["gold"]
    docs = [np.array(tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            for t in corpus.documents[:-10]]
    plain = compute_gold(docs, len(tok))
    np.testing.assert_array_equal(gold.counts, plain.counts)  # the same stream
    specials = sorted(tok.all_special_ids)
    assert gold.counts[tok.eos_token_id] > 0 and np.isnan(gold.information_gain[specials]).all()
    others = np.setdiff1d(np.flatnonzero(plain.counts > 0), specials)
    np.testing.assert_array_equal(gold.information_gain[others], plain.information_gain[others])
    assert np.nansum(gold.function_word) > 0  # English function words ("the", "a") labelled
    assert [type(p) for p in inputs["probes"]] == [MaskedEvidenceProbe, MaskedFaithfulnessProbe]
    assert inputs["vocab"][tok.eos_token_id] == tok.eos_token
