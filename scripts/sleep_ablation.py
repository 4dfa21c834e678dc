"""The sleep ablation over seeds, through DVC's experiment queue.

    python scripts/sleep_ablation.py [--seeds 7 42 123] [--jobs 1] [--out metrics/ablation.json]

Queues `cls_sleep` once per seed and variant (`dvc exp run cls_sleep --queue -S +cls.seed=S ...`;
`+` because `cls.seed` is absent from params.yaml, where null means the global seed):

- sleep: the committed settings (EWC and pseudo-rehearsal on);
- no_ewc: `cls.ewc_lambda=0`;
- no_pseudo: `cls.pseudo_ratio=0`;

runs the queue (`dvc queue start -j JOBS`), waits for it, and reads each experiment's
`metrics/cls.json` from `dvc exp show --json`. No-sleep is every run's own `grpo` boundary (the
GRPO adapter before consolidation), so "sleep vs no-sleep" is paired within a run. The seed
changes what consolidation draws (replay rows, teacher samples, batches); the GRPO adapter
before it is the committed one. Writes, per variant and metric (final forgetting, BWT, average
seen accuracy), the per-seed values, and for each comparison the per-seed paired differences,
their mean and a 95% t-interval over seeds; `significant` when the interval excludes 0. Only
experiments queued from `--baseline` (HEAD) are read: the same names from an older commit are
an older lineage's.
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
    """Mean and 95% t-interval over seeds; one seed gives the value alone."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {
            "values": [round(v, 4) for v in values],
            "mean": round(mean, 4),
            "lo": None,
            "hi": None,
            "significant": False,
        }
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
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--collect", action="store_true", help="queue nothing: read the experiments that ran")
    ap.add_argument("--baseline", default="HEAD", help="the commit experiments are queued from; only its are read")
    args = ap.parse_args()
    # experiments of the same name queued from an older commit (an older lineage) are not read
    baseline = subprocess.run(["git", "rev-parse", args.baseline], capture_output=True, text=True, check=True)
    baseline_rev = baseline.stdout.strip()

    names = {f"sleep-{v}-s{s}".replace("_", "-"): (v, s) for s in args.seeds for v in args.variants}
    if not args.collect:
        for name, (variant, seed) in names.items():
            dvc("exp", "run", "cls_sleep", "--queue", "-n", name, "-S", f"+cls.seed={seed}", *VARIANTS[variant])
        dvc("queue", "start", "-j", str(args.jobs))
        while pending(names):  # the queue runs in the background
            time.sleep(10)
    shown = json.loads(dvc("exp", "show", "--json", "--all-commits"))  # experiments stay on the commit they ran from
    runs: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in VARIANTS}  # variant -> seed -> cls.json
    for commit in shown:
        if commit.get("rev") != baseline_rev:
            continue
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name")
                if name in names and (m := cls_metrics(rev)) is not None:
                    variant, seed = names[name]
                    runs[variant][seed] = m
    missing = [n for n, (v, s) in names.items() if s not in runs[v]]
    if missing and not args.collect:
        raise SystemExit(f"error: experiments without metrics/cls.json: {missing} (see `dvc queue logs NAME`)")
    keys = ("final_forgetting", "final_bwt", "final_seen_acc_avg")
    out: dict[str, Any] = {
        "baseline": baseline_rev,
        "seeds": args.seeds,
        "missing": sorted(missing),
        "variants": {},
        "comparisons": {},
    }
    for variant, by_seed in runs.items():
        if by_seed:
            out["variants"][variant] = {k: {str(s): by_seed[s][k] for s in sorted(by_seed)} for k in keys}
    # sleep vs no-sleep, paired within each run: the sleep boundary against the grpo boundary
    seeds = sorted(runs["sleep"])
    if seeds:
        out["comparisons"]["sleep_minus_no_sleep"] = {
            m: summary([runs["sleep"][s][m]["sleep"] - runs["sleep"][s][m]["grpo"] for s in seeds])
            for m in ("forgetting", "bwt", "seen_acc_avg")
        }
    for variant in ("no_ewc", "no_pseudo"):  # the same seed with and without the component
        both = sorted(set(runs["sleep"]) & set(runs[variant]))
        if both:
            out["comparisons"][f"sleep_minus_{variant}"] = {
                k.removeprefix("final_"): summary([runs["sleep"][s][k] - runs[variant][s][k] for s in both])
                for k in keys
            }
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(out["comparisons"], indent=2))


if __name__ == "__main__":
    main()
