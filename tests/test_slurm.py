"""scripts/slurm.py: the rendered batch script is valid bash, clones the repo into a scratch folder
of its own before anything runs, runs the one stage or experiment there, pushes results, and
quotes every value. A dry run executes it with logging stand-ins for git, dvc, python and scontrol
(no Slurm, no network)."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOSTILE_REPO = "https://example.org/lab/bio reasoner.git?$(touch PWNED)"


def load():
    spec = importlib.util.spec_from_file_location("slurm_script", ROOT / "scripts" / "slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slurm = load()


def stub_bin(folder: Path, log: Path) -> Path:
    """git, dvc, python and scontrol that append `<cwd> <name> <args>` to `log`; git clone makes
    the target folder like the real one."""
    folder.mkdir()
    body = {
        "git": 'if [ "$1" = clone ]; then mkdir -p "${@: -1}"; fi',
        "dvc": "",
        "python": "",
        "scontrol": "echo node001",
    }
    for name, extra in body.items():
        path = folder / name
        path.write_text(f'#!/bin/bash\necho "$PWD {name} $*" >> {log}\n{extra}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def dry_run(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    log, scratch, venv = tmp_path / "calls.log", tmp_path / "scratch", tmp_path / "venv"
    scratch.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")  # a prepared venv: activating it changes nothing here
    job = tmp_path / "job.sbatch"
    job.write_text(script.replace("/shared/venv", str(venv)))
    env = {
        "PATH": f"{stub_bin(tmp_path / 'bin', log)}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "SLURM_TMPDIR": str(scratch),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[001-002]",
        "HOME": str(tmp_path),
    }
    res = subprocess.run(["bash", str(job)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    return res, log.read_text().splitlines() if log.exists() else [], scratch / "bioreasoner-4242"


def test_stage_job_clones_runs_the_stage_and_pushes(tmp_path):
    script = slurm.render("stage", "dpo@v2_0", repo=HOSTILE_REPO, rev="abc123", venv="/shared/venv", gpus=8)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --job-name=br-dpo@v2_0" in script

    res, calls, work = dry_run(script, tmp_path)
    assert res.returncode == 0, res.stderr
    assert calls[0].endswith(f"git clone --quiet {HOSTILE_REPO} {work}")  # first, and the URL stays literal
    assert calls[1] == f"{work} git checkout --quiet abc123"
    ran = [c.removeprefix(f"{work} ") for c in calls if c.startswith(f"{work} ")]
    assert "dvc repro --pull dpo@v2_0" in ran  # in the clone, not in the submitting checkout
    assert ran[-2:] == ["dvc push", "python scripts/push_run_cache.py"]
    assert not (tmp_path / "PWNED").exists()
    assert not work.exists()  # the scratch clone is removed when the job ends


def test_exp_job_sets_params_and_pushes_the_experiment(tmp_path):
    script = slurm.render(
        "exp",
        "grpo",
        name="beta-0.05-s7",
        sets=["grpo.beta=0.05", "seed=7"],
        repo="git@host:lab/bioreasoner.git",
        rev="abc123",
        venv="/shared/venv",
        nodes=2,
        partition="gpu",
    )
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=gpu" in script
    res, calls, work = dry_run(script, tmp_path)
    assert res.returncode == 0, res.stderr
    ran = [c.removeprefix(f"{work} ") for c in calls if c.startswith(f"{work} ")]
    assert "dvc exp run --pull --name beta-0.05-s7 -S grpo.beta=0.05 -S seed=7 grpo" in ran
    assert ran[-1] == "dvc exp push origin beta-0.05-s7"


def test_a_failing_stage_stops_the_job_before_any_push(tmp_path):
    script = slurm.render("stage", "sft", repo="r", rev="abc123", venv="/shared/venv")
    res, calls, _ = dry_run(script.replace("dvc repro --pull sft", "dvc repro --pull sft && false"), tmp_path)
    assert res.returncode != 0
    assert not any(c.endswith("dvc push") for c in calls)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "stage", "target": "sft; rm -rf ~"}, "stage"),
        ({"mode": "exp", "target": "grpo"}, "--name"),
        ({"mode": "stage", "target": "sft", "sets": ["grpo.beta=0.1"]}, "-S belongs to `exp`"),
        ({"mode": "exp", "target": "grpo", "name": "a", "sets": ["beta 0.1"]}, "-S"),
        ({"mode": "stage", "target": "sft", "time": "4h"}, "--time"),
        ({"mode": "stage", "target": "sft", "gpus": -1}, "gpus"),
    ],
)
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slurm.render(kwargs.pop("mode"), kwargs.pop("target"), repo="r", rev="abc", venv="/v", **kwargs)


def test_cli_renders_to_stdout_and_refuses_with_one_line():
    cmd = [sys.executable, str(ROOT / "scripts" / "slurm.py"), "stage", "sft", "--repo", "r", "--venv", "/v"]
    ok = subprocess.run([*cmd, "--rev", "abc"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.startswith("#!/bin/bash") and "dvc repro --pull sft" in ok.stdout
    bad = subprocess.run([*cmd, "--rev", "abc", "--mem", "lots"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --mem: 'lots' is not valid"
