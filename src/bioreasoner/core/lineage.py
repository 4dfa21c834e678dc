"""Provenance that travels with every model folder, and the model card made from it.

Each stage that writes a model or adapter folder puts a `lineage.json` in it: the stage,
the params it used and the md5 of each input, computed exactly as DVC computes the hashes
in `dvc.lock` (so a card's hashes can be looked up there). `merge` nests the parent's and
the adapter's records, so a merged folder holds the whole chain back to `base`.

Every record also carries the `environment` it ran in (library versions and hardware, see
`bioreasoner.core.env`): versions and hardware only, so the same machine writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from bioreasoner.core import env

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
    """What one stage did: its name, the params it read, its inputs' DVC hashes, and the
    environment (library versions, hardware) it ran in."""
    return {
        "stage": stage,
        "params": params,
        "inputs": {str(p): dvc_md5(p) for p in inputs},
        "environment": env.environment(),
    }


def write(folder: str | Path, lineage: dict[str, Any]) -> None:
    """Write `lineage.json`. A record built by hand (merge's) that has no `environment` gets the
    writing process's, added in place so a model card made from the same dict shows it too."""
    lineage.setdefault("environment", env.environment())
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


def _step_name(step: dict[str, Any]) -> str:
    return step["stage"] + (f" ({step['version']})" if step.get("version") else "")


def _cuda_text(cuda: dict[str, Any] | None) -> str:
    if not cuda:
        return "none"
    devices = ", ".join(sorted(set(cuda.get("devices", [])))) or "?"
    return f"{cuda.get('version')} (cuDNN {cuda.get('cudnn')}), {cuda.get('device_count')} x {devices}"


def environment_section(steps: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one column per distinct environment, headed by the steps that ran in it."""
    lines = ["## Environment", ""]
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    missing = []
    for step in steps:
        environment = step.get("environment")
        if not environment:
            missing.append(_step_name(step))
            continue
        key = json.dumps(environment, sort_keys=True)
        groups.setdefault(key, (environment, []))[1].append(_step_name(step))
    if groups:
        lines += [
            "Library versions and hardware each step ran with (`environment` in `lineage.json`). The same",
            "versions (`requirements.lock`) on the same kind of machine reproduce these weights exactly;",
            "other hardware (CPU kernels, thread count, GPU) can differ by float noise.",
            "",
        ]
        envs = [e for e, _ in groups.values()]
        lines.append("| | " + " | ".join(", ".join(names) for _, names in groups.values()) + " |")
        lines.append("|---|" + "---|" * len(envs))
        libs = list(dict.fromkeys(k for e in envs for k in e.get("libraries", {})))
        for name in libs:
            values = [e.get("libraries", {}).get(name) or "not installed" for e in envs]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        rows = {
            "OS / arch": lambda hw: f"{hw.get('os')} {hw.get('machine')}",
            "CPU": lambda hw: f"{hw.get('cpu')} ({hw.get('cpu_count')} logical CPUs)",
            "torch threads": lambda hw: str(hw.get("torch_threads")),
            "CUDA": lambda hw: _cuda_text(hw.get("cuda")),
        }
        for label, fmt in rows.items():
            lines.append(f"| {label} | " + " | ".join(fmt(e.get("hardware", {})) for e in envs) + " |")
        lines.append("")
    if missing:
        lines += [f"Not recorded for: {', '.join(missing)} (made before environments were recorded).", ""]
    return lines


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
        "from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast",
        f'model = AutoModelForCausalLM.from_pretrained("models/merged/{version}")',
        "# tokenizer.json exactly as saved (AutoTokenizer would rebuild Qwen2's own pre-tokenizer)",
        f'tokenizer = PreTrainedTokenizerFast.from_pretrained("models/merged/{version}")',
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
        lines.append(f"| {i} | {_step_name(step)} | {ins} |")
    lines += ["", *environment_section(steps)]
    lines += ["## Parameters of each step", ""]
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
        "or the annotated git tag of a released version, for the figures. The `report` stage then",
        "compares every version with its parent on the same tasks: `metrics/lineage.json` (values",
        "with 95% intervals, paired deltas and whether each is significant) and",
        "`reports/lineage.svg` (the lineage with intervals; `reports/curves_*.svg`: training curves).",
        "",
    ]
    return "\n".join(lines)
