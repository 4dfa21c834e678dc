"""dvc.yaml's deps are complete by construction, and this test keeps them so.

For every stage script we compute the transitive closure of the project modules it imports
(directly or through other modules, imports inside functions included) and require each of
those files to be covered by a declared dep (the file itself or a folder holding it).
Params drift too: a stage's `SECTIONS` (what `config.load` lets it read) must equal the
top-level params sections its dvc.yaml entry declares.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """The file of project module `name` (a package's __init__.py), or None if not ours."""
    if not name.startswith("bioreasoner"):
        return None
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module named by an import in `path`, with the packages above it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # importing a.b.c runs a and a.b
    return {n for n in out if module_file(n) is not None}


def closure(script: Path) -> set[Path]:
    """Project files a script executes when imported, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            f = module_file(name)
            if f is not None and f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def body(stage: dict) -> dict:
    return stage.get("do", stage)  # foreach stages keep their template under `do`


def script_of(stage: dict) -> Path:
    cmd = body(stage)["cmd"].split()
    return ROOT / next(w for w in cmd if w.startswith("stages/"))


LAUNCHER = "bioreasoner.training.launch"  # a training stage's cmd starts its script through this module


def launcher_of(stage: dict) -> Path | None:
    """The launcher module when the stage's cmd runs `python -m bioreasoner.training.launch`."""
    return module_file(LAUNCHER) if f"-m {LAUNCHER} " in body(stage)["cmd"] else None


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    deps = [d for d in body(stage)["deps"] if isinstance(d, str)]
    script = script_of(stage)
    assert script.relative_to(ROOT).as_posix() in deps, f"{name}: its own script is not a dep"
    files = closure(script)
    if (launcher := launcher_of(stage)) is not None:  # the launcher runs first, as part of the cmd
        files |= {launcher} | closure(launcher)
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not covered(p, deps))
    assert not missing, f"{name} imports files dvc.yaml does not declare: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_reads_exactly_the_params_it_declares(name: str) -> None:
    stage = STAGES[name]
    declared = set()
    for entry in body(stage).get("params", []):
        keys = [entry] if isinstance(entry, str) else list(entry)
        declared |= {k.split(".")[0] for k in keys}
    spec = importlib.util.spec_from_file_location(f"deps_{name}", script_of(stage))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reads = set(module.SECTIONS)
    if launcher_of(stage) is not None:  # the launcher reads launch.<stage> and passes the plan down
        reads.add("launch")
    assert reads == declared, f"{name}: SECTIONS {module.SECTIONS} vs dvc.yaml params {declared}"


def test_closure_sees_indirect_imports(tmp_path: Path) -> None:
    """The closure follows imports through other modules: a stage that imports only the rounds
    module still needs modeling/generation.py (rounds imports it), the case that went stale."""
    script = tmp_path / "stage.py"
    script.write_text("from bioreasoner.training.rounds import select_prompts\n")
    files = {p.relative_to(SRC).as_posix() for p in closure(script)}
    assert "bioreasoner/modeling/generation.py" in files
    assert "bioreasoner/core/records.py" in files
    assert "bioreasoner/__init__.py" in files
    assert not covered(SRC / "bioreasoner/modeling/generation.py", ["src/bioreasoner/training"])
