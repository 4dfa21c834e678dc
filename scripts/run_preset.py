"""Run the whole pipeline under a params preset, beside the committed one, with a progress bar.

    make repro PRESET=smollm2-cpu
    python scripts/run_preset.py smollm2-cpu                  # same
    python scripts/run_preset.py smollm2-cpu --dry            # list the stages and the estimate only

The run happens in a git worktree of HEAD at `.cache/presets/<name>/` (params.yaml there gets the
preset, `pretrain` is frozen when nothing reads `models/pretrained`), so the embedded default's
params, `dvc.lock` and outs in this checkout are never touched. The worktree shares this
checkout's DVC cache and `.venv`, and keeps its outs between runs: a second run, or one after a
crash, re-runs only what changed or did not finish (DVC's own rule).

Stages run one at a time (`dvc repro --single-item`, in the order `dvc repro --dry` gives), each
logging to `results/<name>/logs/<stage>.log`; the bar's total is the sum of the stages' times from
the last run (`results/<name>/times.json`), so the ETA holds from the first stage. At the end the
run's metrics, curves, figures, params and `dvc.lock` are copied to `results/<name>/` (git-tracked;
the weights stay in the DVC cache). A stage that fails stops the run: its log's last lines are
printed, the times of the stages that finished are kept, nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from apply_preset import apply  # noqa: E402  (scripts/ is not a package)

from bioreasoner.core.io import BadInputError, write_json  # noqa: E402

COPIED = ("metrics", "reports", "dvclive", "params.yaml", "dvc.lock")  # what results/<name>/ keeps
DEFAULT_ESTIMATE_S = 60.0  # a stage never timed yet


def sh(*cmd: str, cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    with open(log, "w", encoding="utf-8") as f:
        return subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True)


def preset_file(name: str) -> Path:
    path = ROOT / "presets" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))
        raise BadInputError(path, None, f"no such preset (presets: {', '.join(known)})")
    return path


def prepare(name: str, work: Path) -> None:
    """A worktree of HEAD with the preset applied; its DVC cache and venv are this checkout's."""
    head = sh("git", "rev-parse", "HEAD", cwd=ROOT).stdout.strip()
    if (work / ".git").exists():
        sh("git", "checkout", "--quiet", "--force", "--detach", head, cwd=work)
    else:
        work.parent.mkdir(parents=True, exist_ok=True)
        sh("git", "worktree", "add", "--quiet", "--force", "--detach", str(work), head, cwd=ROOT)
    venv = work / ".venv"
    if not venv.exists():
        venv.symlink_to(ROOT / ".venv")
    sh("dvc", "config", "--local", "cache.dir", str(ROOT / ".dvc" / "cache"), cwd=work)
    apply(preset_file(name), work / "params.yaml")
    if reads_nothing_pretrained(work):
        sh("dvc", "freeze", "pretrain", cwd=work)


def reads_nothing_pretrained(work: Path) -> bool:
    text = (work / "params.yaml").read_text(encoding="utf-8")
    return "models/pretrained" not in re.sub(r"#.*", "", text)


def planned(work: Path) -> list[str]:
    """The stages `dvc repro` would run, in its order: those `dvc status` reports changed and
    everything downstream of them, frozen ones left out."""
    import networkx as nx
    from dvc.repo import Repo

    changed = set(json.loads(sh("dvc", "status", "--json", cwd=work).stdout or "{}"))
    with Repo(str(work)) as repo:
        upstream_first = nx.DiGraph(repo.index.graph).reverse()  # DVC's edges point at dependencies
        by_name = {st.name: st for st in upstream_first}  # names as `dvc status` gives them (eval@sft)
        todo = set(changed)
        for name in changed:
            if name in by_name:
                todo |= {d.name for d in nx.descendants(upstream_first, by_name[name])}
        return [st.name for st in nx.topological_sort(upstream_first) if st.name in todo and not st.frozen]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", help="a file name in presets/, without .yaml (e.g. smollm2-cpu)")
    ap.add_argument("--work", type=Path, help="the worktree (default .cache/presets/<preset>)")
    ap.add_argument("--results", type=Path, help="where results go (default results/<preset>)")
    ap.add_argument("--dry", action="store_true", help="prepare and list the stages with their estimate")
    args = ap.parse_args(argv)
    work = (args.work or ROOT / ".cache" / "presets" / args.preset).resolve()
    results = (args.results or ROOT / "results" / args.preset).resolve()
    try:
        preset_file(args.preset)
        prepare(args.preset, work)
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(err.cmd)} failed: {(err.stderr or '').strip()[-400:]}", file=sys.stderr)
        return 1

    # -- the plan and its estimate, from the last run's times
    stages = planned(work)
    times_path = results / "times.json"
    last = json.loads(times_path.read_text())["stages_s"] if times_path.is_file() else {}
    estimate = {s: float(last.get(s, DEFAULT_ESTIMATE_S)) for s in stages}
    print(f"{len(stages)} stages to run in {work}, estimated {sum(estimate.values()) / 60:.0f} min")
    if args.dry:
        for s in stages:
            print(f"  {s}: {estimate[s]:.0f} s")
        return 0

    # -- run them one at a time, timing each
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    took: dict[str, float] = {}
    env_path = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    bar = tqdm(
        total=round(sum(estimate.values())),
        unit="s",
        desc=args.preset,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
    )
    for stage in stages:
        bar.set_postfix_str(stage)
        start = time.monotonic()
        proc = sh("dvc", "repro", "--single-item", stage, cwd=work, log=logs / f"{stage.replace('@', '_')}.log")
        took[stage] = round(time.monotonic() - start, 1)
        bar.update(round(estimate[stage]))
        if proc.returncode != 0:
            bar.close()
            tail = (logs / f"{stage.replace('@', '_')}.log").read_text(encoding="utf-8").splitlines()[-15:]
            print(
                f"error: stage {stage} failed (log: {logs / stage.replace('@', '_')}.log):",
                *tail,
                sep="\n",
                file=sys.stderr,
            )
            write_times(times_path, {**last, **took}, partial=True)
            return 1
    bar.close()

    # -- publish: what the run measured, next to the committed default's
    for name in COPIED:
        src, dst = work / name, results / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".gitignore"))
        elif src.is_file():
            shutil.copy2(src, dst)
    write_times(times_path, {**last, **took}, partial=False)
    print(f"done in {sum(took.values()) / 60:.1f} min: {results.relative_to(ROOT)}/")
    return 0


def write_times(path: Path, stages_s: dict[str, float], *, partial: bool) -> None:
    write_json(
        path,
        {
            "stages_s": stages_s,
            "total_s": round(sum(stages_s.values()), 1),
            "partial": partial,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        },
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
