"""scripts/release.py: model versions as GTO tags, in throwaway git + DVC repos (never the project's own)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "release.py"
BIN = Path(sys.executable).parent  # the environment's dvc and gto, whatever PATH says
DVC, GTO = str(BIN / "dvc"), str(BIN / "gto")
TAG = "bioreasoner@v3.0.0"

needs_gto = pytest.mark.skipif(not Path(GTO).exists(), reason="gto is not installed in this environment")

MAKE_PY = """\
import json, pathlib, sys
key = sys.argv[1]
score = float(pathlib.Path("src/score.txt").read_text())
model = pathlib.Path(f"models/merged/{key}")
model.mkdir(parents=True, exist_ok=True)
(model / "model.txt").write_text(f"{key} {score}\\n")
pathlib.Path("metrics/eval").mkdir(parents=True, exist_ok=True)
pathlib.Path(f"metrics/eval/{key}.json").write_text(json.dumps({"pass_rate": score, "n": 12}))
"""

DVC_YAML = """\
stages:
  merge_eval:
    foreach: [v3_0, v3_1]
    do:
      cmd: python make.py ${item}
      deps: [make.py, src/score.txt]
      outs:
        - models/merged/${item}
      metrics:
        - metrics/eval/${item}.json:
            cache: false
"""


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def sh(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc.stdout.strip()


def release(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=repo, env=env(), capture_output=True, text=True, timeout=120
    )


def tags(repo: Path) -> list[str]:
    return sh(repo, "git", "tag").split()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sources committed, then `dvc repro`: dvc.lock, metrics and DVC's .gitignore are left uncommitted."""
    repo = tmp_path_factory.mktemp("release") / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "config", "user.name", "Release Test")
    sh(repo, "git", "config", "user.email", "release@example.org")
    sh(repo, "git", "config", "commit.gpgsign", "false")
    sh(repo, "git", "config", "tag.gpgsign", "false")
    sh(repo, DVC, "init", "-q")
    (repo / "src").mkdir()
    (repo / "src" / "score.txt").write_text("0.625\n")
    (repo / "make.py").write_text(MAKE_PY)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "sources")
    sh(repo, DVC, "repro", "-q")
    return repo


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "repo", symlinks=True))


def commit_all(repo: Path, message: str = "pipeline outputs") -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)


def load_script():
    spec = importlib.util.spec_from_file_location("release_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_version_mapping() -> None:
    mod = load_script()
    assert mod.parse_version("v3.0") == mod.Version(semver="v3.0.0", key="v3_0")
    assert mod.parse_version("v3.0.0") == mod.Version(semver="v3.0.0", key="v3_0")
    assert mod.parse_version("v2.1.3") == mod.Version(semver="v2.1.3", key="v2_1_3")
    assert mod.parse_version("v3.0").metrics == "metrics/eval/v3_0.json"
    for bad in ("3.0", "v3", "v3_0", "v03.0", "v3.0-rc1"):
        with pytest.raises(mod.Refused):
            mod.parse_version(bad)


@pytest.mark.slow
@needs_gto
def test_refuses_dirty_tree(repo: Path) -> None:
    commit_all(repo)
    head = sh(repo, "git", "rev-parse", "HEAD")
    (repo / "notes.txt").write_text("scratch\n")  # untracked counts as dirty
    proc = release(repo, "v3.0")
    assert proc.returncode == 1
    assert "git tree is dirty outside the pipeline files" in proc.stderr and "notes.txt" in proc.stderr
    (repo / "notes.txt").unlink()
    (repo / "make.py").write_text(MAKE_PY + "# edited\n")  # so does a tracked source
    proc = release(repo, "v3.0")
    assert proc.returncode == 1 and "make.py" in proc.stderr
    assert tags(repo) == [] and sh(repo, "git", "rev-parse", "HEAD") == head


@pytest.mark.slow
@needs_gto
def test_refuses_changed_pipeline(repo: Path) -> None:
    commit_all(repo)
    (repo / "src" / "score.txt").write_text("0.75\n")  # a dep changes, committed but not reproduced
    commit_all(repo, "new score")
    head = sh(repo, "git", "rev-parse", "HEAD")
    proc = release(repo, "v3.0")
    assert proc.returncode == 1
    assert "dvc status" in proc.stderr and "merge_eval@v3_0" in proc.stderr
    assert tags(repo) == [] and sh(repo, "git", "rev-parse", "HEAD") == head


@pytest.mark.slow
@needs_gto
def test_refuses_unbuilt_version(repo: Path) -> None:
    commit_all(repo)
    proc = release(repo, "v3.2")
    assert proc.returncode == 1 and "models/merged/v3_2 is not a pipeline output" in proc.stderr
    assert tags(repo) == []


@pytest.mark.slow
@needs_gto
def test_release_commits_pushes_and_tags(repo: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    sh(repo, DVC, "remote", "add", "-d", "store", str(store))
    sh(repo, "git", "add", ".dvc/config")
    sh(repo, "git", "commit", "-q", "-m", "remote")
    assert sh(repo, "git", "status", "--porcelain")  # dvc.lock, metrics, .gitignore still uncommitted

    proc = release(repo, "v3.0")
    assert proc.returncode == 0, proc.stderr
    # dvc.lock and metrics committed, nothing else left over
    assert sh(repo, "git", "log", "-1", "--format=%s").startswith(f"release {TAG}")
    assert sh(repo, "git", "status", "--porcelain") == ""
    assert "metrics/eval/v3_0.json" in sh(repo, "git", "ls-files", "metrics")
    # an annotated tag on that commit, its message holding the eval metrics
    assert sh(repo, "git", "cat-file", "-t", TAG) == "tag"
    assert sh(repo, "git", "rev-parse", f"{TAG}^{{commit}}") == sh(repo, "git", "rev-parse", "HEAD")
    message = sh(repo, "git", "tag", "-l", "--format=%(contents)", TAG)
    assert "models/merged/v3_0" in message and '"pass_rate": 0.625' in message
    # GTO reads it as version v3.0.0 of the bioreasoner artifact
    assert json.loads(sh(repo, GTO, "show", "--json"))["bioreasoner"]["version"] == "v3.0.0"
    versions = json.loads(sh(repo, GTO, "show", "bioreasoner", "--json"))
    assert [v["version"] for v in versions] == ["v3.0.0"]
    # the configured DVC remote received the model
    assert any(p.is_file() for p in store.rglob("*"))
    assert "pushing to the DVC remote" in proc.stderr and str(store) not in proc.stderr

    again = release(repo, "v3.0")
    assert again.returncode == 1 and f"tag {TAG} already exists" in again.stderr
    # GTO allows one version per commit: v3.1 needs a new commit
    other = release(repo, "v3.1")
    assert other.returncode == 1 and f"already released as {TAG}" in other.stderr
    assert tags(repo) == [TAG]


@pytest.mark.slow
@needs_gto
def test_release_without_remote(repo: Path) -> None:
    commit_all(repo)
    proc = release(repo, "v3.1")
    assert proc.returncode == 0, proc.stderr
    assert "no DVC remote configured" in proc.stderr
    assert tags(repo) == ["bioreasoner@v3.1.0"]
    assert sh(repo, "git", "log", "-1", "--format=%s") == "pipeline outputs"  # nothing needed committing
