"""The sleep ablation over seeds, through DVC's experiment queue.

    python scripts/sleep_ablation.py [--seeds 7 42 123] [--jobs 1] [--out metrics/ablation.json]

Queues `cls_sleep` once per seed and variant (`dvc exp run cls_sleep --queue -S cls.seed=S ...`):

- sleep: the committed settings (EWC and pseudo-rehearsal on);
- no_ewc: `cls.ewc_lambda=0`;
- no_pseudo: `cls.pseudo_ratio=0`;

runs the queue (`dvc queue start -j JOBS`), waits for it, and reads each experiment's
`metrics/cls.json` from `dvc exp show --json`. No-sleep is every run's own `grpo` boundary (the
GRPO adapter before consolidation), so "sleep vs no-sleep" is paired within a run. The seed
changes what consolidation draws (replay rows, teacher samples, batches); the GRPO adapter
before it is the committed one. Writes, per variant and metric (final forgetting, BWT, average
seen accuracy), the per-seed values, and for each comparison the per-seed paired differences,
their mean and a 95% t-interval over seeds; `significant` when the interval excludes 0.
With 3 seeds the t-interval is wide (t = 4.30): only large, consistent effects count.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

VARIANTS = {"sleep": [], "no_ewc": ["-S", "cls.ewc_lambda=0"], "no_pseudo": ["-S", "cls.pseudo_ratio=0"]}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def dvc(*args: str) -> str:
    res = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout


def pending(names: dict[str, Any]) -> list[str]:
    """`dvc queue status` lines of our experiments that are still queued or running."""
    lines = dvc("queue", "status").splitlines()
    return [ln for ln in lines if any(n in ln for n in names) and ("Running" in ln or "Queued" in ln)]


def summary(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"values": values, "mean": round(mean, 4), "lo": None, "hi": None, "significant": False}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {
        "values": [round(v, 4) for v in values],
        "mean": round(mean, 4),
        "lo": round(lo, 4),
        "hi": round(hi, 4),
        "significant": lo > 0 or hi < 0,
    }


def cls_metrics(exp: dict[str, Any]) -> dict[str, Any] | None:
    data = exp.get("data") or {}
    files = (data.get("metrics") or {}).get("metrics/cls.json") or {}
    return files.get("data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 42, 123])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="metrics/ablation.json")
    args = ap.parse_args()

    names: dict[str, tuple[str, int]] = {}
    for seed in args.seeds:
        for variant, extra in VARIANTS.items():
            name = f"sleep-{variant}-s{seed}".replace("_", "-")
            dvc("exp", "run", "cls_sleep", "--queue", "-n", name, "-S", f"cls.seed={seed}", *extra)
            names[name] = (variant, seed)
    dvc("queue", "start", "-j", str(args.jobs))
    while pending(names):  # the queue runs in the background
        time.sleep(10)
    shown = json.loads(dvc("exp", "show", "--json"))
    runs: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in VARIANTS}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name")
                if name in names and (m := cls_metrics(rev)) is not None:
                    variant, seed = names[name]
                    runs[variant][seed] = m
    missing = [n for n, (v, s) in names.items() if s not in runs[v]]
    if missing:
        raise SystemExit(f"error: experiments without metrics/cls.json: {missing} (see `dvc queue logs NAME`)")
    seeds = args.seeds
    out: dict[str, Any] = {"seeds": seeds, "variants": {}, "comparisons": {}}
    for variant in VARIANTS:
        out["variants"][variant] = {
            key: [runs[variant][s][key] for s in seeds]
            for key in ("final_forgetting", "final_bwt", "final_seen_acc_avg")
        }
    # sleep vs no-sleep, paired within each run: the sleep boundary against the grpo boundary
    out["comparisons"]["sleep_minus_no_sleep"] = {
        "forgetting": summary(
            [runs["sleep"][s]["forgetting"]["sleep"] - runs["sleep"][s]["forgetting"]["grpo"] for s in seeds]
        ),
        "bwt": summary([runs["sleep"][s]["bwt"]["sleep"] - runs["sleep"][s]["bwt"]["grpo"] for s in seeds]),
        "seen_acc_avg": summary(
            [runs["sleep"][s]["seen_acc_avg"]["sleep"] - runs["sleep"][s]["seen_acc_avg"]["grpo"] for s in seeds]
        ),
    }
    for variant in ("no_ewc", "no_pseudo"):  # the same seed with and without the component
        out["comparisons"][f"sleep_minus_{variant}"] = {
            key.removeprefix("final_"): summary([runs["sleep"][s][key] - runs[variant][s][key] for s in seeds])
            for key in ("final_forgetting", "final_bwt", "final_seen_acc_avg")
        }
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(out["comparisons"], indent=2))


if __name__ == "__main__":
    main()
