"""Render a Slurm batch script that runs one DVC stage, or one experiment, in a clone of its own.

    python scripts/slurm.py stage sft --repo git@host:lab/bioreasoner.git --venv /shared/venvs/br > sft.sbatch
    python scripts/slurm.py exp grpo --name beta-0.05-s7 -S grpo.beta=0.05 -S seed=7 \\
        --repo git@host:lab/bioreasoner.git --venv /shared/venvs/br --gpus 2 > exp.sbatch
    sbatch sft.sbatch

Why a clone per job: DVC holds a lock on the repository while it reproduces, so two jobs in one
checkout would wait on (or fail against) each other. Each job clones the repo at `--rev` (default:
this checkout's HEAD commit) into node-local scratch, pulls what it needs from the DVC remote (or
restores it from the run-cache), runs, and pushes outs and run-cache back; `stage` leaves dvc.lock
in the scratch clone (the run-cache carries the result: `dvc repro --pull` elsewhere restores it),
`exp` pushes the experiment to the git remote (`dvc exp push origin NAME`; `dvc exp pull` it, or
`dvc exp show` after `git fetch`). Template: scripts/slurm/job.sbatch.in; every value is
shell-quoted. Credentials are never rendered: the job inherits them from the submitting
environment (sbatch exports it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm") / "job.sbatch.in"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")  # stage addresses (dpo@v2_0) and experiment names
TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){1,2}$")  # Slurm's D-HH:MM:SS / HH:MM:SS / MM:SS
MEM_RE = re.compile(r"^\d+[KMGT]?$")
SET_RE = re.compile(r"^\+?[A-Za-z_][\w.]*=.*$")  # dvc exp run -S key=value


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{what}: {value!r} is not valid")
    return value


def render(
    mode: str,
    target: str,
    *,
    repo: str,
    rev: str,
    venv: str,
    name: str | None = None,
    sets: list[str] | None = None,
    gpus: int = 1,
    nodes: int = 1,
    cpus: int = 8,
    mem: str = "64G",
    time: str = "04:00:00",
    partition: str | None = None,
    log_dir: str = "slurm-logs",
) -> str:
    """The batch script's text; raises ValueError naming the first bad value."""
    check(target, NAME_RE, "stage")
    if gpus < 0 or nodes < 1 or cpus < 1:
        raise ValueError(f"gpus >= 0, nodes >= 1, cpus >= 1 (got {gpus}, {nodes}, {cpus})")
    sets = [check(s, SET_RE, "-S") for s in sets or []]
    q = shlex.quote
    if mode == "stage":
        if sets:
            raise ValueError("-S belongs to `exp` (a stage job runs the committed params)")
        command = f"dvc repro --pull {q(target)}"
        job, extra, note = f"br-{target}", "", ""
    elif mode == "exp":
        if not name:
            raise ValueError("exp needs --name (the experiment's name, also the job's)")
        check(name, NAME_RE, "--name")
        set_args = " ".join(f"-S {q(s)}" for s in sets)
        command = f"dvc exp run --pull --name {q(name)} {set_args} {q(target)}".replace("  ", " ")
        job = f"br-{name}"
        extra = f"dvc exp push origin {q(name)}  # the experiment's commit and its outs"
        note = ", the experiment to git"
    else:
        raise ValueError(f"mode must be stage or exp, got {mode!r}")
    values = {
        "JOB_NAME": job,
        "NODES": str(nodes),
        "GPUS": str(gpus),
        "CPUS": str(cpus),
        "MEM": check(mem, MEM_RE, "--mem"),
        "TIME": check(time, TIME_RE, "--time"),
        "LOG_DIR": q(log_dir),
        "PARTITION_LINE": f"#SBATCH --partition={check(partition, NAME_RE, '--partition')}" if partition else "",
        "REPO": q(repo),
        "REV": q(rev),
        "VENV": q(venv),
        "COMMAND": command,
        "PUSH_EXTRA": extra,
        "PUSH_EXTRA_NOTE": note,
    }
    text = TEMPLATE.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if left := re.findall(r"@[A-Z_]+@", text):
        raise ValueError(f"{TEMPLATE}: placeholders left unrendered: {sorted(set(left))}")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["stage", "exp"])
    ap.add_argument("target", help="the stage to reproduce (e.g. sft, dpo@v2_0, grpo)")
    ap.add_argument("--repo", required=True, help="git URL every job clones (the lab's git remote)")
    ap.add_argument("--rev", default=None, help="commit to check out (default: HEAD of this checkout)")
    ap.add_argument("--venv", required=True, help="a prepared virtual environment on the cluster (make setup)")
    ap.add_argument("--name", help="exp: the experiment's name")
    ap.add_argument("-S", "--set-param", dest="sets", action="append", default=[], help="exp: key=value")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--mem", default="64G")
    ap.add_argument("--time", default="04:00:00")
    ap.add_argument("--partition")
    ap.add_argument("--log-dir", default="slurm-logs")
    args = ap.parse_args(argv)
    try:
        text = render(
            args.mode,
            args.target,
            repo=args.repo,
            rev=args.rev or head_commit(),
            venv=args.venv,
            name=args.name,
            sets=args.sets,
            gpus=args.gpus,
            nodes=args.nodes,
            cpus=args.cpus,
            mem=args.mem,
            time=args.time,
            partition=args.partition,
            log_dir=args.log_dir,
        )
    except (ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
