"""The pinned environment and run provenance: `make setup` installs from the committed lock, the
lock is what is installed, every lineage record carries the environment (deterministically),
and `make clean` never deletes a git-tracked file."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from bioreasoner.core import env, lineage
from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
MAKE = shutil.which("make")
GIT = shutil.which("git")
# Installed outside the lock: torch by the Makefile's TORCH_SPEC, the project itself editable.
NOT_LOCKED = {"torch", "bioreasoner"}

needs_make = pytest.mark.skipif(MAKE is None, reason="needs make")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} from the lock's logical (backslash-joined) lines."""
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split(" --")
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", spec.strip())
        assert m, f"requirements.lock: not pinned with ==: {line[:100]!r}"
        hashes = [o.strip().removeprefix("hash=") for o in options if o.strip().startswith("hash=")]
        assert canonical(m[1]) not in pins, f"requirements.lock pins {m[1]} twice"
        pins[canonical(m[1])] = (m[2], hashes)
    return pins


def make_dry_run(*args: str, cwd: Path = ROOT) -> list[str]:
    res = subprocess.run([MAKE, "-n", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return res.stdout.splitlines()


# -- the Makefile installs from the lock


@needs_make
def test_setup_installs_torch_then_the_lock_with_hashes_then_the_project_without_deps():
    lines = [ln for ln in make_dry_run("-B", "setup") if " -m pip install" in ln]
    torch_i = next(i for i, ln in enumerate(lines) if "torch==" in ln)
    lock_i = next(i for i, ln in enumerate(lines) if "-r requirements.lock" in ln)
    proj_i = next(i for i, ln in enumerate(lines) if ln.rstrip().endswith("-e ."))
    assert torch_i < lock_i < proj_i  # torch first: the lock must find it satisfied, CPU build kept
    assert "--require-hashes" in lines[lock_i]
    assert "--no-deps" in lines[proj_i]  # the project adds nothing the lock does not pin
    pip_pin = LOCK.read_text().split("\npip==", 1)[1].split()[0]
    assert f"pip=={pip_pin}" in lines[0]  # pip itself at the locked version, before anything else
    assert not any(re.search(r"install .*-e \"?\.\[", ln) for ln in lines)  # no unpinned `-e .[dev]`


@needs_make
def test_changing_the_lock_reinstalls(tmp_path):
    locks = ("pyproject.toml", "requirements.lock", "requirements-models.lock")
    for name in ("Makefile", *locks):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    installed = tmp_path / ".venv/.installed"
    installed.touch()
    old = installed.stat().st_mtime - 100
    for name in locks:
        os.utime(tmp_path / name, (old, old))

    def up_to_date() -> bool:
        return subprocess.run([MAKE, "-q", "setup"], cwd=tmp_path, capture_output=True).returncode == 0

    assert up_to_date()
    for name in locks[1:]:  # either lock, the models' wheel pins included, re-runs the set-up
        os.utime(tmp_path / name, (old + 200, old + 200))
        assert not up_to_date(), name
        os.utime(tmp_path / name, (old, old))
        assert up_to_date()


# -- the lock is what is installed


def test_every_lock_line_is_pinned_and_hashed():
    pins = lock_pins()
    assert len(pins) > 50  # the whole closure, not just the direct dependencies
    assert not NOT_LOCKED & pins.keys()  # torch stays the Makefile's (CPU build here, CUDA there)
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "dvc", "pytest", "ruff", "pip"):
        assert name in pins, f"{name} missing from requirements.lock"
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_lock_matches_the_installed_versions():
    """Fails when the lock drifts from this environment: run `make lock` (or `make setup`)."""
    pins = lock_pins()
    drift = []
    for name, (version, _) in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift.append(f"{name}=={version} locked but not installed")
            continue
        if Version(installed) != Version(version):
            drift.append(f"{name}: locked {version}, installed {installed}")
    assert not drift, "requirements.lock differs from the environment:\n" + "\n".join(drift)


def _requirement_closure(roots: set[str]) -> set[str]:
    """The installed distributions `roots` need, transitively (markers evaluated here)."""
    marker_env = default_environment()
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({**marker_env, "extra": ""}):
                todo.append(canonical(r.name))
    return seen


def test_nothing_installed_is_missing_from_the_lock():
    pins = lock_pins()
    # torch's own dependencies (CUDA wheels on a GPU machine) and the optional CUDA extras
    # come with the Makefile's TORCH_SPEC or `pip install bitsandbytes`, not from the lock.
    outside = _requirement_closure({"torch", *env.OPTIONAL_LIBRARIES}) | NOT_LOCKED
    installed = {canonical(d.metadata["Name"]) for d in metadata.distributions()}
    missing = sorted(installed - pins.keys() - outside - {"wheel"})
    assert not missing, f"installed but not in requirements.lock (run `make lock`): {missing}"


# -- environment() and lineage


def test_environment_reports_the_running_versions_and_hardware():
    import peft
    import torch
    import transformers
    import trl

    e = env.environment()
    libs, hw = e["libraries"], e["hardware"]
    assert libs["python"] == platform.python_version()
    assert libs["torch"] == torch.__version__
    assert libs["transformers"] == transformers.__version__
    assert libs["trl"] == trl.__version__
    assert libs["peft"] == peft.__version__
    for name in ("accelerate", "datasets", "tokenizers", "dvc"):
        assert libs[name] == metadata.version(name)
    assert hw["torch_threads"] == torch.get_num_threads()
    assert hw["cpu"] and hw["machine"] == platform.machine()
    if torch.cuda.is_available():
        assert hw["cuda"]["device_count"] == torch.cuda.device_count()
        assert hw["cuda"]["version"] == torch.version.cuda
    else:
        assert hw["cuda"] is None
    assert json.loads(json.dumps(e)) == e  # plain JSON


def test_core_does_not_import_torch_at_import_time():
    code = "import sys, bioreasoner.core.env, bioreasoner.core.lineage; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lineage_record_carries_the_environment_and_is_deterministic(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    a = lineage.record("sft", {"sft": {"learning_rate": 0.1}}, [data])
    b = lineage.record("sft", {"sft": {"learning_rate": 0.1}}, [data])
    assert a == b
    assert a["environment"] == env.environment()
    # Written twice: the same bytes (DVC hashes the folders these go into).
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        lineage.write(tmp_path / d, lineage.record("sft", {"sft": {"learning_rate": 0.1}}, [data]))
    assert (tmp_path / "one/lineage.json").read_bytes() == (tmp_path / "two/lineage.json").read_bytes()
    assert str(tmp_path) not in json.dumps(a["environment"])  # nothing run-specific


def test_hand_built_record_gets_the_environment_and_the_card_shows_it(tmp_path):
    import torch

    sft = lineage.record("sft", {"sft": {"learning_rate": 0.1}}, [])
    merge = {"stage": "merge", "version": "t", "params": {}, "inputs": {}}
    merge |= {"parent": {"path": "p", "lineage": None}, "adapter": {"path": "a", "lineage": sft}}
    lineage.write(tmp_path, merge)  # merge builds its record by hand, without record()
    assert lineage.read(tmp_path)["environment"] == env.environment() == merge["environment"]
    card = lineage.model_card("t", merge, eval_metrics_path="metrics/eval/t.json", notes=[])
    section = card.split("## Environment", 1)[1].split("\n## ", 1)[0]
    assert "| | sft, merge (t) |" in section  # one column: both steps ran here
    assert f"| torch | {torch.__version__} |" in section
    assert f"| torch threads | {torch.get_num_threads()} |" in section
    assert "| CUDA |" in section and "| CPU |" in section


def test_card_gives_one_column_per_environment_and_names_steps_without_one():
    base = {"stage": "base", "params": {}, "inputs": {}}  # made before environments were recorded
    sft = lineage.record("sft", {}, [])
    gpu = json.loads(json.dumps(sft["environment"]))
    gpu["hardware"]["cuda"] = {"version": "12.8", "cudnn": 91000, "device_count": 1, "devices": ["NVIDIA H100"]}
    merge = {"stage": "merge", "version": "t", "params": {}, "inputs": {}, "environment": gpu}
    merge |= {"parent": {"path": "p", "lineage": base}, "adapter": {"path": "a", "lineage": sft}}
    card = lineage.model_card("t", merge, eval_metrics_path="m.json", notes=[])
    assert "| | sft | merge (t) |" in card
    assert "| CUDA | none | 12.8 (cuDNN 91000), 1 x NVIDIA H100 |" in card
    assert "Not recorded for: base" in card


# -- make clean


@needs_make
@pytest.mark.skipif(GIT is None, reason="needs git")
def test_make_clean_removes_only_untracked_outputs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(ROOT / "Makefile", repo / "Makefile")
    shutil.copy2(ROOT / ".gitignore", repo / ".gitignore")
    tracked = {
        "metrics/harvest.json": "{}",
        "metrics/eval/sft.json": "{}",
        "dvclive/sft/metrics.json": "{}",
        "dvclive/sft/plots/metrics/loss.tsv": "step\tloss\n",
        "data/.gitignore": "/corpus.jsonl\n",
        "data/tasks/.gitignore": "/train.jsonl\n",
        "data/sources/pubmedqa/ori_pqal.json": "{}",
        "models/.gitignore": "/base\n",
        ".dvc/.gitignore": "/config.local\n/tmp\n/cache\n",
        ".dvc/config": "[core]\n",
    }
    outputs = ["data/corpus.jsonl", "data/tasks/train.jsonl", "models/base/model.safetensors", ".cache/x/y"]
    outputs += [
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/tmp/lock",
        "checkpoints/sft/step-1/x",
        "src/pkg/__pycache__/m.pyc",
    ]
    kept = {".venv/bin/python": "", ".dvc/config.local": "[remote]\n", "notes.md": "new work", "metrics/new.json": "{}"}
    for rel, text in tracked.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = [GIT, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    for rel, text in {**dict.fromkeys(outputs, "out"), **kept}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)

    dry = make_dry_run("clean", cwd=repo)
    assert not any(re.match(r"\s*rm\b", ln) and re.search(r"\b(metrics|dvclive)\b", ln) for ln in dry)
    subprocess.run([MAKE, "clean"], cwd=repo, check=True, capture_output=True)

    for rel, text in tracked.items():
        assert (repo / rel).read_text() == text, f"make clean touched tracked {rel}"
    for rel, text in kept.items():  # .venv, local DVC config, untracked work that is not an output
        assert (repo / rel).read_text() == text, f"make clean removed {rel}"
    for rel in outputs:
        assert not (repo / rel).exists(), f"make clean left {rel}"
