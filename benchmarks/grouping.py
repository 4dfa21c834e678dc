"""Benchmark: MeSH grouping time at 1,500 and 15,000 papers (target: 15k well under 60 s).

    python benchmarks/grouping.py

Prints seconds per size and the ratio to a linear extrapolation (1.0 = exactly linear).
"""

from __future__ import annotations

import time

from bioreasoner.tasks.grouping import group_by_mesh
from tests.test_grouping import zipf_corpus


def timed(n: int) -> tuple[float, int]:
    papers = zipf_corpus(n, seed=0)
    start = time.perf_counter()
    groups = group_by_mesh(papers, max_df_fraction=0.1, max_df_cap=200, max_uses=2, seed=0)
    return time.perf_counter() - start, len(groups)


if __name__ == "__main__":
    small, g_small = timed(1500)
    big, g_big = timed(15000)
    print(f"1,500 papers: {small:.2f}s ({g_small} groups)")
    print(f"15,000 papers: {big:.2f}s ({g_big} groups); budget 60s -> {big / 60:.3f} of budget")
    print(f"growth vs linear: {big / (10 * small):.2f}x")
