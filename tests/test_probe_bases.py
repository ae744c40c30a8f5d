"""One base per probe family (issue 26 §2): the causal and masked probes of a family take
their checks, their counts and their error messages from one place, so they cannot drift.
Each test here failed before the bases (the masked copies lacked the check, or the name
did not exist)."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from normx_track.probes.files import MinimalPair

PAIRS = [MinimalPair("the keys to the cabinet", "are", "is", (1,))]


@pytest.mark.parametrize("max_pairs", [0, -1])
def test_masked_evidence_checks_max_pairs_as_the_causal_probe(max_pairs):
    from normx_track.probes.evidence import EvidenceProbe
    from normx_track.probes.masked_evidence import MaskedEvidenceProbe
    for probe in (EvidenceProbe, MaskedEvidenceProbe):
        with pytest.raises(ValueError, match=r"max_pairs must be >= 1 \(or None: all\)"):
            probe(PAIRS, None, max_pairs=max_pairs)


@pytest.mark.parametrize("kw, message", [
    (dict(gradient_reduction="l2"), r"gradient_reduction must be one of \('l1', 'sum'\)"),
    (dict(ig_steps=0), "ig_steps must be >= 1"),
    (dict(methods=["normxlogit", "attention"]),
     r"unknown faithfulness methods \['attention'\]; choose from \['normxlogit', "),
])
def test_masked_faithfulness_checks_its_arguments_as_the_causal_probe(kw, message):
    from normx_track.probes.faithfulness import FaithfulnessProbe
    from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
    blocks = [list(range(1, 40))]  # never reached: the arguments are checked first
    for probe in (FaithfulnessProbe, MaskedFaithfulnessProbe):
        with pytest.raises(ValueError, match=message):
            probe(blocks, None, **kw)


def test_evidence_pairs_are_counted_one_way_by_the_shared_base():
    """normx/evidence_n_pairs (and its contrastive twin) is the base's count of scored
    rows; neither probe counts on its own."""
    from normx_track.probes.evidence import EvidenceProbe
    from normx_track.probes.evidence_base import EvidenceBase
    from normx_track.probes.masked_evidence import MaskedEvidenceProbe
    for probe in (EvidenceProbe, MaskedEvidenceProbe):
        assert issubclass(probe, EvidenceBase)
        for shared in ("__call__", "_evidence", "_by_uid"):
            assert getattr(probe, shared) is getattr(EvidenceBase, shared), (probe, shared)
    assert "EVIDENCE_N_PAIRS" not in inspect.getsource(sys.modules[EvidenceProbe.__module__])
    assert "EVIDENCE_N_PAIRS" not in inspect.getsource(
        sys.modules[MaskedEvidenceProbe.__module__])


def test_faithfulness_probes_share_the_measurement():
    from normx_track.probes.faithfulness import FaithfulnessProbe
    from normx_track.probes.faithfulness_base import FaithfulnessBase
    from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
    for probe in (FaithfulnessProbe, MaskedFaithfulnessProbe):
        assert issubclass(probe, FaithfulnessBase)
        for shared in ("__call__", "_scores", "_measure", "_replaced_probs"):
            assert getattr(probe, shared) is getattr(FaithfulnessBase, shared), (probe, shared)


def test_the_probe_protocol_loads_no_probe():
    """The framework-free tracker imports `probes.base`: that must not pull in the
    concrete probes (nor Captum)."""
    code = ("import sys, normx_track.probes.base as b; "
            "assert callable(b.run_probes) and b.Probe; "
            "loaded = [m for m in sys.modules if m.startswith('normx_track.probes.')]; "
            "assert set(loaded) <= {'normx_track.probes.base', 'normx_track.probes.protocol'}, "
            "loaded; "
            "assert b.EvidenceProbe.__name__ == 'EvidenceProbe'")  # still importable from it
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_methods_tuple_and_one_encode_sentences():
    from normx_track import keys
    from normx_track.probes import encoding, pll
    assert keys.ATTRIBUTION_METHODS is keys.METHODS
    assert keys.FAITHFULNESS_METHODS == (*keys.METHODS, "loo")
    assert encoding.encode_sentences is not pll.encode_with_word_ids
    assert "encode_sentences" not in pll.__all__  # pll's is an old alias only


def test_attribute_and_attribute_masked_take_the_same_arguments_in_one_order():
    from normx_track.attribution import masked, normxlogit
    for causal, encoder in ((normxlogit.attribute, masked.attribute_masked),
                            (normxlogit.attribute_many, masked.attribute_masked_many)):
        assert list(inspect.signature(causal).parameters) == \
            list(inspect.signature(encoder).parameters)
