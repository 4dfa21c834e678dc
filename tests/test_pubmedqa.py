"""The PubMedQA-L reader on hand-made entries, and on the bundled file."""

from __future__ import annotations

import json

import pytest

from bioreasoner.core.io import BadInputError
from bioreasoner.harvest.ledger import Ledger
from bioreasoner.harvest.pubmedqa import read
from tests.conftest import ROOT

ENTRY = {
    "QUESTION": "Do mitochondria matter?",
    "CONTEXTS": ["Background text.", "Results  text\nwith newline."],
    "LABELS": ["BACKGROUND", "RESULTS"],
    "MESHES": ["Mitochondria", "Apoptosis", "Mitochondria"],
    "YEAR": "2011",
    "final_decision": "yes",
    "LONG_ANSWER": "They do.",
}


def _read(tmp_path, data, on_bad="error"):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    ledger = Ledger(on_bad)
    return list(read({"path": str(path)}, ledger)), ledger


def test_entry_becomes_a_corpus_record(tmp_path):
    (paper,), ledger = _read(tmp_path, {"21645374": ENTRY})
    assert paper.pmid == "21645374"
    assert paper.title == paper.question == "Do mitochondria matter?"
    assert [s.label for s in paper.sections] == ["BACKGROUND", "RESULTS"]
    assert paper.abstract == "Background text. Results text with newline."
    assert "They do." not in paper.abstract  # the conclusion is the answer: kept apart
    assert paper.long_answer == "They do." and paper.decision == "yes"
    assert paper.mesh == ["Apoptosis", "Mitochondria"] and paper.year == 2011
    assert ledger.records_in == 1 and not ledger.dropped


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({**ENTRY, "CONTEXTS": []}, "no CONTEXTS"),  # the malformed case the issue names
        ({k: v for k, v in ENTRY.items() if k != "CONTEXTS"}, "no CONTEXTS"),  # key missing
        ({**ENTRY, "final_decision": "perhaps"}, "final_decision 'perhaps'"),  # not a PubMedQA label
        ({**ENTRY, "QUESTION": ""}, "no QUESTION"),
    ],
)
def test_malformed_entry_stops_by_default_and_is_counted_with_skip(tmp_path, entry, problem):
    data = {"1": ENTRY, "2": entry}
    with pytest.raises(BadInputError, match=rf"record '2': {problem}"):
        _read(tmp_path, data)
    papers, ledger = _read(tmp_path, data, on_bad="skip")
    assert [p.pmid for p in papers] == ["1"]
    assert ledger.records_in == 2 and ledger.dropped == {"malformed": 1}


def test_bundled_file_reads_whole(tmp_path):
    ledger = Ledger()
    papers = list(read({"path": str(ROOT / "data/sources/pubmedqa/ori_pqal.json")}, ledger))
    assert len(papers) == 1000 == ledger.records_in
    assert {p.decision for p in papers} == {"yes", "no", "maybe"}
