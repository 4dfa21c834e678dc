"""Regenerate the README's pipeline section (the DAG and the stage table) from the pipeline itself.

    python scripts/readme_dag.py          # rewrite the block between the markers in README.md
    python scripts/readme_dag.py --check  # exit 1 if README.md is stale (tests/test_docs.py)

The DAG is `dvc dag --mermaid` (GitHub renders it); the table lists each stage of dvc.yaml with
the data it reads, the params sections it declares and what it writes, so the README cannot
drift from the graph.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- pipeline:start (scripts/readme_dag.py) -->", "<!-- pipeline:end -->"


def _paths(entries: list) -> list[str]:
    out = []
    for e in entries or []:
        name = e if isinstance(e, str) else next(iter(e))
        if not name.startswith(("stages/", "src/")):  # code deps are listed by tests/test_deps.py
            out.append(f"`{name}`")
    return out


def _params(entries: list) -> list[str]:
    out = []
    for e in entries or []:
        out += [f"`{k}`" for k in ([e] if isinstance(e, str) else list(e))]
    return out


def stage_table(dvc_yaml: Path) -> str:
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    rows = ["| stage | reads | params | writes |", "|---|---|---|---|"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        label = f"`{name}@<key>` (foreach `{stage['foreach']}`)" if "foreach" in stage else f"`{name}`"
        writes = _paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots"))
        cells = [label, ", ".join(_paths(body.get("deps"))), ", ".join(_params(body.get("params"))), ", ".join(writes)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def mermaid(root: Path) -> str:
    dvc = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(dvc), "dag", "--mermaid"], cwd=root, capture_output=True, text=True, check=True)
    return res.stdout.strip()


def render(root: Path = ROOT) -> str:
    return "\n".join(
        [
            START,
            "```mermaid",
            mermaid(root),
            "```",
            "",
            stage_table(root / "dvc.yaml"),
            END,
        ]
    )


def splice(readme: str, block: str, start: str = START, end: str = END) -> str:
    """`readme` with the text from `start` to `end` (markers included) replaced by `block`
    (scripts/readme_results.py splices its own block through this too)."""
    if start not in readme or end not in readme:
        raise SystemExit(f"README.md has no {start} ... {end} block")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = splice(text, render())
    if args.check:
        if new != text:
            print("README.md's pipeline section is stale: run python scripts/readme_dag.py", file=sys.stderr)
            sys.exit(1)
        return
    readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
