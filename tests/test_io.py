"""Readers report bad input as one line naming the file, the record and the problem."""

from __future__ import annotations

import pytest

from bioreasoner.core.io import BadInputError, read_json, read_jsonl, write_jsonl
from bioreasoner.core.records import Paper

GOOD = '{"pmid": "1", "title": "T", "abstract": "A.", "source": "x"}'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # a truncated object on line 2
        (GOOD + '\n{"pmid": "2", "title"\n', "line 2: malformed JSON"),
        # a record without PMID
        (GOOD + '\n{"title": "T", "abstract": "A.", "source": "x"}\n', "line 2: field 'pmid': Field required"),
        # a PMID that is not a number
        ('{"pmid": "PMC9", "title": "T", "abstract": "A.", "source": "x"}\n', "line 1: field 'pmid'"),
        # a record with empty text
        ('{"pmid": "3", "title": "T", "abstract": "  ", "source": "x"}\n', "line 1: field 'abstract'"),
        # an unknown field is a schema error, not silently dropped
        ('{"pmid": "3", "title": "T", "abstract": "A", "source": "x", "pmcid": "1"}\n', "field 'pmcid'"),
    ],
)
def test_jsonl_errors_name_file_line_and_problem(tmp_path, content, expected):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInputError) as err:
        read_jsonl(path, Paper)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{\n"a": "caf\xe9"\n}\n')  # latin-1 e-acute
    with pytest.raises(BadInputError, match=r"x\.json: line 2: not valid UTF-8 \(byte 0xe9\)"):
        read_json(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_json(tmp_path / "nope.json")


def test_failed_write_leaves_no_partial_output(tmp_path):
    out = tmp_path / "out.jsonl"

    def records():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(out, records())
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def test_write_then_read_round_trip(tmp_path):
    paper = Paper.model_validate_json(GOOD)
    write_jsonl(tmp_path / "c.jsonl", [paper])
    assert read_jsonl(tmp_path / "c.jsonl", Paper) == [paper]


def test_temps_of_a_killed_write_are_swept_by_the_next_one(tmp_path):
    """kill -9 skips atomic_path's cleanup; the next write of the same out removes what it left
    (a 7B merge's temp folder is ~15 GB), and only names of atomic_path's own shape."""
    from bioreasoner.core.io import atomic_path, write_json

    (tmp_path / ".metrics.json.a1b2c3d4.tmp").write_text("half")  # a killed write_json
    (tmp_path / ".model.x_y9z8w7").mkdir()  # a killed directory write
    (tmp_path / ".model.x_y9z8w7" / "model.safetensors").write_bytes(b"0" * 10)
    (tmp_path / ".metrics.json.notes").write_text("keep")  # not our shape
    (tmp_path / ".other.json.a1b2c3d4.tmp").write_text("keep")  # another out's temp: its own next run
    write_json(tmp_path / "metrics.json", {"a": 1})
    with atomic_path(tmp_path / "model", directory=True) as tmp:
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".metrics.json.notes",
        ".other.json.a1b2c3d4.tmp",
        "metrics.json",
        "model",
    ]
