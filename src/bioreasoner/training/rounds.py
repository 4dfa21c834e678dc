"""Preference rounds as data: a round's settings from `params.yaml`, and which prompts it uses.

`rounds.<R>` names the round's policy, pair mode, prompts and thresholds; its optional
`dpo:` mapping overrides single keys of the shared `dpo:` section (nested mappings such as
`lora` are merged key by key).
"""

from __future__ import annotations

import copy
import random
from typing import Any

from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import item_seed

MODES = ("distill", "best_of_n")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def round_config(params: dict[str, Any], name: str) -> dict[str, Any]:
    rounds = params.get("rounds") or {}
    if name not in rounds:
        raise ValueError(f"params.yaml: rounds has no entry {name!r} (have {sorted(rounds)})")
    cfg = rounds[name]
    if cfg.get("mode") not in MODES:
        raise ValueError(f"params.yaml: rounds.{name}.mode must be one of {MODES}, got {cfg.get('mode')!r}")
    return cfg


def dpo_config(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The shared `dpo:` defaults with round `name`'s overrides applied."""
    return deep_merge(params["dpo"], round_config(params, name).get("dpo") or {})


def select_prompts(tasks: list[Task], n: int, seed: int, round_name: str) -> list[Task]:
    """`n` train tasks drawn without replacement (seeded by round), kept in file order; n <= 0 = all."""
    if n <= 0 or n >= len(tasks):
        return list(tasks)
    rng = random.Random(item_seed(seed, round_name, "prompts"))
    keep = set(rng.sample(range(len(tasks)), n))
    return [t for i, t in enumerate(tasks) if i in keep]
