"""Which train tasks a round (or grpo, or sleep's replay) uses: a seeded draw, kept in file order.

A round's settings are typed params (`bioreasoner.core.config`: `p.rounds[R]`, and
`p.round_dpo(R)` for the shared `dpo:` section with the round's overrides merged in).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Literal

from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import item_seed


def stratum(task: Task) -> tuple[str, str | None]:
    """(type, gold decision): the strata of a `stratify: gold` draw; the label is None off qa."""
    return task.type, task.gold if task.type == "qa" else None


def select_prompts(
    tasks: list[Task], n: int, seed: int, round_name: str, stratify: Literal["none", "gold"] = "none"
) -> list[Task]:
    """`n` train tasks drawn without replacement (seeded by round), kept in file order; n <= 0 = all.

    `stratify: gold` draws each task type in proportion to its share of `tasks` (rounded) and
    splits the qa share evenly across gold decisions (the remainder to the labels first in sorted
    order). A label with fewer tasks than its share gives all it has and the draw is that much
    smaller than `n`: the shortfall is not moved to another label, which would undo the balance.
    PubMedQA is 55% "yes": with a correctness reward, a plain draw gives a policy-gradient stage
    more groups where "yes" is the answer it reinforces than groups where "no" is [D19].
    """
    if stratify not in ("none", "gold"):
        raise ValueError(f"stratify must be 'none' or 'gold', got {stratify!r}")
    if n <= 0 or n >= len(tasks):
        return list(tasks)
    if stratify == "none":
        rng = random.Random(item_seed(seed, round_name, "prompts"))
        keep = set(rng.sample(range(len(tasks)), n))
        return [t for i, t in enumerate(tasks) if i in keep]
    rng = random.Random(item_seed(seed, round_name, "prompts", "gold"))
    strata: dict[str, dict[str | None, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, t in enumerate(tasks):
        type_, label = stratum(t)
        strata[type_][label].append(i)
    keep = set()
    for _type, by_gold in sorted(strata.items()):
        quota = round(n * sum(map(len, by_gold.values())) / len(tasks))
        labels = sorted(by_gold, key=str)
        for k, label in enumerate(labels):
            share = quota // len(labels) + (k < quota % len(labels))  # the remainder to the first labels
            pool = by_gold[label]
            keep |= set(rng.sample(pool, min(share, len(pool))))
    return [t for i, t in enumerate(tasks) if i in keep]
