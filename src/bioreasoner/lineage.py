"""Provenance that travels with every model folder, and the model card made from it.

Each stage that writes a model or adapter folder puts a `lineage.json` in it: the stage,
the params it used and the md5 of each input, computed exactly as DVC computes the hashes
in `dvc.lock` (so a card's hashes can be looked up there). `merge` nests the parent's and
the adapter's records, so a merged folder holds the whole chain back to `base`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

LINEAGE_FILE = "lineage.json"


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records for `path`: the file's md5, or for a folder the md5 of the sorted
    JSON listing of its files' md5s and relative paths, suffixed `.dir` (dvc-data's Tree)."""
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    entries = [{"md5": _file_md5(f), "relpath": f.relative_to(path).as_posix()} for f in path.rglob("*") if f.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def record(stage: str, params: dict[str, Any], inputs: list[str | Path]) -> dict[str, Any]:
    """What one stage did: its name, the params it read, and its inputs' DVC hashes."""
    return {
        "stage": stage,
        "params": params,
        "inputs": {str(p): dvc_md5(p) for p in inputs},
    }


def write(folder: str | Path, lineage: dict[str, Any]) -> None:
    text = json.dumps(lineage, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (Path(folder) / LINEAGE_FILE).write_text(text, encoding="utf-8", newline="\n")


def read(folder: str | Path) -> dict[str, Any] | None:
    """The folder's lineage, or None for a folder made outside the pipeline."""
    path = Path(folder) / LINEAGE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def chain(lineage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The lineage flattened oldest first: one entry per stage that shaped the weights."""
    if lineage is None:
        return []
    if lineage.get("stage") == "merge":
        return chain(lineage["parent"]["lineage"]) + chain(lineage["adapter"]["lineage"]) + [lineage]
    return [lineage]


def model_card(version: str, lineage: dict[str, Any], *, eval_metrics_path: str, notes: list[str]) -> str:
    """README.md for a merged model folder (Hugging Face model card: YAML header + markdown)."""
    header = {"library_name": "transformers", "tags": ["bioreasoner", "biomedical", "lora-merged"]}
    steps = chain(lineage)
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=True).strip(),
        "---",
        f"# BioReasoner {version}",
        "",
        "A merged model made by the BioReasoner pipeline (`dvc repro`): the parent's weights with",
        "the adapter folded in by `merge_and_unload`. It loads with plain `transformers`:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("models/merged/{version}")',
        f'tokenizer = AutoTokenizer.from_pretrained("models/merged/{version}")',
        "```",
        "",
        "## Lineage",
        "",
        "Oldest first. Hashes are DVC md5s, the same values `dvc.lock` records.",
        "",
        "| step | stage | inputs |",
        "|---|---|---|",
    ]
    for i, step in enumerate(steps, 1):
        ins = "<br>".join(f"`{p}` `{h}`" for p, h in sorted(step.get("inputs", {}).items()))
        name = step["stage"] + (f" ({step['version']})" if step.get("version") else "")
        lines.append(f"| {i} | {name} | {ins} |")
    lines += ["", "## Parameters of each step", ""]
    for step in steps:
        params = yaml.safe_dump(step["params"], sort_keys=True).strip()
        lines += [f"### {step['stage']}", "", "```yaml", params, "```", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        "## Evaluation",
        "",
        f"`eval@{version}` scores this folder on the held-out test tasks after the merge and writes",
        f"`{eval_metrics_path}` (metric definitions in the repository README). See `dvc metrics show`,",
        "or the annotated git tag of a released version, for the figures.",
        "",
    ]
    return "\n".join(lines)
