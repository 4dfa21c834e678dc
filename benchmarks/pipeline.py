"""Benchmark: the whole DAG in a temp copy, each stage's wall time and peak RSS.

    python benchmarks/pipeline.py [--keep] [--force-pretrain]

Copies the repository's tracked files (`git ls-files`, so the committed `models/pretrained`
comes along as a fresh clone's would) into a temp folder, runs `dvc repro` there, and watches
the process tree twice a second: every `python stages/<x>.py` process is one stage run, named
by its script and its --round / --version argument. Prints a table of wall seconds and peak
resident memory (the stage process and its children) per stage, and the total; the budget of
the embedded default is 10 minutes on 2 cores (issue 10). `--force-pretrain` also rebuilds the
committed pre-trained base (`dvc repro -f pretrain` first), to measure what a rebuild costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def stage_name(cmdline: list[str]) -> str | None:
    """'merge@sft' from `python stages/merge.py --version sft ...`; None for other processes."""
    script = next((a for a in cmdline if a.startswith("stages/") and a.endswith(".py")), None)
    if script is None:
        return None
    name = Path(script).stem
    for flag in ("--round", "--version"):
        if flag in cmdline and cmdline.index(flag) + 1 < len(cmdline):
            return f"{name}@{cmdline[cmdline.index(flag) + 1]}"
    return name


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def watch(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, dict[str, dict[str, float]]]:
    """Run `cmd`, sampling its process tree every 0.5 s; per stage: first/last seen, peak RSS."""
    stages: dict[str, dict[str, float]] = {}
    top = subprocess.Popen(cmd, cwd=cwd, env=env)
    root = psutil.Process(top.pid)
    while top.poll() is None:
        now = time.perf_counter()
        try:
            procs = root.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                name = stage_name(p.cmdline())
            except psutil.Error:
                continue
            if name is None:
                continue
            s = stages.setdefault(name, {"start": now, "end": now, "rss": 0})
            s["end"] = now
            s["rss"] = max(s["rss"], tree_rss(p))
        time.sleep(0.5)
    return top.returncode, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temp copy")
    ap.add_argument("--force-pretrain", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tmp / f)
    subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["dvc", "repro"]
    if args.force_pretrain:
        cmd = ["sh", "-c", "dvc repro -f pretrain && dvc repro"]
    start = time.perf_counter()
    code, stages = watch(cmd, tmp, env)
    total = time.perf_counter() - start
    print(f"{'stage':<28}{'wall s':>9}{'peak RSS MiB':>14}")
    for name, s in sorted(stages.items(), key=lambda kv: kv[1]["start"]):
        print(f"{name:<28}{s['end'] - s['start'] + 0.5:>9.1f}{s['rss'] / 2**20:>14.0f}")
    print(f"{'total (dvc repro)':<28}{total:>9.1f}   budget 600 s -> {total / 600:.2f} of budget")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
