"""Regenerate the README's results block (the lineage table and its significant deltas) from
`metrics/lineage.json`, the `report` stage's output.

    python scripts/readme_results.py          # rewrite the block between the markers in README.md
    python scripts/readme_results.py --check  # exit 1 if README.md's block differs from the metrics
    # the SmolLM2 lineage's block, from the preset run's copy (make repro PRESET=smollm2-cpu):
    python scripts/readme_results.py --lineage results/smollm2-cpu/metrics/lineage.json --block results-smollm2-cpu

Each cell is `value [lo, hi]` (the version's 95% interval); a star marks a significant paired
change from the version's parent (McNemar or paired bootstrap, `report.alpha`), and the list
under the table gives each such change with its interval. Run it after `dvc repro` and commit it
with `dvc.lock`, so the README shows the numbers the lock vouches for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from readme_dag import splice  # scripts/ is on the path of a script run from it

from bioreasoner.reporting.plots import KEY_METRICS

ROOT = Path(__file__).resolve().parents[1]


def markers(block: str = "results") -> tuple[str, str]:
    """The comment lines a block sits between: `results` (the default's), `results-<preset>`."""
    return f"<!-- {block}:start (scripts/readme_results.py) -->", f"<!-- {block}:end -->"


START, END = markers()
ROWS = (*KEY_METRICS, "pubmedqa_no_decision_rate")  # lineage.svg's panels, plus no decision


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cell(value: Mapping[str, Any] | None, delta: Mapping[str, Any] | None) -> str:
    """`0.247 [0.219, 0.279]`, with ` \\*` (a Markdown star) when the change from the parent is significant."""
    if not value or value.get("value") is None:
        return "-"
    text = _num(value["value"])
    if value.get("lo") is not None and value.get("hi") is not None:
        text += f" [{_num(value['lo'])}, {_num(value['hi'])}]"
    return text + (" \\*" if delta and delta.get("significant") else "")


def render_block(lineage: Mapping[str, Any], rows: tuple[str, ...] = ROWS, block: str = "results") -> str:
    versions = list(lineage["versions"])
    deltas = lineage.get("deltas", {})
    lines = [
        "| metric | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for metric in rows:
        cells = [cell(lineage["versions"][v].get(metric), deltas.get(v, {}).get(metric)) for v in versions]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Significant changes from the parent (paired, same tasks; `diff [lo, hi]`, p):", ""]
    for v, delta in deltas.items():
        moved = [
            f"{m} {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}], p {d['p']:.3g}"
            for m, d in delta.items()
            if isinstance(d, dict) and d.get("significant")
        ]
        lines.append(f"- {v} vs {delta['parent']}: " + ("; ".join(moved) if moved else "none"))
    return "\n".join([markers(block)[0], *lines, markers(block)[1]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's block is stale")
    ap.add_argument("--lineage", default=str(ROOT / "metrics" / "lineage.json"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--block", default="results", help="the block's marker name (results-smollm2-cpu: the preset's)")
    args = ap.parse_args()
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    lineage = json.loads(Path(args.lineage).read_text(encoding="utf-8"))
    new = splice(text, render_block(lineage, block=args.block), *markers(args.block))
    if args.check:
        if new != text:
            print(f"{readme}: results block is stale: run python scripts/readme_results.py", file=sys.stderr)
            sys.exit(1)
        return
    readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
