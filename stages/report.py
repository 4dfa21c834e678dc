"""Stage `report`: honest deltas and offline figures over every evaluated version.

    dvc repro report
    python stages/report.py --eval-dir data/eval --live-dirs dvclive --metrics metrics/lineage.json \
        --out-dir reports

Reads the eval rows of every version in `eval.models` (`data/eval/V.jsonl`) and writes:

- `metrics/lineage.json`: {"versions": {V: {metric: {value, lo, hi, n}}}, "deltas": {V:
  {"parent": P, metric: {diff, lo, hi, p, significant, n_pairs}}}}. Every metric of
  metrics/eval/V.json that is a rate, a ratio or a mean gets a (1 - report.alpha) interval
  (Wilson for per-response rates, a percentile bootstrap over responses otherwise); each version
  is compared with its parent (the evaluated version its merge started from,
  `merge.versions.V.parent`) on the same test tasks: McNemar's exact test for per-response rates,
  a paired bootstrap otherwise. Definitions: `bioreasoner.reporting.lineage`. Under
  "training": how each training run was launched ({metrics file: {launcher, strategy,
  world_size, global_train_batch_size, accelerator, device}}), from `--training-metrics`.
- `reports/lineage.svg` (the key metrics by version with their intervals) and
  `reports/curves_<run>.svg` for every DVCLive run under `--live-dirs` (dvclive/sft,
  dvclive/rounds/<R>, dvclive/grpo): byte-identical for the same inputs, drawn offline.

Bootstrap resamples are seeded from `seed` (one stream per version and metric). A version whose
rows file is missing or empty, a malformed row or a repeated task id is one error line and exit
1; nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bioreasoner.core import config
from bioreasoner.core.io import (
    BadInputError,
    atomic_path,
    read_jsonl,
    require_nonempty,
    run_stage,
    unique_ids,
    write_json,
)
from bioreasoner.reporting.lineage import EvalRow, lineage, parents, training_runs

log = logging.getLogger("report")

SECTIONS = ("seed", "eval", "merge", "report")  # dvc.yaml: seed, eval.models, merge.versions, report


def read_rows(path: Path, version: str) -> list[dict[str, Any]]:
    """One version's eval rows as dicts (validated: the fields the metrics read, unique task ids)."""
    if not path.is_file():
        raise BadInputError(
            path, None, f"no eval rows for version {version!r} (eval.models): run `dvc repro eval@{version}`"
        )
    rows = require_nonempty(path, read_jsonl(path, EvalRow), "eval rows")
    unique_ids(path, rows, lambda r: r.task_id, "task_id")
    return [r.model_dump() for r in rows]


def summary(data: dict[str, Any]) -> list[str]:
    """One log line per delta: the metrics that moved significantly, with their direction."""
    lines = []
    for v, delta in data["deltas"].items():
        moved = [
            f"{m} {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            for m, d in delta.items()
            if isinstance(d, dict) and d["significant"]
        ]
        lines.append(f"{v} vs {delta['parent']}: " + ("; ".join(moved) if moved else "no significant change"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval-dir", default="data/eval", help="holds <version>.jsonl for each of eval.models")
    ap.add_argument("--live-dirs", nargs="*", default=["dvclive"], help="folders searched for DVCLive runs")
    ap.add_argument(
        "--training-metrics",
        nargs="*",
        default=["metrics/sft.json", "metrics/rounds", "metrics/grpo.json", "metrics/cls.json"],
        help="training stages' metrics (files or folders): how each run was launched, into lineage.json",
    )
    ap.add_argument("--metrics", default="metrics/lineage.json")
    ap.add_argument("--out-dir", default="reports")
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    versions = list(p.eval.models)
    parent_of = parents(p.eval.models, {v: cfg.parent for v, cfg in p.merge.versions.items()})

    # -- data: every evaluated version's rows, all present before any statistic is computed
    rows = {v: read_rows(Path(args.eval_dir) / f"{v}.jsonl", v) for v in versions}
    for v in versions:
        log.info("%s: %d eval rows, parent %s", v, len(rows[v]), parent_of[v] or "none")

    # -- statistics: intervals per version, paired deltas against the parent
    data = lineage(rows, parent_of, n_boot=p.report.n_boot, seed=p.seed, alpha=p.report.alpha)
    for line in summary(data):
        log.info("%s", line)

    # -- figures first (into a temp folder renamed into place), then the metrics; matplotlib
    #    loads only now, so bad params or rows fail in a second
    from bioreasoner.reporting.plots import render_all

    live_dirs = [Path(d) for d in args.live_dirs]
    for d in live_dirs:
        if not d.is_dir():
            log.warning("%s: no such folder, no training curves from it", d)
    with atomic_path(args.out_dir, directory=True) as tmp:
        written = render_all(data, live_dirs, tmp, level=100 * (1 - p.report.alpha))
    log.info("wrote %s", ", ".join(str(Path(args.out_dir) / f.name) for f in written))
    data["training"] = training_runs(args.training_metrics)  # launcher, world size, accelerator per run
    write_json(args.metrics, data)


if __name__ == "__main__":
    run_stage(main)
