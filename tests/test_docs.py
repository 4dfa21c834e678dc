"""Docs that match the code: the README's DAG and stage table come from the pipeline, and the
reasons behind values live in the repo (docs/decisions.md), cited by number."""

from __future__ import annotations

import importlib.util
import re
import subprocess

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
