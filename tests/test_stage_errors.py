"""Bad input through the real stage entry points: one clear line, non-zero exit, no output."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_stage

GOOD = {
    "QUESTION": "Q?",
    "CONTEXTS": ["Some text."],
    "LABELS": ["BACKGROUND"],
    "MESHES": [],
    "YEAR": "2000",
    "final_decision": "no",
    "LONG_ANSWER": "No.",
}


def set_source(project, path, **harvest):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["harvest"]["sources"] = [{"kind": "pubmedqa", "path": path}]
    params["harvest"].update(harvest)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


CASES = [
    # (file content as bytes or None for "no such file", the message the user must see)
    (None, "no file matches this path"),
    (b'{"1": {"QUESTION": "Q?",\n "CONTEXTS": [}', "src.json: line 2: malformed JSON"),
    (b'{"1": {"QUESTION": "Q\xff?"}}', "src.json: line 1: not valid UTF-8"),
    (b"{}", "yielded no usable records"),  # an empty source
    (json.dumps({"1": GOOD, "2": {**GOOD, "CONTEXTS": []}}).encode(), "src.json: record '2': no CONTEXTS"),
]


@pytest.mark.parametrize(("content", "message"), CASES)
def test_harvest_bad_input(project, content, message):
    src = project / "data/sources/bad/src.json"
    if content is not None:
        src.parent.mkdir(parents=True)
        src.write_bytes(content)
    set_source(project, "data/sources/bad/src.json")
    res = run_stage(project, "harvest.py")
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert message in errors[0]
    assert not (project / "data/corpus.jsonl").exists()
    assert not list((project / "data").glob(".corpus.jsonl.*"))  # no temp file left either


def test_skip_drops_and_counts_malformed_records(project):
    src = project / "data/sources/bad/src.json"
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps({"1": GOOD, "2": {**GOOD, "CONTEXTS": []}}))
    set_source(project, "data/sources/bad/src.json", on_bad_record="skip")
    res = run_stage(project, "harvest.py")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((project / "metrics/harvest.json").read_text())
    assert metrics["records_in"] == 2 and metrics["kept"] == 1
    assert metrics["dropped"] == {"duplicate": 0, "malformed": 1, "no_abstract": 0, "no_pmid": 0}


def test_unknown_source_kind(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["harvest"]["sources"] = [{"kind": "arxiv", "path": "x"}]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_stage(project, "harvest.py")
    assert res.returncode == 1
    assert "params.yaml: harvest.sources.0: Input tag 'arxiv' found using 'kind' does not match" in res.stderr


def test_build_triplets_rejects_a_corrupt_corpus(project):
    (project / "data/corpus.jsonl").write_text('{"pmid": "1", "title": "T", "source": "x"}\n')
    res = run_stage(project, "build_triplets.py")
    assert res.returncode == 1
    assert "data/corpus.jsonl: line 1: field 'abstract': Field required" in res.stderr
    assert not (project / "data/tasks").exists()


def test_harvest_merges_kinds_and_counts_drops_by_reason(project):
    """PubMedQA + efetch XML + an OpenAlex page (plus a duplicate of one XML article)."""
    import shutil

    from tests.conftest import ROOT

    fx = ROOT / "tests/fixtures"
    (project / "data/sources/efetch").mkdir(parents=True)
    shutil.copy(fx / "pubmed/efetch.xml", project / "data/sources/efetch/a.xml")
    shutil.copy(fx / "pubmed/efetch.xml", project / "data/sources/efetch/b.xml")  # every article twice
    (project / "data/sources/openalex").mkdir()
    shutil.copy(fx / "openalex/results_page.json", project / "data/sources/openalex/page.json")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["harvest"]["sources"] += [
        {"kind": "pubmed_xml", "path": "data/sources/efetch/*.xml"},
        {"kind": "openalex_json", "path": "data/sources/openalex/*.json"},
    ]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_stage(project, "harvest.py")
    assert res.returncode == 0, res.stderr
    m = json.loads((project / "metrics/harvest.json").read_text())
    xml = m["by_source"]["1:pubmed_xml"]
    assert m["dropped"]["no_abstract"] == xml["dropped"]["no_abstract"] + 1  # + the OpenAlex work W3004
    assert m["dropped"]["no_pmid"] == 1  # W3003
    assert m["dropped"]["duplicate"] == xml["usable"] // 2  # b.xml repeats a.xml
    assert m["kept"] == 1000 + xml["usable"] // 2 + 2
    assert m["records_in"] == sum(s["records_in"] for s in m["by_source"].values())
    pmids = [json.loads(line)["pmid"] for line in (project / "data/corpus.jsonl").read_text().splitlines()]
    assert len(pmids) == len(set(pmids)) and "28099829" not in pmids  # a CommentsCorrections PMID
