"""Which train tasks a round (or grpo, or sleep's replay) uses: a seeded draw, kept in file order.

A round's settings are typed params (`bioreasoner.core.config`: `p.rounds[R]`, and
`p.round_dpo(R)` for the shared `dpo:` section with the round's overrides merged in).
"""

from __future__ import annotations

import random

from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import item_seed


def select_prompts(tasks: list[Task], n: int, seed: int, round_name: str) -> list[Task]:
    """`n` train tasks drawn without replacement (seeded by round), kept in file order; n <= 0 = all."""
    if n <= 0 or n >= len(tasks):
        return list(tasks)
    rng = random.Random(item_seed(seed, round_name, "prompts"))
    keep = set(rng.sample(range(len(tasks)), n))
    return [t for i, t in enumerate(tasks) if i in keep]
