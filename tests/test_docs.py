"""Docs that match the code: the README's DAG and stage table come from the pipeline, and the
reasons behind values live in the repo (docs/decisions.md), cited by number."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DOC_SOURCES = ["README.md", "params.yaml", "dvc.yaml", "Makefile", "src", "stages", "scripts", "benchmarks"]


def _readme_dag():
    spec = importlib.util.spec_from_file_location("readme_dag", ROOT / "scripts" / "readme_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tracked_text(paths: list[str]) -> dict[str, str]:
    files = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    out = {}
    for name in files.stdout.split():
        path = ROOT / name
        if path.is_file() and path.suffix in {".md", ".py", ".yaml", ""}:
            out[name] = path.read_text(encoding="utf-8")
    return out


def test_readme_pipeline_section_is_generated_from_dvc_yaml() -> None:
    m = _readme_dag()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert m.splice(readme, m.render()) == readme, "README is stale: run python scripts/readme_dag.py"


def test_stage_table_lists_every_stage() -> None:
    import yaml

    table = _readme_dag().stage_table(ROOT / "dvc.yaml")
    for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        assert f"`{name}" in table


def test_no_pointers_to_documents_users_do_not_have() -> None:
    pattern = re.compile(r"seeds/0|seed 00\d|DESIGN\.md|\.\./shared|lab notebook|notebook entr")
    hits = [
        f"{name}:{i}: {line.strip()}"
        for name, text in tracked_text(DOC_SOURCES).items()
        for i, line in enumerate(text.splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not hits, "cite docs/decisions.md instead:\n" + "\n".join(hits[:20])


def test_every_cited_decision_exists() -> None:
    decisions = set(re.findall(r"^## (D\d+)\.", (ROOT / "docs" / "decisions.md").read_text(), flags=re.M))
    cited = set()
    for text in tracked_text(DOC_SOURCES).values():
        for group in re.findall(r"\[(D\d+(?:, *D\d+)*)\]", text):
            cited |= {c.strip() for c in group.split(",")}
    assert cited, "nothing cites docs/decisions.md"
    assert cited <= decisions, f"cited but not written: {sorted(cited - decisions)}"


def _readme_results():
    if str(ROOT / "scripts") not in sys.path:  # its `from readme_dag import splice`, as when run as a script
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LINEAGE = {
    "versions": {
        "base": {"pass_rate": {"value": 0.5, "lo": 0.4, "hi": 0.6, "n": 100}},
        "sft": {
            "pass_rate": {"value": 0.7, "lo": 0.61, "hi": 0.78, "n": 100},
            "pubmedqa_macro_f1": {"value": None, "lo": None, "hi": None, "n": 0},
        },
    },
    "deltas": {
        "sft": {
            "parent": "base",
            "pass_rate": {"diff": 0.2, "lo": 0.1, "hi": 0.3, "p": 0.0004, "significant": True, "n_pairs": 100},
            "pubmedqa_macro_f1": {"diff": None, "lo": None, "hi": None, "p": None, "significant": False},
        }
    },
}


def test_results_block_renders_values_intervals_and_significant_deltas() -> None:
    block = _readme_results().render_block(LINEAGE, rows=("pass_rate", "pubmedqa_macro_f1"))
    lines = block.splitlines()
    assert lines[1] == "| metric | base | sft |"
    # base has no parent: no star; sft's change is significant: starred
    assert lines[3] == "| pass_rate | 0.500 [0.400, 0.600] | 0.700 [0.610, 0.780] \\* |"
    # missing in base, null in sft (no qa rows): a dash each, never "None"
    assert lines[4] == "| pubmedqa_macro_f1 | - | - |"
    # only the significant delta is listed, with its interval and p
    assert "- sft vs base: pass_rate +0.2000 [+0.1000, +0.3000], p 0.0004" in lines


def test_results_block_check_fails_when_the_readme_is_stale(tmp_path) -> None:
    m = _readme_results()
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps(LINEAGE))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{m.START}\nold numbers\n{m.END}\noutro\n")
    script = ROOT / "scripts" / "readme_results.py"
    args = [sys.executable, str(script), "--lineage", str(lineage), "--readme", str(readme)]
    assert subprocess.run([*args, "--check"], capture_output=True).returncode == 1
    subprocess.run(args, check=True)
    assert subprocess.run([*args, "--check"], capture_output=True).returncode == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old numbers" not in text


@pytest.mark.parametrize(
    ("lineage", "block"),
    [
        ("metrics/lineage.json", "results"),  # the embedded default's committed run
        ("results/smollm2-cpu/metrics/lineage.json", "results-smollm2-cpu"),  # the real model's
    ],
)
def test_committed_results_blocks_match_their_metrics(lineage: str, block: str) -> None:
    """The README's tables are the committed metrics, not numbers typed in by hand."""
    args = [sys.executable, str(ROOT / "scripts" / "readme_results.py"), "--lineage", str(ROOT / lineage)]
    res = subprocess.run([*args, "--block", block, "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
